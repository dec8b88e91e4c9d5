"""Sanity check: FAISS kNN on random-vit-tiny (cls), train+val as the database, test as queries.

Purpose: cosine kNN with temperature-weighted votes (T = 0.07), every k in {10, 20, 100, 200}
from one search (summary.json extra.per_k), k = 20 fixed in advance as the headline. A kNN far
above the linear probe on an identity-disjoint split is a red flag for near-duplicates.
Expected: at or below the linear probe of the same model; measured outside the project on
LFW (30 names, identity-disjoint), kNN top-1 was 0.066 against 0.080 for the linear probe.
Command: probes track3 --store S --out results/ --only knn_random_vit_tiny
  (by hand: probes knn --store S --model random-vit-tiny --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="knn_random_vit_tiny", family="knn", models=("random-vit-tiny",), view="cls", group="sanity",
    how_to_add="facestore build --data DATA --store S --model random-vit-tiny",
    doc=__doc__,
)

"""Sanity check: linear probe on a randomly initialised ViT-Ti/16 (no training at all).

Purpose: random features of a real architecture: the floor any pretrained encoder must clear.
A pretrained model close to this floor carries no name signal beyond image statistics.
Expected: near pixels32; well below the pretrained encoders.
Command: facestore build --data DATA --store S --model random-vit-tiny, then
  probes track3 --store S --out results/ --only random_vit_tiny
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="random_vit_tiny", family="linear", models=("random-vit-tiny",), view="cls", group="sanity",
    how_to_add="facestore build --data DATA --store S --model random-vit-tiny (no weights, runs anywhere)",
    doc=__doc__,
)

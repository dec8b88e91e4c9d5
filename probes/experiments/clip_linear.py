"""The plan's baseline: CLIP ViT-B-32 linear probe on the projected image embedding.

Purpose: re-measure the Phase 1-3 baseline under this protocol (identity-disjoint split,
selection on validation, CIs), so every other experiment is compared with it on the same
test images rather than with a number from another split.
Expected (plan): 13.9% top-1 on 30 names, ~3% on 500 names, prediction CV 0.40 (the
"William dominance" the plan describes).
Command: probes track3 --store S --out results/ --only clip_linear
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="clip_linear", family="linear", models=("clip-vit-b-32",), view="image", group="variant", plan_ref="baseline",
    how_to_add="facestore build --data DATA --store S --model clip-vit-b-32",
    doc=__doc__,
)

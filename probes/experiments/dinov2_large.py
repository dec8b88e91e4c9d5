"""Experiment 3.1 variant: DINOv2-large linear probe on the CLS token.

Purpose: the plan's size sweep of DINOv2 ("dinov2-large: if base works well (1024-d)"); does name signal grow
with model size under the same protocol and split as dinov2 (base)?
Expected (plan): no number given per size; judge against dinov2 (base) with the paired
bootstrap in track3_comparison.md.
Command: probes track3 --store S --out results/ --only dinov2_large
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="dinov2_large", family="linear", models=("dinov2-large",), view="cls", group="variant", plan_ref="3.1",
    how_to_add="facestore build --data DATA --store S --model dinov2-large",
    doc=__doc__,
)

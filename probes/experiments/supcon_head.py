"""Experiment 3.4 on frozen features: a SupCon projection head on DINOv2-base (priority 4).

Purpose: the cheap form of 3.4: the plan's projector (D -> 2048 -> 128) trained with SupCon on
frozen DINOv2-base CLS vectors of the train split (m-per-class batches so every anchor has a
positive), then the linear protocol on the learned 128-d representation.
Expected (plan): no number given; useful only if it beats the plain DINOv2-base linear probe
(experiment dinov2) in the paired bootstrap of track3_comparison.md.
Command: probes track3 --store S --out results/ --only supcon_head
  (by hand: probes supcon --store S --model dinov2-base --view cls --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="supcon_head", family="supcon", models=("dinov2-base",), view="cls", group="plan", plan_ref="3.4",
    how_to_add="facestore build --data DATA --store S --model dinov2-base",
    doc=__doc__,
)

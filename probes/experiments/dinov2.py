"""Experiment 3.1: DINOv2-base linear probe on the CLS token (priority 1).

Purpose: DINOv2 is self-supervised on images alone, so it should carry less of CLIP's web-text
bias; the plan ranks it first because its inductive bias differs most from CLIP's.
Expected (plan): the CLIP ViT-B-32 linear baseline is 13.9% top-1 on 30 names and ~3% on 500
names with prediction CV 0.40; the targets are > 15%, > 4% and < 0.35. Judge it on balanced
accuracy against 1/C first: near chance, top-1 mostly measures name frequency.
Command: probes track3 --store S --out results/ --only dinov2
  (one task by hand: probes linear --store S --model dinov2-base --view cls --names top30
  --out results/ --experiment dinov2_top30)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="dinov2", family="linear", models=("dinov2-base",), view="cls", group="plan", plan_ref="3.1",
    how_to_add="facestore build --data DATA --store S --model dinov2-base",
    doc=__doc__,
)

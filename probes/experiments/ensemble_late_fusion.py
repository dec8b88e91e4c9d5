"""Experiment 3.6, option B: late fusion of CLIP, ArcFace and DINOv2 probes (priority 3).

Purpose: one linear probe per model (each selected on validation, refit on train+val), then the
mean of their log-probabilities; robust when one model's features dominate a concatenation.
Expected (plan): at least as good as the best single model; compare with the paired bootstrap.
Command: probes track3 --store S --out results/ --only ensemble_late_fusion
  (by hand: probes ensemble --store S --models clip-vit-b-32,arcface-r50,dinov2-base
  --mode late-fusion --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="ensemble_late_fusion", family="ensemble", models=("clip-vit-b-32", "arcface-r50", "dinov2-base"),
    min_models=2, group="plan", plan_ref="3.6", options=(("mode", "late-fusion"),),
    how_to_add="build at least two of clip-vit-b-32, arcface-r50, dinov2-base",
    doc=__doc__,
)

"""Experiment 3.6, option C: learned weights over CLIP, ArcFace and DINOv2 probes (priority 3).

Purpose: the plan's `nn.Parameter` weighting of per-model logits; the weights are fitted on
validation probabilities of train-only probes, never on test, and are recorded in summary.json.
Expected (plan): the weights show which model carries the signal; accuracy at least that of
late fusion if one model is much better than the others.
Command: probes track3 --store S --out results/ --only ensemble_learned
  (by hand: probes ensemble --store S --models clip-vit-b-32,arcface-r50,dinov2-base
  --mode learned-weights --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="ensemble_learned", family="ensemble", models=("clip-vit-b-32", "arcface-r50", "dinov2-base"),
    min_models=2, group="plan", plan_ref="3.6", options=(("mode", "learned-weights"),),
    how_to_add="build at least two of clip-vit-b-32, arcface-r50, dinov2-base",
    doc=__doc__,
)

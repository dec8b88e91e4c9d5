"""Experiment 3.6, option A: concatenation of CLIP + ArcFace + DINOv2 (priority 3).

Purpose: different encoders may capture different aspects of a face; each model's vectors are
L2-normalised, rows are aligned by image id, and one linear probe runs on the concatenation.
Runs with whichever two or more of the three models the store holds.
Expected (plan): better than any single model if the signals are complementary; a paired
bootstrap against the best single model in track3_comparison.md says whether it is.
Command: probes track3 --store S --out results/ --only ensemble
  (by hand: probes ensemble --store S --models clip-vit-b-32,arcface-r50,dinov2-base
  --mode concat --names top30 --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="ensemble", family="ensemble", models=("clip-vit-b-32", "arcface-r50", "dinov2-base"), min_models=2,
    group="plan", plan_ref="3.6", options=(("mode", "concat"),),
    how_to_add="build at least two of clip-vit-b-32, arcface-r50, dinov2-base",
    doc=__doc__,
)

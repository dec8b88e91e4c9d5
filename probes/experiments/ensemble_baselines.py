"""Sanity check: concatenation of the two weight-free baselines (pixels-32 + random-vit-tiny).

Purpose: exercises the ensemble path on any store (it is the demo's ensemble) and checks that
concatenating two baselines does not invent signal: it should not beat the better of
pixels32 and random_vit_tiny by more than their confidence intervals.
Expected: within the CI of the better baseline.
Command: probes track3 --store S --out results/ --only ensemble_baselines
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="ensemble_baselines", family="ensemble", models=("pixels-32", "random-vit-tiny"), group="sanity",
    options=(("mode", "concat"),),
    how_to_add="facestore build --data DATA --store S --model pixels-32 --model random-vit-tiny",
    doc=__doc__,
)

"""Experiment 3.1 variant: DINOv2-base with logit adjustment for name frequency.

Purpose: the plan's prediction-CV target (< 0.35, from 0.40) asks for predictions that do not
pile onto the dominant name; logit adjustment subtracts tau x log prior from the logits, with
tau chosen on validation (never on test).
Expected (plan): prediction CV below dinov2's and below 0.35, balanced accuracy equal or
higher, top-1 possibly lower (frequent names are predicted less often).
Command: probes track3 --store S --out results/ --only dinov2_logit_adjust
  (by hand: probes linear --store S --model dinov2-base --balance logit-adjust --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="dinov2_logit_adjust", family="linear", models=("dinov2-base",), view="cls", group="variant",
    plan_ref="3.1", options=(("balance", "logit-adjust"),),
    how_to_add="facestore build --data DATA --store S --model dinov2-base",
    doc=__doc__,
)

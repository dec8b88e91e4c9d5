"""Experiment 3.7 zero-shot: SigLIP with the plan's five prompts, ensembled (priority 5).

Purpose: SigLIP's text tower gives a classifier with no training at all; its logit scale and
bias are applied as the model defines them. Text encoders carry a strong prior for frequent
names, so read balanced accuracy, not top-1.
Expected (plan): no number given; zero-shot is expected to be below the linear probes.
Command: facestore text S --model siglip-base, then
  probes track3 --store S --out results/ --only siglip_prompts
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="siglip_prompts", family="zeroshot", models=("siglip-base",), view="image", template_set="plan",
    group="plan", plan_ref="3.7", options=(("template", "ensemble"),),
    how_to_add="facestore build --data DATA --store S --model siglip-base; facestore text S --model siglip-base",
    doc=__doc__,
)

"""Experiment 3.5 with prior correction: CLIP prompts minus each name's mean logit (priority 6).

Purpose: CLIP's text tower prefers frequent names; subtracting each name's mean logit over the
validation images removes that prior, so what is left is what the face adds.
Expected (plan): lower prediction CV than clip_prompts (target < 0.35); any gain in balanced
accuracy over clip_prompts is the prior the text tower brought, not face signal.
Command: probes track3 --store S --out results/ --only clip_prompts_prior
  (by hand: probes zeroshot --store S --model clip-vit-b-32 --prior-correction mean-logit --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="clip_prompts_prior", family="zeroshot", models=("clip-vit-b-32",), view="image", template_set="plan",
    group="plan", plan_ref="3.5", options=(("template", "ensemble"), ("prior_correction", "mean-logit")),
    how_to_add="facestore build --data DATA --store S --model clip-vit-b-32; facestore text S --model clip-vit-b-32",
    doc=__doc__,
)

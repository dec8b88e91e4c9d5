"""Experiment 3.5: CLIP ViT-B-32 zero-shot with the plan's five prompts, ensembled (priority 6).

Purpose: the plan's prompt ensemble: each template's text embeddings normalised, averaged and
renormalised into a (D, C) classifier; every single template is also scored on validation
(summary.json, extra.per_template_val_balanced_accuracy).
Expected (plan): "zero-shot CLIP performance depends heavily on prompt engineering"; expect
predictions piled on frequent names (high prediction CV) and top-1 below the 13.9% linear
baseline; the prior-corrected variant (clip_prompts_prior) shows how much is prior.
Command: facestore text S --model clip-vit-b-32, then
  probes track3 --store S --out results/ --only clip_prompts
  (by hand: probes zeroshot --store S --model clip-vit-b-32 --template-set plan --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="clip_prompts", family="zeroshot", models=("clip-vit-b-32",), view="image", template_set="plan",
    group="plan", plan_ref="3.5", options=(("template", "ensemble"),),
    how_to_add="facestore build --data DATA --store S --model clip-vit-b-32; facestore text S --model clip-vit-b-32",
    doc=__doc__,
)

"""Experiment 3.7: SigLIP-base linear probe on the joint-space image embedding (priority 5).

Purpose: SigLIP is trained with a sigmoid loss instead of CLIP's softmax and may be better
calibrated; the plan extracts image features and trains a linear classifier.
Expected (plan): compared with the CLIP ViT-B-32 baseline: 13.9% top-1 (30 names), ~3% (500),
prediction CV 0.40; targets > 15%, > 4%, < 0.35.
Command: probes track3 --store S --out results/ --only siglip
  (by hand: probes linear --store S --model siglip-base --view image --out results/)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="siglip", family="linear", models=("siglip-base",), view="image", group="plan", plan_ref="3.7",
    how_to_add="facestore build --data DATA --store S --model siglip-base",
    doc=__doc__,
)

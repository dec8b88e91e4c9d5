"""Experiment 3.2: DINOv3 ViT-B/16 linear probe on the CLS token (priority 7).

Purpose: the newest self-supervised model (Aug 2025); the plan runs it if DINOv2 works well.
Its weights are gated on the Hugging Face hub: accept the licence and log in, or pass
`facestore build --weights DIR`.
Expected (plan): no number given; compare with dinov2 (same protocol, same split) in the
paired bootstrap of track3_comparison.md.
Command: probes track3 --store S --out results/ --only dinov3
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="dinov3", family="linear", models=("dinov3-vitb16",), view="cls", group="plan", plan_ref="3.2",
    how_to_add="facestore build --data DATA --store S --model dinov3-vitb16 (gated weights: accept the licence "
               "on huggingface.co and `hf auth login`, or --weights DIR)",
    doc=__doc__,
)

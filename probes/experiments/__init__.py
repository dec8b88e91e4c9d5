"""The Track 3 plan as data: one small module per experiment, listed here in run order.

Order: the plan's priority order (DINOv2-base, ArcFace 500-class, ensemble, SupCon, SigLIP,
CLIP prompts, DINOv3), then the plan's variants (DINOv2 sizes, logit adjustment, the CLIP
linear baseline), then the sanity checks (weight-free baselines and kNN). ``probes track3``
runs every experiment whose models are in the store and records why the others were skipped.

>>> from probes.experiments import EXPERIMENTS, get_experiment
>>> EXPERIMENTS[0].name
'dinov2'
>>> get_experiment("arcface_500").models
('arcface-r50',)
"""

from __future__ import annotations

from probes.experiments import (
    arcface_500,
    clip_linear,
    clip_prompts,
    clip_prompts_prior,
    dinov2,
    dinov2_giant,
    dinov2_large,
    dinov2_logit_adjust,
    dinov2_small,
    dinov3,
    ensemble,
    ensemble_baselines,
    ensemble_late_fusion,
    ensemble_learned,
    knn_arcface,
    knn_clip,
    knn_dinov2,
    knn_pixels32,
    knn_random_vit_tiny,
    pixels32,
    random_vit_tiny,
    siglip,
    siglip_prompts,
    supcon,
    supcon_head,
)
from probes.experiments.spec import Experiment

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment"]

EXPERIMENTS: tuple[Experiment, ...] = tuple(m.CONFIG for m in (
    # The plan's priority order.
    dinov2,
    arcface_500,
    ensemble, ensemble_late_fusion, ensemble_learned,
    supcon, supcon_head,
    siglip, siglip_prompts,
    clip_prompts, clip_prompts_prior,
    dinov3,
    # Variants the plan lists, and its baseline re-measured under this protocol.
    dinov2_small, dinov2_large, dinov2_giant, dinov2_logit_adjust,
    clip_linear,
    # Sanity checks.
    pixels32, random_vit_tiny, ensemble_baselines,
    knn_dinov2, knn_arcface, knn_clip, knn_pixels32, knn_random_vit_tiny,
))

_names = [e.name for e in EXPERIMENTS]
if len(set(_names)) != len(_names):  # a copy-paste slip would overwrite another experiment's folder
    raise RuntimeError(f"duplicate experiment names in probes.experiments: {sorted(_names)}")


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; unknown names fail with the list of known ones."""
    for e in EXPERIMENTS:
        if e.name == name:
            return e
    raise KeyError(f"no Track 3 experiment {name!r}; known: {', '.join(_names)}")

"""Frozen model specs: what a registry name means, as data.

A :class:`ModelSpec` is the registry's promise (source, views, reference preprocessing,
licence). At load time each family resolves the preprocessing from the model's own
configuration; the *resolved* spec (``Encoder.resolved_spec()``) is what the store records
next to the vectors, so that every stored vector can be reproduced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class View:
    """One named embedding a model produces per image (a column block in the store)."""

    name: str
    dim: int
    description: str = ""


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB uint8 image becomes the model's input tensor.

    ``resize`` is ``"shortest_edge"`` (scale so the short side is ``resize_to``, keep the aspect
    ratio, then centre-crop ``crop``), ``"squash"`` (resize to ``size`` ignoring the aspect
    ratio), or ``"aligned"`` (the family produces its own input, e.g. ArcFace's 112x112 crop).
    Values are scaled by ``rescale`` and then normalised with ``mean``/``std`` per channel,
    in ``channel_order``.
    """

    size: tuple[int, int]
    resize: str = "shortest_edge"
    resize_to: int | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    rescale: float = 1.0 / 255.0
    channel_order: str = "RGB"
    source: str = "registry"  # where the values were read from ("registry", "hf-processor", ...)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("size", "crop", "mean", "std"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        d = dict(d)
        for k in ("size", "crop", "mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry. Immutable; one short name per entry."""

    name: str
    family: str
    source: str
    views: tuple[View, ...]
    preprocessing: Preprocessing
    licence: str
    description: str
    default_view: str = ""
    revision: str | None = None
    gated: bool = False
    text: bool = False
    pooling: str = ""
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [v.name for v in self.views]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"model spec {self.name!r}: views must be non-empty and unique, got {names}")
        if not self.default_view:
            object.__setattr__(self, "default_view", names[0])
        elif self.default_view not in names:
            raise ValueError(f"model spec {self.name!r}: default_view {self.default_view!r} not in {names}")

    @property
    def view_dims(self) -> dict[str, int]:
        return {v.name: v.dim for v in self.views}

    @property
    def embed_dim(self) -> int:
        return self.view_dims[self.default_view]

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "source": self.source,
            "revision": self.revision,
            "views": {v.name: v.dim for v in self.views},
            "default_view": self.default_view,
            "preprocessing": self.preprocessing.to_dict(),
            "pooling": self.pooling,
            "licence": self.licence,
            "gated": self.gated,
            "text": self.text,
            "options": dict(self.options),
        }

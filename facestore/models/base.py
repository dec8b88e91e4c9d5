"""The interface every model family implements.

A family module (``facestore.models.<family>``) exposes ``load(spec, *, weights, device,
precision, options) -> Encoder``. The build pipeline only talks to :class:`Encoder`:

- ``preprocessor()`` returns a picklable callable run in DataLoader workers: it takes one
  decoded ``uint8`` RGB array ``(H, W, 3)`` and returns the model's *pixels*, a ``(C, H, W)``
  tensor that is not yet normalised (``uint8`` wherever the reference preprocessing allows it),
  or raises :class:`~facestore.errors.PreprocessFailure` (the row is recorded with its reason).
  Equal preprocessors (``==``) give equal pixels: a build computes and transfers them once for
  every model that shares them.
- ``encode(batch)`` takes the stacked preprocessor outputs (on the CPU, or already on
  ``input_device()``), normalises them on the device and returns ``{view: (B, D)}`` float32 CPU
  tensors, one per view of the spec. ``model_input(batch)`` is the normalised tensor the model sees.
- ``resolved_spec()`` is the JSON-able record written into the store: the registry spec plus
  the preprocessing actually resolved from the model's own config, the weights identity
  (hub revision or sha256 of local files), pooling, compute precision and library versions.
  It must not depend on the device string, so that a build started on one machine can resume
  on another; the build adds what else changes the bits (batch size, decoder, device type).
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facestore.errors import ModelConfigError
from facestore.models.spec import ModelSpec


class TextTowerError(ModelConfigError, TypeError):
    """Text embeddings were asked of a model without a text tower."""

    def __init__(self, name: str) -> None:
        from facestore.models.registry import list_models, get_spec

        text_models = [m for m in list_models() if get_spec(m).text]
        super().__init__(f"model {name!r} has no text tower; text embeddings exist for: {', '.join(text_models)}")


class Encoder(abc.ABC):
    """A loaded, frozen model that turns preprocessed pixels into named embedding views."""

    spec: ModelSpec

    #: True when a row's vector does not depend on the batch it was computed in (exact
    #: arithmetic, e.g. ``pixels-32``): the batch size is then not part of the recorded run.
    batch_invariant: bool = False

    @abc.abstractmethod
    def preprocessor(self) -> Callable[[np.ndarray], Any]:
        """A picklable callable: uint8 RGB ``(H, W, 3)`` -> the model's pixels (not normalised)."""

    @abc.abstractmethod
    def encode(self, batch: Any) -> dict[str, Any]:
        """Forward a batch of preprocessor outputs; returns ``{view: float32 (B, D) CPU tensor}``."""

    def model_input(self, batch: Any) -> Any:
        """The normalised input the model itself receives for ``batch`` (on the model's device)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its model input")

    def input_device(self) -> str | None:
        """Where ``encode`` wants its batch (``"cuda:0"``, ``"cpu"``), or None to leave it on the CPU.

        The build copies each shared pixel batch there once (pinned, non-blocking, overlapped
        with the previous forward pass) for all the models that take it.
        """
        return None

    @abc.abstractmethod
    def resolved_spec(self) -> dict[str, Any]:
        """The device-independent record of exactly what produced the vectors."""

    def runtime(self) -> dict[str, Any]:
        """What actually runs (device, precision, execution providers): logged, not stored as spec."""
        return {}

    def collate(self, items: list[Any]) -> Any:
        """Stack preprocessor outputs into one batch (default: ``torch.stack``)."""
        import torch

        return torch.stack(items)

    # Text tower (zero-shot); only models whose spec has ``text=True``.
    def encode_text(self, texts: list[str]) -> np.ndarray:
        raise TextTowerError(self.spec.name)

    def text_logit_params(self) -> dict[str, float | None]:
        """``{"logit_scale": s, "logit_bias": b}`` as the model defines them (bias None for CLIP)."""
        raise TextTowerError(self.spec.name)


def sha256_of_files(paths: list[str | os.PathLike]) -> str:
    """A stable identity for local weights: sha256 over the files' names and bytes, sorted by name."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def library_versions(*modules: str) -> dict[str, str]:
    """Versions of the named distributions/modules that produced the vectors."""
    from importlib import metadata

    out = {}
    for m in modules:
        try:
            out[m] = metadata.version(m)
        except metadata.PackageNotFoundError:
            out[m] = "not installed"
    return out

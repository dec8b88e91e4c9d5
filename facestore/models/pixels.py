"""The weight-free ``pixels-32`` baseline.

The chip is reduced to 32x32 RGB by area averaging, scaled to ``[0, 1]`` and flattened in HWC
order (3,072 values). It measures how much name signal plain colour and layout carry, needs no
download, and is exact arithmetic, so it is bitwise deterministic on every machine.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from facestore.errors import WeightsNotFoundError
from facestore.models.base import Encoder, library_versions
from facestore.models.spec import ModelSpec

_IMPLEMENTATION = (
    "uint8 RGB (H, W, 3) -> float32 -> torch.nn.functional.interpolate(mode='area') to 32x32 "
    "(adaptive average pooling, i.e. OpenCV INTER_AREA for integer ratios) -> / 255 -> flatten HWC"
)


class PixelsPreprocessor:
    """Picklable: uint8 RGB ``(H, W, 3)`` -> float32 ``(3, S, S)`` in ``[0, 1]``."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = tuple(size)

    def __call__(self, image: np.ndarray) -> Any:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous().to(torch.float32)
        # Average the uint8 values first and divide once: the same numbers on every machine.
        x = F.interpolate(x[None], size=self.size, mode="area")[0]
        return x / 255.0


class PixelsEncoder(Encoder):
    """Flattens the area-resized chip; no weights, always fp32 on the CPU."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        (self._view,) = [v.name for v in spec.views]

    def preprocessor(self) -> Callable[[np.ndarray], Any]:
        return PixelsPreprocessor(self.spec.preprocessing.size)

    def encode(self, batch: Any) -> dict[str, Any]:
        import torch

        x = batch.to("cpu", torch.float32)
        # (B, C, H, W) -> (B, H, W, C) -> (B, H*W*C): the documented HWC flattening.
        return {self._view: x.permute(0, 2, 3, 1).reshape(x.shape[0], -1).contiguous()}

    def resolved_spec(self) -> dict[str, Any]:
        d = self.spec.to_dict()
        d["preprocessing"] = {**d["preprocessing"], "source": "facestore.models.pixels",
                              "implementation": _IMPLEMENTATION}
        d["weights"] = {"kind": "none"}
        d["precision"] = "fp32"
        d["versions"] = library_versions("torch")
        return d

    def runtime(self) -> dict[str, Any]:
        # Area averaging is memory-bound and tiny: it always runs on the CPU, whatever --device says.
        return {"device": "cpu", "precision": "fp32", "note": "weight-free; computed on the CPU"}


def load(spec: ModelSpec, *, weights: str | None = None, device: str = "auto", precision: str = "auto",
         options: dict[str, Any] | None = None) -> PixelsEncoder:
    """Build the ``pixels`` encoder. It takes no weights and no options."""
    if weights is not None:
        raise WeightsNotFoundError(
            f"model {spec.name!r} is weight-free and takes no weights, but got {str(weights)!r}; "
            f"drop --weights for {spec.name}"
        )
    if options:
        raise ValueError(f"model {spec.name!r} takes no options, got {sorted(options)}")
    return PixelsEncoder(spec)

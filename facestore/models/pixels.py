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
    "uint8 RGB (H, W, 3) -> area resize to 32x32: when 32 divides H and W, exact integer sums of "
    "the (H/32 x W/32) blocks divided by the block size; otherwise float32 "
    "torch.nn.functional.interpolate(mode='area') (adaptive average pooling, OpenCV INTER_AREA) "
    "-> / 255 -> flatten HWC"
)


class PixelsPreprocessor:
    """Picklable: uint8 RGB ``(H, W, 3)`` -> float32 ``(3, S, S)`` in ``[0, 1]``.

    The one preprocessing that crosses the worker pipe as float32 by design: area averages are
    not integers, and the 32x32 output is 12 KB (a 224x224 uint8 crop is 150 KB).
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = tuple(size)

    @property
    def output_nbytes(self) -> int:
        return 3 * int(self.size[0]) * int(self.size[1]) * 4

    def draft_min_side(self) -> int:
        return int(max(self.size))

    def __call__(self, image: np.ndarray) -> Any:
        import torch
        import torch.nn.functional as F

        h, w, _ = image.shape
        sh, sw = self.size
        if h % sh == 0 and w % sw == 0:
            # The usual case (512 chips): block sums in integers are exact and about 10x faster
            # than converting the whole chip to float for adaptive pooling.
            fh, fw = h // sh, w // sw
            # Rows of each block first (a contiguous reduction), then columns: 10x faster than
            # one multi-axis reduce, and the integer sums are the same.
            rows = np.ascontiguousarray(image).reshape(sh, fh, w * 3).sum(axis=1, dtype=np.uint32)
            sums = rows.reshape(sh, sw, fw, 3).sum(axis=2)
            blocks = sums.astype(np.float32) / np.float32(fh * fw * 255.0)
            return torch.from_numpy(np.ascontiguousarray(blocks.transpose(2, 0, 1)))
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous().to(torch.float32)
        # Average the uint8 values first and divide once: the same numbers on every machine.
        x = F.interpolate(x[None], size=self.size, mode="area")[0]
        return x / 255.0


class PixelsEncoder(Encoder):
    """Flattens the area-resized chip; no weights, always fp32 on the CPU."""

    # Exact arithmetic per row: the batch a row is computed in never changes its vector.
    batch_invariant = True

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        (self._view,) = [v.name for v in spec.views]

    def preprocessor(self) -> Callable[[np.ndarray], Any]:
        return PixelsPreprocessor(self.spec.preprocessing.size)

    def model_input(self, batch: Any) -> Any:
        import torch

        return batch.to("cpu", torch.float32)

    def encode(self, batch: Any) -> dict[str, Any]:
        x = self.model_input(batch)
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

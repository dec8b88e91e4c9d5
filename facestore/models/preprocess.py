"""Tensor preprocessing shared by the model families: resize, centre crop, rescale, normalise.

Two stages, so that what crosses from the decode workers to the device is small:

- :class:`PixelPreprocessor` (in the DataLoader workers) turns one decoded ``uint8`` RGB array
  ``(H, W, 3)`` into the model's pixels, ``uint8 (3, H', W')``: an antialiased ``torchvision``
  resize of the ``uint8`` tensor (torch's vectorised uint8 kernels, made to match PIL) and an
  integer centre crop, the way transformers 5's default ("torchvision backend") processors do it.
- :class:`Normalizer` (on the device, inside ``Encoder.encode``) converts to float32 and applies
  one fused ``(x - mean/rescale) * (rescale/std)``.

:class:`ImagePreprocessor` chains both for callers that want model-ready float input in one call.
That keeps parity with the reference processors (tests/test_preprocess_hf.py states the
tolerances) at a fraction of their per-image overhead.

:func:`from_hf_processor` reads a :class:`Preprocessing` from a transformers image processor,
recorded with ``source="hf-processor"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from facestore.models.spec import Preprocessing

# Interpolations this module implements. "area" is box averaging (adaptive average pooling),
# used for heavy downscaling such as the 32x32 pixel baseline.
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "area")
RESIZE_MODES = ("shortest_edge", "squash")

# PIL.Image.Resampling codes (what transformers stores as ``resample``) -> our names.
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 4: "area"}


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """Output ``(h, w)`` when scaling the short side to ``shortest`` and keeping the aspect ratio.

    Same integer arithmetic as transformers' ``get_resize_output_image_size(default_to_square=False)``
    (the long side is truncated, not rounded), so crops line up with the reference processors.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def output_size(preprocessing: Preprocessing) -> tuple[int, int]:
    """The ``(H, W)`` of the tensors produced for ``preprocessing``."""
    if preprocessing.resize == "shortest_edge" and preprocessing.crop is not None:
        return tuple(preprocessing.crop)
    return tuple(preprocessing.size)


class PixelPreprocessor:
    """Picklable worker stage: ``uint8 (H, W, 3)`` RGB -> the model's pixels, ``(3, H', W')``, not normalised.

    Resize (``"shortest_edge"`` then centre crop, or ``"squash"``), interpolation and channel
    order, as ``preprocessing`` says. The output is ``uint8`` when the resize runs on the
    decoded bytes (4x less to stack, share and copy to the device than float32); it is float32
    (values on the 0..255 scale, not rounded) when ``resize_dtype="float32"`` (DINOv3's
    processor rescales before it resizes) or the interpolation is ``"area"`` (box averages are
    not integers). :class:`Normalizer` finishes the job on the device.

    ``crop_rounding`` is ``"floor"`` (transformers' centre-crop offset ``int((h - ch) / 2)``) or
    ``"round"`` (torchvision's ``CenterCrop``, used by timm and open_clip: ``round((h - ch) / 2)``).

    Two equal pixel preprocessors give identical outputs, whatever the models' mean and std: a
    build computes and transfers such pixels once for all the models that share them.
    """

    def __init__(self, preprocessing: Preprocessing, *, resize_dtype: str = "uint8",
                 crop_rounding: str = "floor") -> None:
        if resize_dtype not in ("uint8", "float32"):
            raise ValueError(f"resize_dtype must be 'uint8' or 'float32', got {resize_dtype!r}")
        if crop_rounding not in ("floor", "round"):
            raise ValueError(f"crop_rounding must be 'floor' or 'round', got {crop_rounding!r}")
        if preprocessing.resize not in RESIZE_MODES:
            raise ValueError(
                f"ImagePreprocessor handles resize modes {RESIZE_MODES}, got {preprocessing.resize!r}; "
                "'aligned' models (ArcFace) produce their input in their own family module"
            )
        if preprocessing.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {preprocessing.interpolation!r}; expected one of {INTERPOLATIONS}"
            )
        if preprocessing.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {preprocessing.channel_order!r}")
        if preprocessing.resize == "shortest_edge" and not preprocessing.resize_to:
            raise ValueError("resize='shortest_edge' needs resize_to (the target length of the short side)")
        p = preprocessing
        self.resize_dtype = resize_dtype
        self.crop_rounding = crop_rounding
        # Only the geometry: mean/std/rescale belong to the Normalizer, `source` is provenance.
        self.key = (p.resize, p.resize_to if p.resize == "shortest_edge" else None,
                    tuple(p.crop) if p.resize == "shortest_edge" and p.crop is not None else None,
                    tuple(p.size), p.interpolation, p.channel_order, resize_dtype,
                    crop_rounding if p.resize == "shortest_edge" and p.crop is not None else None)
        self.preprocessing = p

    @property
    def output_dtype(self) -> str:
        """``"uint8"`` or ``"float32"``: what crosses the pipe for this preprocessing."""
        return "uint8" if self.resize_dtype == "uint8" and self.preprocessing.interpolation != "area" else "float32"

    @property
    def output_nbytes(self) -> int:
        """Bytes of one output image (sizes the shared-memory budget of a build)."""
        h, w = output_size(self.preprocessing)
        return 3 * h * w * (1 if self.output_dtype == "uint8" else 4)

    def draft_min_side(self) -> int:
        """The smallest decoded side that still gives this preprocessing a full-detail input."""
        p = self.preprocessing
        return int(p.resize_to) if p.resize == "shortest_edge" else int(max(p.size))

    def __repr__(self) -> str:
        return (f"PixelPreprocessor({self.preprocessing!r}, resize_dtype={self.resize_dtype!r}, "
                f"crop_rounding={self.crop_rounding!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PixelPreprocessor) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __call__(self, image: np.ndarray) -> Any:
        import torch

        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            raise ValueError(
                f"ImagePreprocessor expects a decoded uint8 RGB array of shape (H, W, 3), got {got}; "
                "decode images with facestore.images.decode_image"
            )
        p = self.preprocessing
        if not image.flags.writeable:
            # Arrays from np.asarray(PIL image) are read-only and torch warns on wrapping them;
            # one 0.8 MB copy per 512x512 chip is cheap next to the resize.
            image = image.copy()
        # (1, 3, H, W) view of the HWC buffer: channels-last memory is what torch's fast uint8
        # antialiased resize kernels want (1.8x faster than a contiguous CHW input here).
        x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
        if self.resize_dtype == "float32":
            x = x.to(torch.float32)
        h, w = image.shape[:2]
        if p.resize == "shortest_edge":
            target = shortest_edge_size(h, w, int(p.resize_to))
        else:
            target = (int(p.size[0]), int(p.size[1]))
        x = self._resize(x, target)
        if p.resize == "shortest_edge" and p.crop is not None:
            x = _center_crop(x, (int(p.crop[0]), int(p.crop[1])), rounding=self.crop_rounding)
        if p.channel_order == "BGR":
            x = x.flip(1)
        return x[0].contiguous()

    def _resize(self, x: Any, target: tuple[int, int]) -> Any:
        import torch

        if tuple(x.shape[-2:]) == tuple(target):
            return x
        mode = self.preprocessing.interpolation
        if mode == "area":
            # Box averaging over each output pixel's footprint, in float (no uint8 rounding).
            return torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32), target)
        from torchvision.transforms.v2 import functional as tvF

        interp = {
            "bicubic": tvF.InterpolationMode.BICUBIC,
            "bilinear": tvF.InterpolationMode.BILINEAR,
            "nearest": tvF.InterpolationMode.NEAREST,
        }[mode]
        return tvF.resize(x, list(target), interpolation=interp, antialias=mode != "nearest")


class Normalizer:
    """Device stage: pixels ``(B, 3, H, W)`` (uint8 or float32, any device) -> normalised float32.

    One fused ``(x - mean/rescale) * (rescale/std)`` on the raw 0..255 values, as transformers
    does, with the constants in float32. Elementwise float32 arithmetic is exactly rounded on
    every device, so normalising on the GPU gives the bits the CPU gives.
    """

    def __init__(self, preprocessing: Preprocessing) -> None:
        if any(s <= 0 for s in preprocessing.std):
            raise ValueError(f"std must be positive per channel, got {preprocessing.std}")
        r = float(preprocessing.rescale)
        self._offset = np.asarray(preprocessing.mean, dtype=np.float32) / np.float32(r)
        self._scale = np.float32(r) / np.asarray(preprocessing.std, dtype=np.float32)
        self._cache: dict[str, tuple[Any, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}  # device tensors stay in their process

    def __repr__(self) -> str:
        return f"Normalizer(offset={self._offset.tolist()}, scale={self._scale.tolist()})"

    def __call__(self, x: Any) -> Any:
        import torch

        key = str(x.device)
        if key not in self._cache:
            self._cache[key] = (torch.from_numpy(self._offset).view(1, 3, 1, 1).to(x.device),
                                torch.from_numpy(self._scale).view(1, 3, 1, 1).to(x.device))
        offset, scale = self._cache[key]
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(0)
        out = (x.to(torch.float32) - offset) * scale
        return out[0] if squeeze else out


class ImagePreprocessor:
    """Picklable callable: ``uint8 (H, W, 3)`` RGB numpy array -> normalised float32 ``(3, H', W')`` tensor.

    The whole preprocessing in one call (:class:`PixelPreprocessor` then :class:`Normalizer`),
    for code that wants model-ready float input on the CPU (SupCon encoder training, tests). The
    build runs the two stages apart: pixels in the decode workers, normalisation on the device;
    the values are the same bits.

    ``resize_dtype`` is ``"uint8"`` (resize the decoded bytes, as most HF processors and PIL do)
    or ``"float32"`` (rescale to float first, then resize, as ``DINOv3ViTImageProcessor`` does;
    about 1/255 different at edges and slower). Families record it next to the preprocessing.
    ``mean``/``std`` are given in the output channel order.
    """

    def __init__(self, preprocessing: Preprocessing, *, resize_dtype: str = "uint8",
                 crop_rounding: str = "floor") -> None:
        self.pixels = PixelPreprocessor(preprocessing, resize_dtype=resize_dtype, crop_rounding=crop_rounding)
        self.normalize = Normalizer(preprocessing)
        self.preprocessing = preprocessing
        self.resize_dtype = resize_dtype

    def __repr__(self) -> str:
        return f"ImagePreprocessor({self.preprocessing!r}, resize_dtype={self.resize_dtype!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImagePreprocessor)
            and other.preprocessing == self.preprocessing
            and other.pixels == self.pixels
        )

    def __hash__(self) -> int:
        return hash((self.preprocessing, self.pixels))

    def __call__(self, image: np.ndarray) -> Any:
        return self.normalize(self.pixels(image)).contiguous()


def _center_crop(x: Any, crop: tuple[int, int], *, rounding: str = "floor") -> Any:
    """Centre crop ``x`` (N, C, H, W) to ``crop``.

    ``rounding="floor"`` is transformers' offset (zero-padding first when the crop is larger);
    ``"round"`` is torchvision's ``CenterCrop`` (timm, open_clip): ResNet-50 a1_in1k resizes
    512 -> 235 and crops 224, where the two offsets differ by one pixel.
    """
    import torch

    ch, cw = crop
    h, w = x.shape[-2:]
    if rounding == "round":
        if ch > h or cw > w:
            raise ValueError(f"image resized to {h}x{w} is smaller than the {ch}x{cw} crop; check resize_to")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return x[..., top : top + ch, left : left + cw]
    if ch > h or cw > w:
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        x = torch.nn.functional.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = x.shape[-2:]
    top = int((h - ch) / 2.0)
    left = int((w - cw) / 2.0)
    return x[..., top : top + ch, left : left + cw]


def _size_field(size: Any, key: str) -> Any:
    """Read ``key`` from a transformers size (a ``SizeDict`` in v5, a dict in saved configs)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def from_hf_processor(processor: Any) -> Preprocessing:
    """The :class:`Preprocessing` a transformers image processor applies, ``source="hf-processor"``.

    Handles the processors of the families we ship (``BitImageProcessor`` for DINOv2,
    ``DINOv3ViTImageProcessor``, ``SiglipImageProcessor``, CLIP-style processors): a
    ``{"shortest_edge": n}`` size with a centre crop, or a ``{"height", "width"}`` squash.
    Other size conventions raise ``ValueError`` naming what was found.
    """
    name = type(processor).__name__
    size = getattr(processor, "size", None)
    do_resize = getattr(processor, "do_resize", True)
    do_crop = bool(getattr(processor, "do_center_crop", False))
    crop_size = getattr(processor, "crop_size", None)
    crop = None
    if do_crop and crop_size is not None:
        crop = (int(_size_field(crop_size, "height")), int(_size_field(crop_size, "width")))
    shortest = _size_field(size, "shortest_edge")
    height, width = _size_field(size, "height"), _size_field(size, "width")
    if not do_resize:
        raise ValueError(f"{name} has do_resize=False; facestore needs a fixed input size to batch images")
    if shortest and not _size_field(size, "longest_edge"):
        resize, resize_to = "shortest_edge", int(shortest)
        out = crop if crop is not None else None
        if out is None:
            raise ValueError(
                f"{name} resizes the shortest edge to {shortest} without a centre crop, so images of different "
                "aspect ratios give tensors of different sizes; set do_center_crop/crop_size"
            )
        out_size = out
    elif height and width:
        resize, resize_to = "squash", None
        out_size = (int(height), int(width))
        if crop is not None and crop != out_size:
            raise ValueError(f"{name} squashes to {out_size} and then crops {crop}; this combination is not supported")
        crop = None
    else:
        raise ValueError(f"{name}: unsupported size {size!r}; expected {{'shortest_edge': n}} or {{'height', 'width'}}")

    resample = getattr(processor, "resample", 3)
    code = int(getattr(resample, "value", resample))
    if code not in _PIL_RESAMPLE:
        raise ValueError(f"{name}: unsupported resample {resample!r}; supported: {_PIL_RESAMPLE}")

    if getattr(processor, "do_normalize", True):
        mean = tuple(float(v) for v in processor.image_mean)
        std = tuple(float(v) for v in processor.image_std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
    return Preprocessing(
        size=out_size,
        resize=resize,
        resize_to=resize_to,
        crop=crop,
        interpolation=_PIL_RESAMPLE[code],
        mean=mean,
        std=std,
        rescale=rescale,
        channel_order="RGB",
        source="hf-processor",
    )


def with_source(preprocessing: Preprocessing, source: str) -> Preprocessing:
    """A copy of ``preprocessing`` that records where its values came from."""
    return dataclasses.replace(preprocessing, source=source)

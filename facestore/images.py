"""Decode an image file into RGB pixels, or say exactly why it cannot be decoded.

What can be decoded is converted to 8-bit RGB (CMYK, grayscale, palette, RGBA, 16-bit, ...)
with its EXIF orientation applied. What cannot (missing, zero bytes, not an image, truncated,
decompression-bomb sized) raises :class:`~facestore.errors.ImageDecodeError` whose ``reason``
is one of :data:`DECODE_REASONS`; the build records it for that row and skips the image.

Decoders (``decoder=``, recorded by the build with the vectors):

- ``"auto"`` (default): plain 8-bit JPEGs (baseline, extended or progressive Huffman, 1 or 3
  components, no Adobe/CMYK marker, no EXIF rotation) go to torchvision's libjpeg-turbo
  ``decode_jpeg`` on the CPU, about 1.5x faster than PIL here; everything else, and every
  image torchvision refuses, goes to PIL, which also names the failure reason. Both run
  libjpeg-turbo's accurate integer IDCT with fancy upsampling, so the pixels are identical; this
  is checked once per process on a set of JPEGs made on the spot (every subsampling, progressive,
  grayscale), and ``"auto"`` silently uses PIL alone if they ever differ
  (:func:`fast_jpeg_available`). ``tests/test_images.py`` checks it on real-world-like files.
- ``"pil"``: PIL for every image (the reference).
- ``"draft"``: PIL with libjpeg's DCT-domain downscaling (``Image.draft``): a JPEG is decoded
  at 1/2, 1/4 or 1/8 scale when both sides stay >= ``draft_size``. Faster, but the pixels
  differ from a full decode followed by the model's resize (docs/benchmarks.md gives the
  measured difference), so it is never the default and the store records it.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import warnings
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facestore.errors import ImageDecodeError

log = logging.getLogger(__name__)

#: Largest image accepted, in pixels. Face chips are 512x512 (262k pixels); anything above
#: 64 MP is treated as a decompression bomb rather than decoded into gigabytes of memory.
MAX_PIXELS = 64_000_000

DECODE_REASONS = (
    "missing_file",
    "unreadable",
    "empty_file",
    "not_an_image",
    "truncated",
    "decompression_bomb",
    "decode_error",
)

DECODERS = ("auto", "pil", "draft")

# SOF markers torchvision's decoder is given: baseline, extended sequential and progressive
# Huffman. Lossless, hierarchical and arithmetic-coded JPEGs go to PIL.
_FAST_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_ALL_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, mapping OS errors to decode reasons."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageDecodeError("missing_file", f"{os.fspath(path)} does not exist") from None
    except OSError as e:
        raise ImageDecodeError("unreadable", f"{os.fspath(path)}: {e.strerror or e}") from None


# --------------------------------------------------------------------------- JPEG header


@dataclass(frozen=True)
class JpegInfo:
    """What the markers before the first scan say about a JPEG (no pixel is decoded)."""

    sof: int  # the SOFn marker byte (0xC0 baseline, 0xC2 progressive, ...)
    precision: int
    height: int
    width: int
    component_ids: tuple[int, ...]
    adobe: bool  # an APP14 "Adobe" segment: colour transform flags (CMYK/YCCK/RGB JPEGs)
    orientation: int | None  # EXIF orientation tag, None when absent
    has_eoi: bool  # an end-of-image marker after the first scan (else the file is truncated)


def jpeg_info(data: bytes) -> JpegInfo | None:
    """Parse a JPEG's markers up to its first scan; ``None`` if ``data`` is not a well-formed JPEG."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    sof: tuple[int, int, int, int, tuple[int, ...]] | None = None
    adobe = False
    orientation: int | None = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2 or pos + 2 + length > n:
            return None
        body = data[pos + 4:pos + 2 + length]
        if marker in _ALL_SOF:
            if len(body) < 6:
                return None
            precision, height, width, ncomp = struct.unpack(">BHHB", body[:6])
            ids = tuple(body[6 + 3 * i] for i in range(ncomp) if 6 + 3 * i < len(body))
            sof = (marker, precision, height, width, ids)
        elif marker == 0xEE and body[:5] == b"Adobe":
            adobe = True
        elif marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            orientation = _exif_orientation(body[6:])
        elif marker == 0xDA:  # start of scan: the header is over
            if sof is None:
                return None
            return JpegInfo(sof=sof[0], precision=sof[1], height=sof[2], width=sof[3], component_ids=sof[4],
                            adobe=adobe, orientation=orientation, has_eoi=data.rfind(b"\xff\xd9") > pos)
        pos += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 0 if unreadable."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for k in range(count):
            entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112:
                return struct.unpack(order + "H", entry[8:10])[0] if kind == 3 else 0
    except (KeyError, struct.error, IndexError):
        return 0  # unreadable EXIF: not "no orientation"; PIL decides what it means
    return None


def _fast_path_ok(info: JpegInfo | None, max_pixels: int) -> bool:
    """Whether torchvision's decoder gives exactly what the PIL path gives for this JPEG."""
    return (
        info is not None
        and info.sof in _FAST_SOF
        and info.precision == 8
        and len(info.component_ids) in (1, 3)
        # Component ids 'R','G','B' mean an RGB (not YCbCr) JPEG; the Adobe marker carries
        # colour-transform flags (RGB/CMYK/YCCK): libjpeg and PIL may read those differently.
        and info.component_ids != (82, 71, 66)
        and not info.adobe
        and info.orientation in (None, 1)
        and info.has_eoi
        and 0 < info.width * info.height <= max_pixels
    )


# --------------------------------------------------------------------------- torchvision path


@functools.lru_cache(maxsize=1)
def _torchvision_op():
    """torchvision's registered CPU JPEG op, or None when torchvision has no image extension.

    The op itself, not ``torchvision.io.decode_jpeg``: that wrapper warns on every call that
    torchvision's image I/O is deprecated in favour of TorchCodec (torchvision 0.29); the op
    it calls is the same.
    """
    try:
        import torch
        import torchvision.io.image  # noqa: F401  (registers torch.ops.image.*)

        return torch.ops.image.decode_jpeg
    except (ImportError, AttributeError, RuntimeError, OSError):
        return None


def _decode_torchvision(data: bytes) -> np.ndarray:
    import torch

    op = _torchvision_op()
    # ImageReadMode.RGB is 3: grayscale JPEGs come back with the channel repeated, as PIL's convert does.
    chw = op(torch.frombuffer(bytearray(data), dtype=torch.uint8), 3, False)
    # HWC C-contiguous, the layout decode_image promises (and the one torch's fast uint8
    # antialiased resize kernels read without another copy).
    return chw.permute(1, 2, 0).contiguous().numpy()


def _probe_jpegs() -> list[bytes]:
    """Small JPEGs covering what the fast path accepts: every chroma subsampling, progressive, grayscale."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:40, 0:56] / 40.0
    rgb = np.clip(np.stack([180 * xx, 90 + 60 * np.sin(7 * xx * yy), 200 * yy], axis=-1)
                  + rng.normal(0, 12, (40, 56, 3)), 0, 255).astype(np.uint8)
    out = []
    for kwargs in ({"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2}, {"progressive": True},
                   {"subsampling": 2, "quality": 60, "optimize": True}):
        buf = BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=kwargs.pop("quality", 90), **kwargs)
        out.append(buf.getvalue())
    buf = BytesIO()
    Image.fromarray(rgb[:, :, 1]).save(buf, format="JPEG", quality=85)
    out.append(buf.getvalue())
    return out


@functools.lru_cache(maxsize=1)
def fast_jpeg_available() -> bool:
    """Whether ``decoder="auto"`` uses torchvision here: its op exists and matches PIL bit for bit.

    Checked once per process on :func:`_probe_jpegs`. Both libraries bundle their own
    libjpeg-turbo; should a future pair of wheels ever decode differently, ``"auto"`` falls
    back to PIL for every image rather than store different pixels.
    """
    if _torchvision_op() is None:
        log.info("torchvision has no JPEG op here; decoding every image with PIL")
        return False
    try:
        for data in _probe_jpegs():
            if not np.array_equal(_decode_torchvision(data), decode_bytes(data, decoder="pil")):
                log.warning("torchvision's JPEG decoder differs from PIL's on this machine; decoding with PIL only")
                return False
    except Exception as e:  # any failure of the fast path means: do not use it
        log.warning("torchvision's JPEG decoder failed its self-check (%s); decoding with PIL only", e)
        return False
    return True


# --------------------------------------------------------------------------- public API


def decode_bytes(data: bytes, *, name: str = "<bytes>", max_pixels: int = MAX_PIXELS, decoder: str = "auto",
                 draft_size: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to a C-contiguous, writable ``uint8`` RGB array ``(H, W, 3)``.

    ``decoder`` is one of :data:`DECODERS` (see the module docstring); ``draft_size`` is the
    smallest side ``"draft"`` may decode to (ignored by the other decoders).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if len(data) == 0:
        raise ImageDecodeError("empty_file", f"{name} has zero bytes")
    if decoder == "auto" and data[:2] == b"\xff\xd8" and _fast_path_ok(jpeg_info(data), max_pixels) \
            and fast_jpeg_available():
        try:
            return _decode_torchvision(data)
        except RuntimeError:
            pass  # corrupt data: PIL decodes what it can and names the failure
    return _decode_pil(data, name=name, max_pixels=max_pixels,
                       draft_size=draft_size if decoder == "draft" else None)


def decode_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, decoder: str = "auto",
                 draft_size: int | None = None) -> np.ndarray:
    """Decode the image at ``path`` to a ``uint8`` RGB array ``(H, W, 3)`` (EXIF orientation applied)."""
    return decode_bytes(read_bytes(path), name=os.fspath(path), max_pixels=max_pixels, decoder=decoder,
                        draft_size=draft_size)


def _decode_pil(data: bytes, *, name: str, max_pixels: int, draft_size: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # PIL warns before it raises for bombs; both cases are handled below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    "decompression_bomb", f"{name} is {w}x{h} = {w * h:,} pixels (limit {max_pixels:,})"
                )
            if draft_size:
                # DCT-domain downscaling: the largest 1/2^k scale keeping both sides >= draft_size.
                img.draft("RGB", (int(draft_size), int(draft_size)))
            img.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", f"{name} is not an image format PIL can read") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("decompression_bomb", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        low = msg.lower()
        reason = "truncated" if ("truncated" in low or "premature end" in low) else "decode_error"
        raise ImageDecodeError(reason, f"{name}: {msg}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # a corrupt EXIF block must not lose an otherwise fine image
        warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({e})", RuntimeWarning, stacklevel=3)
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the format's range, not by clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return np.ascontiguousarray(np.repeat(np.round(arr).astype(np.uint8)[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white, as a viewer shows it, rather than dropping alpha to black.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    # np.array copies into a writable array (np.asarray would be a read-only view of PIL's
    # buffer, which torch.from_numpy warns about downstream); an RGB image is not converted
    # first (convert("RGB") on an RGB image is one more full copy).
    return np.array(img, dtype=np.uint8)

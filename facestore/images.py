"""Decode an image file into RGB pixels, or say exactly why it cannot be decoded.

What can be decoded is converted to 8-bit RGB (CMYK, grayscale, palette, RGBA, 16-bit, ...)
with its EXIF orientation applied. What cannot (missing, zero bytes, not an image, truncated,
decompression-bomb sized) raises :class:`~facestore.errors.ImageDecodeError` whose ``reason``
is one of :data:`DECODE_REASONS`; the build records it for that row and skips the image.
"""

from __future__ import annotations

import os
import warnings
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facestore.errors import ImageDecodeError

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


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, mapping OS errors to decode reasons."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageDecodeError("missing_file", f"{os.fspath(path)} does not exist") from None
    except OSError as e:
        raise ImageDecodeError("unreadable", f"{os.fspath(path)}: {e.strerror or e}") from None


def decode_bytes(data: bytes, *, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to a ``uint8`` RGB array of shape ``(H, W, 3)``."""
    if len(data) == 0:
        raise ImageDecodeError("empty_file", f"{name} has zero bytes")
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
        warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({e})", RuntimeWarning, stacklevel=2)
    return _to_rgb(img)


def decode_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode the image at ``path`` to a ``uint8`` RGB array ``(H, W, 3)`` (EXIF orientation applied)."""
    return decode_bytes(read_bytes(path), name=os.fspath(path), max_pixels=max_pixels)


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
    # buffer, which torch.from_numpy warns about downstream).
    return np.array(img, dtype=np.uint8)

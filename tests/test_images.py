"""Decoding: every convertible mode becomes RGB; everything else fails with its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facestore.errors import ImageDecodeError
from facestore.images import decode_bytes, decode_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode,fmt",
    [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"),
     ("I;16", "PNG"), ("1", "PNG"), ("RGB", "WEBP")],
)
def test_modes_decode_to_rgb_uint8(mode, fmt):
    img = Image.new(mode, (20, 10))
    out = decode_bytes(_encode(img, fmt))
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    assert out.flags.writeable and out.flags.c_contiguous  # torch.from_numpy takes it without a warning


def test_16bit_grayscale_scales_instead_of_clipping():
    arr = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    out = decode_bytes(_encode(Image.fromarray(arr), "PNG"))
    assert 120 <= out[0, 0, 0] <= 135  # mid-grey, not saturated white


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert decode_bytes(_encode(img, "PNG"))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = decode_bytes(_encode(img, "JPEG", exif=exif))
    assert out.shape == (30, 10, 3)


def test_failures_have_reasons(tmp_path):
    good = _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    cases = {
        "empty_file": b"",
        "not_an_image": b"this is not an image at all",
        "truncated": good[: len(good) // 2],
    }
    for reason, data in cases.items():
        with pytest.raises(ImageDecodeError) as e:
            decode_bytes(data, name=reason)
        assert e.value.reason == reason, (reason, str(e.value))
    with pytest.raises(ImageDecodeError) as e:
        decode_image(tmp_path / "nope.jpg")
    assert e.value.reason == "missing_file"


def test_decompression_bomb_is_refused_without_decoding():
    big = _encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageDecodeError) as e:
        decode_bytes(big, max_pixels=1_000_000)
    assert e.value.reason == "decompression_bomb" and "3000x3000" in str(e.value)

"""Decoding: every convertible mode becomes RGB; everything else fails with its reason."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

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


# --------------------------------------------------------------------------- the fast JPEG path


def _photo() -> Image.Image:
    """A real camera JPEG shipped in the insightface wheel (a group photo), cropped square."""
    from pathlib import Path

    import insightface

    img = Image.open(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").convert("RGB")
    side = min(img.size)
    return img.crop((0, 0, side, side)).resize((512, 512), Image.Resampling.BICUBIC)


@functools.lru_cache(maxsize=1)
def _real_world_jpegs() -> dict[str, bytes]:
    """JPEGs as datasets hold them: qualities, chroma subsamplings, progressive, optimised, grey, odd sizes."""
    from pathlib import Path

    import insightface

    photo = _photo()
    out = {"camera_original": (Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").read_bytes()}
    for q in (50, 75, 95):
        for ss, label in ((0, "444"), (1, "422"), (2, "420")):
            out[f"q{q}_{label}"] = _encode(photo, "JPEG", quality=q, subsampling=ss)
    out["progressive"] = _encode(photo, "JPEG", quality=90, progressive=True)
    out["optimized"] = _encode(photo, "JPEG", quality=85, optimize=True)
    out["restart_markers"] = _encode(photo, "JPEG", quality=85, restart_marker_blocks=2)
    out["grayscale"] = _encode(photo.convert("L"), "JPEG", quality=90)
    out["odd_size_333x277"] = _encode(photo.crop((7, 11, 284, 344)), "JPEG", quality=88)
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation "normal": still the fast path
    out["exif_orientation_1"] = _encode(photo, "JPEG", quality=90, exif=exif)
    return out


REAL_WORLD = ["camera_original", *(f"q{q}_{s}" for q in (50, 75, 95) for s in ("444", "422", "420")), "progressive",
              "optimized", "restart_markers", "grayscale", "odd_size_333x277", "exif_orientation_1"]


@pytest.mark.parametrize("name", REAL_WORLD)
def test_torchvision_path_gives_pils_pixels(name):
    """``decoder="auto"`` takes torchvision's decoder for these files, and its pixels are PIL's, bit for bit."""
    from facestore.images import _fast_path_ok, fast_jpeg_available, jpeg_info

    assert sorted(_real_world_jpegs()) == sorted(REAL_WORLD)
    data = _real_world_jpegs()[name]
    assert fast_jpeg_available()  # else this test would compare PIL with itself
    assert _fast_path_ok(jpeg_info(data), 64_000_000), jpeg_info(data)
    fast, ref = decode_bytes(data), decode_bytes(data, decoder="pil")
    assert fast.dtype == np.uint8 and fast.flags.c_contiguous and fast.flags.writeable
    np.testing.assert_array_equal(fast, ref)
    # And the reference really is what PIL gives on its own.
    np.testing.assert_array_equal(ref, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpegs_take_pils_path_and_are_rotated(orientation):
    from facestore.images import _fast_path_ok, jpeg_info

    photo = _photo().crop((0, 0, 512, 300))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(photo, "JPEG", quality=90, exif=exif)
    assert jpeg_info(data).orientation == orientation and not _fast_path_ok(jpeg_info(data), 64_000_000)
    out = decode_bytes(data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(out, expected)
    assert out.shape[:2] == ((300, 512) if orientation == 3 else (512, 300))


def test_cmyk_and_adobe_jpegs_take_pils_path():
    from facestore.images import _fast_path_ok, jpeg_info

    data = _encode(_photo().convert("CMYK"), "JPEG", quality=90)
    info = jpeg_info(data)
    assert len(info.component_ids) == 4 and not _fast_path_ok(info, 64_000_000)
    np.testing.assert_array_equal(decode_bytes(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_damaged_jpegs_fail_with_pils_reasons():
    data = _encode(_photo(), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError) as e:
        decode_bytes(data[: len(data) // 2])  # no end-of-image marker: straight to PIL
    assert e.value.reason == "truncated"
    with pytest.raises(ImageDecodeError) as e:
        decode_bytes(data[:-2] + b"\x00\x00")  # torchvision refuses it; PIL names it
    assert e.value.reason == "truncated"
    # Garbage in the middle of the scan: whichever decoder reads it, the pixels are PIL's.
    corrupt = data[:4000] + bytes(300) + data[4300:]
    try:
        ref = decode_bytes(corrupt, decoder="pil")
    except ImageDecodeError as err:
        with pytest.raises(ImageDecodeError) as e:
            decode_bytes(corrupt)
        assert e.value.reason == err.reason
    else:
        np.testing.assert_array_equal(decode_bytes(corrupt), ref)


def test_jpeg_header_parsing():
    from facestore.images import jpeg_info

    info = jpeg_info(_encode(_photo(), "JPEG", quality=90, progressive=True))
    assert (info.sof, info.precision, info.height, info.width) == (0xC2, 8, 512, 512)
    assert info.component_ids == (1, 2, 3) and info.has_eoi and info.orientation is None and not info.adobe
    assert jpeg_info(_encode(Image.new("RGB", (8, 8)), "PNG")) is None
    assert jpeg_info(b"\xff\xd8\xff\xe0\x00") is None  # cut inside the first segment


def test_draft_decoding_is_dct_scaled_and_never_the_default():
    data = _encode(_photo(), "JPEG", quality=90)
    full = decode_bytes(data)
    half = decode_bytes(data, decoder="draft", draft_size=224)
    assert full.shape == (512, 512, 3) and half.shape == (256, 256, 3)  # 1/2 keeps both sides >= 224
    assert decode_bytes(data, decoder="draft", draft_size=300).shape == (512, 512, 3)  # 1/2 would be < 300
    assert decode_bytes(data, decoder="draft", draft_size=64).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="decoder must be one of"):
        decode_bytes(data, decoder="nvjpeg")

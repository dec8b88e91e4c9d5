"""ImagePreprocessor: parity with the reference transformers image processors, and its own contract.

Chips: two real face photos shipped in the insightface wheel (``t1.jpg``, a group photo cropped
square; ``Tom_Hanks_54745.png``, a 112 px face upsampled), both made into 512x512 JPEG chips as
the dataset has them, a non-square chip (aspect-preserving resize + crop path) and a smooth
synthetic chip.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import insightface
from facestore.models.preprocess import ImagePreprocessor, from_hf_processor, shortest_edge_size
from facestore.models.spec import Preprocessing

IMAGES = Path(insightface.__file__).parent / "data" / "images"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# transformers 5's default processors and ours run the same torch kernels: only float rounding
# in the fused normalisation differs (measured max 1.2e-6).
EXACT_TOL = 1e-5


def _jpeg_roundtrip(img):
    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _chips() -> dict[str, np.ndarray]:
    from PIL import Image

    group = Image.open(IMAGES / "t1.jpg").convert("RGB")
    w, h = group.size
    side = min(w, h)
    square = group.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    face = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB")
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32) / 511.0
    smooth = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6.0 * xx * yy)], axis=-1)
    return {
        "group_photo_chip": _jpeg_roundtrip(square.resize((512, 512), Image.BICUBIC)),
        "face_chip": _jpeg_roundtrip(face.resize((512, 512), Image.BICUBIC)),
        "non_square": _jpeg_roundtrip(group.resize((512, 354), Image.BICUBIC)),
        "smooth_synthetic": np.round(smooth * 255).astype(np.uint8),
    }


CHIPS = _chips()


def _dinov2_processor():
    from transformers import BitImageProcessor

    # As facebook/dinov2-*'s preprocessor_config.json.
    return BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                             do_center_crop=True, resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)


def _dinov3_processor():
    from transformers import DINOv3ViTImageProcessor

    return DINOv3ViTImageProcessor(size={"height": 224, "width": 224}, resample=2,
                                   image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)


def _siglip_processor():
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": 224, "width": 224}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)


PROCESSORS = {
    # name: (reference processor factory, resize_dtype the family uses)
    "BitImageProcessor(dinov2)": (_dinov2_processor, "uint8"),
    "DINOv3ViTImageProcessor": (_dinov3_processor, "float32"),
    "SiglipImageProcessor": (_siglip_processor, "uint8"),
}


def _reference(processor, chip: np.ndarray) -> torch.Tensor:
    # The processor gets its own writable copy; ours must cope with read-only arrays.
    return processor(images=chip.copy(), return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("proc_name", sorted(PROCESSORS))
@pytest.mark.parametrize("chip_name", sorted(CHIPS))
def test_parity_with_transformers_processor(proc_name, chip_name):
    """Ours vs the reference HF processor (torchvision backend, transformers' default): max abs <= 1e-5."""
    factory, resize_dtype = PROCESSORS[proc_name]
    processor = factory()
    chip = CHIPS[chip_name]
    chip.flags.writeable = False  # as decoded chips arrive (np.asarray of a PIL image)
    ours = ImagePreprocessor(from_hf_processor(processor), resize_dtype=resize_dtype)(chip)
    ref = _reference(processor, chip)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape == (3, 224, 224)
    assert (ours - ref).abs().max().item() <= EXACT_TOL


@pytest.mark.parametrize("chip_name", sorted(CHIPS))
def test_parity_with_pil_backend_processors(chip_name):
    """Against transformers' PIL-backend processors (what transformers 4 ran by default).

    PIL's and torch's uint8 bicubic kernels round differently at a few pixels (measured: none on
    square chips for Bit, some on the non-square chip and on SigLIP's squash), so the tolerance is
    one grey level over the smallest std (1/255/std, plus 1e-5 float slack), at under 1% of values.
    """
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    chip = CHIPS[chip_name]
    bit = BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                               do_center_crop=True, resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    sig = SiglipImageProcessorPil(size={"height": 224, "width": 224}, resample=3)
    for processor in (bit, sig):
        d = (ImagePreprocessor(from_hf_processor(processor))(chip) - _reference(processor, chip)).abs()
        assert d.max().item() <= 1.0 / 255 / min(processor.image_std) + 1e-5
        assert (d > 1e-4).float().mean().item() < 0.01


def test_from_hf_processor_reads_every_value():
    """The resolved Preprocessing equals the processor's own settings, tagged source=hf-processor."""
    p = from_hf_processor(_dinov2_processor())
    assert p == Preprocessing(size=(224, 224), resize="shortest_edge", resize_to=256, crop=(224, 224),
                              interpolation="bicubic", mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD),
                              rescale=1 / 255, channel_order="RGB", source="hf-processor")
    s = from_hf_processor(_siglip_processor())
    assert (s.resize, s.size, s.crop, s.interpolation, s.mean, s.std) == (
        "squash", (224, 224), None, "bicubic", (0.5,) * 3, (0.5,) * 3)
    d3 = from_hf_processor(_dinov3_processor())
    assert (d3.resize, d3.interpolation, d3.source) == ("squash", "bilinear", "hf-processor")


def test_from_hf_processor_rejects_what_it_cannot_batch():
    from transformers import BitImageProcessor

    no_crop = BitImageProcessor(size={"shortest_edge": 256}, do_center_crop=False)
    with pytest.raises(ValueError, match="different sizes"):
        from_hf_processor(no_crop)


def test_shortest_edge_size_matches_transformers():
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    for h, w in [(512, 512), (354, 512), (512, 354), (333, 500), (1001, 999)]:
        img = np.zeros((h, w, 3), dtype=np.uint8)
        ref = get_resize_output_image_size(img, size=256, default_to_square=False,
                                           input_data_format=ChannelDimension.LAST)
        assert shortest_edge_size(h, w, 256) == tuple(ref)


def test_picklable_and_deterministic():
    pre = ImagePreprocessor(from_hf_processor(_siglip_processor()))
    clone = pickle.loads(pickle.dumps(pre))
    assert clone == pre and hash(clone) == hash(pre)
    chip = CHIPS["face_chip"]
    assert torch.equal(pre(chip), clone(chip))
    assert torch.equal(pre(chip), pre(chip))


def test_bgr_channel_order_and_area_resize():
    """BGR flips channels after resizing; 'area' averages 2x2 blocks exactly."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    base = dict(size=(32, 32), resize="squash", interpolation="area", mean=(0.0,) * 3, std=(1.0,) * 3, rescale=1.0)
    rgb = ImagePreprocessor(Preprocessing(**base))(img)
    blocks = img.astype(np.float64).reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    np.testing.assert_allclose(rgb.numpy(), blocks, atol=1e-4)
    bgr = ImagePreprocessor(Preprocessing(**base, channel_order="BGR"))(img)
    assert torch.equal(bgr, rgb.flip(0))


def test_normalisation_values():
    """A flat grey image maps to (v * rescale - mean) / std per channel."""
    img = np.full((40, 30, 3), 200, dtype=np.uint8)
    p = Preprocessing(size=(16, 16), resize="shortest_edge", resize_to=20, crop=(16, 16), interpolation="bilinear",
                      mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    out = ImagePreprocessor(p)(img)
    assert out.shape == (3, 16, 16)
    expected = (200 / 255 - np.array(p.mean)) / np.array(p.std)
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                 np.zeros((8, 8, 4), np.uint8)])
def test_rejects_non_rgb_uint8(bad):
    pre = ImagePreprocessor(Preprocessing(size=(4, 4), resize="squash"))
    with pytest.raises(ValueError, match=r"uint8 RGB array of shape \(H, W, 3\)"):
        pre(bad)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="aligned"):
        ImagePreprocessor(Preprocessing(size=(112, 112), resize="aligned"))
    with pytest.raises(ValueError, match="interpolation"):
        ImagePreprocessor(Preprocessing(size=(4, 4), resize="squash", interpolation="lanczos"))
    with pytest.raises(ValueError, match="resize_to"):
        ImagePreprocessor(Preprocessing(size=(4, 4), resize="shortest_edge", crop=(4, 4)))
    with pytest.raises(ValueError, match="resize_dtype"):
        ImagePreprocessor(Preprocessing(size=(4, 4), resize="squash"), resize_dtype="float16")

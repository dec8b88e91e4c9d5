"""open_clip, timm, random_vit and SupCon families through ``load_encoder(name, weights=dir)``.

Tiny models of the real architectures are built once per module (tests/tiny/others.py) and
loaded through the same code path as real weights. Parity tolerances for our tensor
preprocessing against the libraries' own PIL-based transforms are stated in the tests.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from facestore.errors import DeviceError, WeightsNotFoundError
from facestore.models import load_encoder
from facestore.models.base import sha256_of_files
from tests.tiny import others

# Our preprocessing resizes uint8 tensors with torchvision's antialiased kernels, the libraries
# resize PIL images: pixel values may differ by a rounding step at edges. Stated tolerances, in
# 0..255 pixel units before normalisation: max 1.5 levels, mean 0.05 levels (measured on the two
# insightface photos: max 1.0, mean 0.001-0.005).
MAX_PIXEL_DIFF = 1.5
MEAN_PIXEL_DIFF = 0.05


@pytest.fixture(scope="module")
def chips():
    return others.face_chips()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_openclip_timm")
    return {"open_clip": others.make_open_clip(root), "timm": others.make_timm(root),
            "supcon": others.make_supcon(root)}


@pytest.fixture(scope="module")
def clip(weights):
    return load_encoder("clip-vit-b-32", weights=str(weights["open_clip"]), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def resnet(weights):
    return load_encoder("resnet50", weights=str(weights["timm"]), device="cpu", precision="fp32")


def batch_of(encoder, chips):
    pre = encoder.preprocessor()
    return encoder.collate([pre(c) for c in chips])


def assert_pixel_parity(ours, theirs, std):
    """Compare normalised tensors in 0..255 pixel units (undo the per-channel std)."""
    scale = torch.tensor(std).view(3, 1, 1) * 255.0
    diff = ((ours - theirs) * scale).abs()
    assert ours.shape == theirs.shape
    assert diff.max().item() <= MAX_PIXEL_DIFF, diff.max().item()
    assert diff.mean().item() <= MEAN_PIXEL_DIFF, diff.mean().item()


# ------------------------------------------------------------------ open_clip


def test_clip_views_shapes_and_determinism(clip, chips):
    x = batch_of(clip, chips)
    a, b = clip.encode(x), clip.encode(x)
    assert set(a) == {"image", "pooled"}
    assert a["image"].shape == (2, 16) and a["pooled"].shape == (2, 32)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.allclose(a["image"][0], a["image"][1])  # two different faces
    assert clip.resolved_spec()["views"] == {"image": 16, "pooled": 32}


def test_clip_image_is_encode_image_and_pooled_projects_to_it(clip, chips):
    x = batch_of(clip, chips)
    assert x.dtype == torch.uint8  # pixels cross the worker pipe as uint8; encode normalises
    out = clip.encode(x)
    with torch.no_grad():
        reference = clip.model.encode_image(clip.model_input(x))
    torch.testing.assert_close(out["image"], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pooled"] @ clip.model.visual.proj, out["image"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out["pooled"][:, :16], out["image"])


def test_clip_resolved_spec_matches_open_clip_config(clip, weights):
    spec = clip.resolved_spec()
    cfg = clip.model.visual.preprocess_cfg
    p = spec["preprocessing"]
    assert p["source"] == "open_clip-preprocess-cfg"
    assert p["size"] == [224, 224] and p["crop"] == [224, 224] and p["resize_to"] == 224
    assert p["resize"] == "shortest_edge" and cfg["resize_mode"] == "shortest"
    assert p["interpolation"] == cfg["interpolation"] == "bicubic"
    assert p["mean"] == pytest.approx(list(cfg["mean"])) and p["std"] == pytest.approx(list(cfg["std"]))
    d = weights["open_clip"]
    expected = sha256_of_files([d / "open_clip_config.json", d / "open_clip_model.safetensors"])
    assert spec["weights"] == {"kind": "local", "path_name": d.name, "sha256": expected}
    again = load_encoder("clip-vit-b-32", weights=str(d), device="cpu", precision="fp32").resolved_spec()
    assert again == spec
    assert spec["precision"] == "fp32" and spec["versions"]["open_clip_torch"]
    json.dumps(spec)


def test_clip_preprocessing_parity_with_open_clip_transform(clip, chips):
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    reference = image_transform_v2(PreprocessCfg(**clip.model.visual.preprocess_cfg),
                                             is_train=False)
    pre = pickle.loads(pickle.dumps(clip.preprocessor()))
    for chip in chips:
        assert_pixel_parity(clip.model_input(pre(chip)[None])[0], reference(Image.fromarray(chip)),
                            clip.model.visual.preprocess_cfg["std"])
    ours = clip.encode(torch.stack([pre(c) for c in chips]))["image"]
    with torch.no_grad():
        theirs = clip.model.encode_image(torch.stack([reference(Image.fromarray(c)) for c in chips]))
    cos = torch.nn.functional.cosine_similarity(ours, theirs)
    assert cos.min().item() > 0.999, cos


def test_clip_text_tower_and_logit_params(clip):
    import open_clip

    texts = ["a photo of a person named John", "a photo of a person named Mary"]
    emb = clip.encode_text(texts)
    assert emb.shape == (2, 16) and emb.dtype == np.float32
    with torch.no_grad():
        reference = clip.model.encode_text(open_clip.get_tokenizer("ViT-B-32")(texts)).numpy()
    np.testing.assert_allclose(emb, reference, atol=1e-5, rtol=1e-5)
    assert not np.allclose(emb[0], emb[1])
    params = clip.text_logit_params()
    assert params["logit_scale"] == pytest.approx(50.0, rel=1e-5)
    assert params["logit_bias"] is None
    with pytest.raises(TypeError, match="list of strings"):
        clip.encode_text("John")


def test_clip_bf16_autocast_close_to_fp32(weights, clip, chips):
    bf16 = load_encoder("clip-vit-b-32", weights=str(weights["open_clip"]), device="cpu", precision="bf16")
    x = batch_of(clip, chips)
    low, full = bf16.encode(x)["image"], clip.encode(x)["image"]
    assert low.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(low, full).min().item() > 0.98
    assert bf16.runtime()["precision"] == "bf16" and bf16.resolved_spec()["precision"] == "bf16"


def test_clip_missing_weights_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="--weights"):
        load_encoder("clip-vit-b-32", device="cpu")  # tests run offline: no cached OpenAI weights
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="no \\*.safetensors"):
        load_encoder("clip-vit-b-32", weights=str(tmp_path), device="cpu")


def test_cuda_device_needs_cuda(weights):
    if torch.cuda.is_available():
        enc = load_encoder("clip-vit-b-32", weights=str(weights["open_clip"]), device="cuda")
        assert enc.runtime()["device"].startswith("cuda")
    else:
        with pytest.raises(DeviceError, match="no CUDA device"):
            load_encoder("clip-vit-b-32", weights=str(weights["open_clip"]), device="cuda")


# ------------------------------------------------------------------ timm


def test_resnet_pooled_equals_the_saved_model(resnet, chips):
    x = batch_of(resnet, chips)
    out = resnet.encode(x)
    assert set(out) == {"pooled"} and out["pooled"].shape == (2, 256)
    reference_model = others.tiny_resnet50(seed=0, num_classes=10)
    with torch.no_grad():
        y = resnet.model_input(x)
        reference = reference_model.forward_head(reference_model.forward_features(y), pre_logits=True)
    torch.testing.assert_close(out["pooled"], reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(out["pooled"], resnet.encode(x)["pooled"])


def test_resnet_resolved_spec_matches_timm_data_config(resnet, weights):
    import timm.data

    spec = resnet.resolved_spec()
    cfg = timm.data.resolve_data_config({}, model=resnet.model)
    p = spec["preprocessing"]
    assert p["source"] == "timm-data-config"
    assert p["crop"] == list(cfg["input_size"][1:]) == [224, 224]
    assert p["resize_to"] == int(224 // cfg["crop_pct"]) == 235  # a1_in1k: crop_pct 0.95
    assert p["interpolation"] == cfg["interpolation"]
    assert p["mean"] == pytest.approx(list(cfg["mean"])) and p["std"] == pytest.approx(list(cfg["std"]))
    assert spec["views"] == {"pooled": 256} and spec["architecture"] == "resnet50"
    d = weights["timm"]
    assert spec["weights"]["sha256"] == sha256_of_files([d / "config.json", d / "model.safetensors"])
    json.dumps(spec)


def test_resnet_preprocessing_parity_with_timm_transform(resnet, chips):
    import timm.data
    from PIL import Image

    cfg = timm.data.resolve_data_config({}, model=resnet.model)
    reference = timm.data.create_transform(**cfg)
    pre = resnet.preprocessor()
    for chip in chips:
        assert_pixel_parity(resnet.model_input(pre(chip)[None])[0], reference(Image.fromarray(chip)), cfg["std"])


def test_resnet_single_safetensors_file(tmp_path, chips):
    """A bare .safetensors file loads into spec.source's architecture (timm's test_resnet here)."""
    import dataclasses

    import timm
    from safetensors.torch import save_file

    from facestore.models import get_spec

    spec = dataclasses.replace(get_spec("resnet50"), source="test_resnet")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    for weights in (path, tmp_path):  # the file, or a folder holding exactly one
        enc = load_encoder(spec, weights=str(weights), device="cpu", precision="fp32")
        x = batch_of(enc, chips[:1])
        with torch.no_grad():
            reference = model.forward_head(model.forward_features(enc.model_input(x)), pre_logits=True)
        out = enc.encode(x)["pooled"]
        assert out.shape == (1, model.num_features)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
        assert enc.resolved_spec()["weights"]["sha256"] == sha256_of_files([path])
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    path.unlink()
    with pytest.raises(WeightsNotFoundError, match="never unpickles"):
        load_encoder("resnet50", weights=str(tmp_path), device="cpu")


# ------------------------------------------------------------------ random_vit


def test_random_vit_is_seeded_and_recorded(chips):
    a = load_encoder("random-vit-tiny", device="cpu", precision="fp32")
    b = load_encoder("random-vit-tiny", device="cpu", precision="fp32")
    c = load_encoder("random-vit-tiny", device="cpu", precision="fp32", options={"seed": 1})
    x = batch_of(a, chips)
    out_a, out_b, out_c = a.encode(x)["cls"], b.encode(x)["cls"], c.encode(x)["cls"]
    assert out_a.shape == (2, 192)
    assert torch.equal(out_a, out_b) and not torch.allclose(out_a, out_c)
    sa, sc = a.resolved_spec(), c.resolved_spec()
    assert sa == b.resolved_spec()
    assert sa["weights"]["seed"] == 0 and sc["weights"]["seed"] == 1 and sc["options"]["seed"] == 1
    assert sa["weights"]["state_dict_sha256"] != sc["weights"]["state_dict_sha256"]
    assert sa["preprocessing"]["source"] == "timm-data-config"
    with pytest.raises(ValueError, match="takes no weights"):
        load_encoder("random-vit-tiny", weights="somewhere", device="cpu")


# ------------------------------------------------------------------ SupCon


def test_supcon_checkpoint_round_trips(weights, chips):
    from facestore.models.timm_family import load_supcon_checkpoint

    d = weights["supcon"]
    config = json.loads((d / "supcon_config.json").read_text())
    assert config["format"] == "facestore-supcon" and config["version"] == 1
    assert config["timm_model"] == "resnet50" and config["proj_layers"] == [256, 32, 8]
    assert config["extra"]["note"] == "tiny random test model"
    encoder, projector, loaded = load_supcon_checkpoint(d)
    assert loaded == config
    original = others.tiny_resnet50(seed=0, num_classes=0)
    for k, v in original.state_dict().items():
        assert torch.equal(encoder.state_dict()[k], v), k

    enc = load_encoder("supcon-resnet50", weights=str(d), device="cpu", precision="fp32")
    x = batch_of(enc, chips)
    out = enc.encode(x)
    assert out["embedding"].shape == (2, 256) and out["projection"].shape == (2, 8)
    with torch.no_grad():
        emb = original.forward_head(original.forward_features(enc.model_input(x)), pre_logits=True)
        torch.testing.assert_close(out["embedding"], emb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["projection"], projector(emb), atol=1e-5, rtol=1e-5)
    spec = enc.resolved_spec()
    assert spec["views"] == {"embedding": 256, "projection": 8}
    assert spec["preprocessing"]["resize_to"] == 235 and spec["preprocessing"]["source"] == "supcon-checkpoint"
    assert spec["training"] == config["extra"]


def test_supcon_rejects_bad_inputs(tmp_path):
    from facestore.models.spec import Preprocessing
    from facestore.models.timm_family import save_supcon_checkpoint

    encoder = others.tiny_resnet50(num_classes=0)
    odd = torch.nn.Sequential(torch.nn.Linear(256, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    with pytest.raises(ValueError, match="Sequential\\(Linear, ReLU"):
        save_supcon_checkpoint(tmp_path / "x", encoder=encoder, projector=odd, timm_model="resnet50",
                               preprocessing=Preprocessing(size=(224, 224), resize="squash"), extra={})
    good = torch.nn.Sequential(torch.nn.Linear(256, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(ValueError, match="does not rebuild this encoder"):
        save_supcon_checkpoint(tmp_path / "y", encoder=encoder, projector=good, timm_model="resnet50",
                               preprocessing=Preprocessing(size=(224, 224), resize="squash"), extra={},
                               model_args={"num_classes": 0})
    assert not (tmp_path / "y").exists()
    with pytest.raises(WeightsNotFoundError, match="probes supcon"):
        load_encoder("supcon-resnet50", device="cpu")
    with pytest.raises(WeightsNotFoundError, match="supcon_config.json"):
        load_encoder("supcon-resnet50", weights=str(tmp_path), device="cpu")

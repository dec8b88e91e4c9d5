"""The transformers families (DINOv2, DINOv3, SigLIP) through ``load_encoder(name, weights=dir)``.

Every registry name of these families loads a tiny random model of its real architecture saved
with ``save_pretrained`` (tests/tiny/hf.py), through the same code path as real weights.
"""

from __future__ import annotations

import json
import pickle
import shutil
import types

import numpy as np
import pytest
import torch

from facestore.errors import DeviceError, WeightsNotFoundError
from facestore.models import get_spec, list_models, load_encoder
from facestore.models.base import TextTowerError
from facestore.models.hf_vit import from_pretrained, resolve_precision, weights_identity
from facestore.models.preprocess import ImagePreprocessor, PixelPreprocessor, from_hf_processor
from tests.tiny.hf import make_weights

FAMILIES = ("dinov2", "dinov3", "siglip")
NAMES = [n for n in list_models() if get_spec(n).family in FAMILIES]
TINY_DIM = 32  # hidden size of every tiny model in tests/tiny/hf.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny weights dir per family, built once for the module."""
    root = tmp_path_factory.mktemp("tiny_hf")
    first = {}
    for name in NAMES:
        first.setdefault(get_spec(name).family, name)
    return {family: make_weights(get_spec(name), root) for family, name in first.items()}


def _weights(tiny, name):
    return str(tiny[get_spec(name).family])


@pytest.fixture(scope="module")
def chips():
    """Four 512x512 uint8 RGB chips with smooth structure plus noise (deterministic)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512] / 511.0
    out = []
    for i in range(4):
        base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * (100 + 40 * i)
        out.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return out


def _batch(encoder, chips):
    pre = encoder.preprocessor()
    return encoder.collate([pre(c) for c in chips])


@pytest.fixture(scope="module")
def encoders(tiny):
    """fp32 CPU encoders, one per family (loaded once)."""
    names = {"dinov2": "dinov2-small", "dinov3": "dinov3-vitb16", "siglip": "siglip-base"}
    return {f: load_encoder(n, weights=str(tiny[f]), device="cpu", precision="fp32") for f, n in names.items()}


def test_registry_names_covered():
    assert {"dinov2-small", "dinov2-giant", "dinov3-vits16", "dinov3-vitb16", "dinov3-vitl16", "siglip-base"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_name_loads_and_encodes_all_views(tiny, chips, name):
    spec = get_spec(name)
    enc = load_encoder(name, weights=_weights(tiny, name), device="cpu", precision="fp32")
    out = enc.encode(_batch(enc, chips[:2]))
    assert set(out) == set(spec.view_dims)
    for view, vec in out.items():
        assert vec.shape == (2, TINY_DIM) and vec.dtype == torch.float32 and vec.device.type == "cpu"
        assert torch.isfinite(vec).all()
    rs = enc.resolved_spec()
    # The tiny model's real dims are recorded; the registry's nominal dims stay on record beside them.
    assert rs["views"] == {v: TINY_DIM for v in spec.view_dims}
    assert rs["registry_views"] == spec.view_dims
    assert rs["name"] == name and rs["source"] == spec.source and rs["family"] == spec.family
    json.dumps(rs)  # JSON-able: it goes into store attrs


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_across_calls_and_loads(tiny, encoders, chips, family):
    enc = encoders[family]
    batch = _batch(enc, chips)
    first, second = enc.encode(batch), enc.encode(batch)
    again = load_encoder(enc.spec.name, weights=str(tiny[family]), device="cpu", precision="fp32")
    third = again.encode(_batch(again, chips))
    for view in first:
        assert torch.equal(first[view], second[view])
        assert torch.equal(first[view], third[view])
    # Different images give different vectors (the forward is not constant).
    assert not torch.allclose(first[enc.spec.default_view][0], first[enc.spec.default_view][1])


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_close_to_fp32(tiny, encoders, chips, family):
    fp32 = encoders[family]
    bf16 = load_encoder(fp32.spec.name, weights=str(tiny[family]), device="cpu", precision="bf16")
    assert bf16.runtime() == {"device": "cpu", "precision": "bf16", "dtype": "torch.bfloat16",
                              "model_class": type(fp32.model).__name__}
    assert bf16.resolved_spec()["precision"] == "bf16" and fp32.resolved_spec()["precision"] == "fp32"
    batch = _batch(fp32, chips)
    a, b = fp32.encode(batch), bf16.encode(batch)
    for view in a:
        assert b[view].dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(a[view], b[view], dim=1)
        assert cos.min().item() > 0.99, (view, cos)
    if family == "siglip":
        t32 = torch.from_numpy(fp32.encode_text(["a photo of Emma.", "this is Kwame."]))
        t16 = torch.from_numpy(bf16.encode_text(["a photo of Emma.", "this is Kwame."]))
        assert torch.nn.functional.cosine_similarity(t32, t16, dim=1).min().item() > 0.99


@pytest.mark.parametrize("family", FAMILIES)
def test_resolved_spec_records_processor_weights_precision_versions(tiny, encoders, family):
    from transformers import AutoImageProcessor

    enc = encoders[family]
    rs = enc.resolved_spec()
    processor = AutoImageProcessor.from_pretrained(str(tiny[family]))
    assert rs["preprocessing"] == from_hf_processor(processor).to_dict()
    assert rs["preprocessing"]["source"] == "hf-processor"
    assert rs["preprocessing"]["mean"] == list(processor.image_mean)
    assert rs["preprocessing"]["std"] == list(processor.image_std)
    w = rs["weights"]
    assert w["kind"] == "local" and w["path_name"] == tiny[family].name and len(w["sha256"]) == 64
    assert "model.safetensors" in w["files"] and "config.json" in w["files"]
    # Stable across loads and independent of the device string.
    again = load_encoder(enc.spec.name, weights=str(tiny[family]), device="auto", precision="fp32")
    assert again.resolved_spec() == rs
    assert set(rs["versions"]) >= {"torch", "transformers"} and rs["versions"]["transformers"] != "not installed"
    assert rs["precision"] == "fp32"
    # The worker-side preprocessor is picklable and produces the model's pixels, not normalised:
    # uint8 where the reference resizes the uint8 image, float32 for DINOv3 (it resizes floats).
    pre = pickle.loads(pickle.dumps(enc.preprocessor()))
    assert isinstance(pre, PixelPreprocessor)
    pixels = pre(np.zeros((512, 512, 3), np.uint8))
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == (torch.float32 if family == "dinov3" else torch.uint8) and pre.output_dtype == str(
        pixels.dtype).removeprefix("torch.")
    # Normalised on the device by the encoder: the same bits as the one-call ImagePreprocessor.
    chip = np.random.default_rng(3).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    one_call = ImagePreprocessor(enc.preprocessing, resize_dtype=pre.resize_dtype)(chip)
    assert torch.equal(enc.model_input(pre(chip)[None])[0], one_call)


def test_weights_sha256_changes_with_the_weights(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tiny["dinov2"]
    copy = shutil.copytree(src, tmp_path / src.name)
    same = load_encoder("dinov2-small", weights=str(copy), device="cpu", precision="fp32")
    assert same.resolved_spec()["weights"]["sha256"] == weights_identity(get_spec("dinov2-small"), src)["sha256"]
    tensors = load_file(copy / "model.safetensors")
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    changed = load_encoder("dinov2-small", weights=str(copy), device="cpu", precision="fp32")
    assert changed.resolved_spec()["weights"]["sha256"] != same.resolved_spec()["weights"]["sha256"]


def test_missing_processor_config_falls_back_to_registry(tiny, tmp_path):
    copy = shutil.copytree(tiny["dinov3"], tmp_path / "no_processor")
    (copy / "preprocessor_config.json").unlink()
    enc = load_encoder("dinov3-vitb16", weights=str(copy), device="cpu", precision="fp32")
    pre = enc.resolved_spec()["preprocessing"]
    expected = get_spec("dinov3-vitb16").preprocessing.to_dict()
    assert pre["source"] == "registry"
    assert {k: v for k, v in pre.items() if k != "source"} == {k: v for k, v in expected.items() if k != "source"}


def test_dinov2_cls_is_first_token(encoders, chips):
    enc = encoders["dinov2"]
    batch = _batch(enc, chips[:2])
    out = enc.encode(batch)
    with torch.no_grad():
        hidden = enc.model(pixel_values=enc.model_input(batch)).last_hidden_state
    assert hidden.shape[1] == 1 + (224 // 14) ** 2
    torch.testing.assert_close(out["cls"], hidden[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["patch_mean"], hidden[:, 1:].mean(dim=1), rtol=0, atol=1e-6)


def test_dinov3_patch_mean_excludes_register_tokens(encoders, chips):
    enc = encoders["dinov3"]
    assert enc.num_register_tokens == 4 and enc.resolved_spec()["num_register_tokens"] == 4
    batch = _batch(enc, chips[:2])
    out = enc.encode(batch)
    with torch.no_grad():
        hidden = enc.model(pixel_values=enc.model_input(batch)).last_hidden_state
    n_patches = (224 // 16) ** 2
    assert hidden.shape[1] == 1 + 4 + n_patches  # [CLS, 4 registers, patches]
    torch.testing.assert_close(out["cls"], hidden[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["patch_mean"], hidden[:, 5:].mean(dim=1), rtol=0, atol=1e-6)
    # Including the registers would give a measurably different vector.
    assert not torch.allclose(out["patch_mean"], hidden[:, 1:].mean(dim=1), atol=1e-4)


def test_siglip_views_match_the_model(encoders, chips):
    enc = encoders["siglip"]
    batch = _batch(enc, chips[:3])
    out = enc.encode(batch)
    with torch.no_grad():
        ref = enc.model.get_image_features(pixel_values=enc.model_input(batch))
        vision = enc.model.vision_model(pixel_values=enc.model_input(batch))
    torch.testing.assert_close(out["image"], ref.pooler_output, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["pooled"], vision.last_hidden_state.mean(dim=1), rtol=0, atol=1e-6)
    assert not torch.allclose(out["image"], out["pooled"], atol=1e-3)


def test_siglip_text_embeddings(tiny, encoders):
    from transformers import AutoTokenizer

    enc = encoders["siglip"]
    prompts = ["a photo of Emma.", "a photo of a person named Noah.", "this is Zoë."]
    emb = enc.encode_text(prompts)
    assert isinstance(emb, np.ndarray) and emb.dtype == np.float32 and emb.shape == (3, TINY_DIM)
    np.testing.assert_array_equal(emb, enc.encode_text(prompts))
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)  # stored unnormalised
    assert not np.allclose(emb[0], emb[1])
    # Same as the reference path: AutoTokenizer from the weights dir, max-length padding, no mask.
    tok = AutoTokenizer.from_pretrained(str(tiny["siglip"]))
    assert type(tok).__name__ == "SiglipTokenizer"
    ids = tok(prompts, padding="max_length", max_length=enc.model.config.text_config.max_position_embeddings,
              truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = enc.model.get_text_features(input_ids=ids).pooler_output
    np.testing.assert_allclose(emb, ref.numpy(), rtol=0, atol=1e-6)
    # Batch composition does not change a prompt's embedding (fixed-length padding).
    np.testing.assert_allclose(enc.encode_text(prompts[:1])[0], emb[0], rtol=0, atol=1e-6)
    assert enc.resolved_spec()["text_tokenization"] == {"padding": "max_length", "max_length": 16,
                                                        "attention_mask": False}
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode_text("a photo of Emma.")


def test_siglip_logit_params(encoders):
    params = encoders["siglip"].text_logit_params()
    # tests/tiny/hf.py sets logit_scale=2.0 (stored in log space) and logit_bias=-3.0.
    assert params["logit_scale"] == pytest.approx(np.exp(2.0), rel=1e-6)
    assert params["logit_bias"] == pytest.approx(-3.0)


def test_dino_has_no_text_tower(encoders):
    with pytest.raises(TextTowerError, match="siglip-base"):
        encoders["dinov2"].encode_text(["a photo of Emma."])
    with pytest.raises(TextTowerError):
        encoders["dinov3"].text_logit_params()


def _raise_offline(*args, **kwargs):
    # What transformers raises offline with nothing cached (utils/hub.py).
    raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                  "in the cached files.")


def test_offline_without_weights_names_hub_id_and_weights_flag(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _raise_offline)
    for name in ("dinov2-base", "siglip-base"):
        with pytest.raises(WeightsNotFoundError) as info:
            load_encoder(name, device="cpu")
        msg = str(info.value)
        assert get_spec(name).source in msg and "--weights" in msg and "HF_HUB_OFFLINE" in msg


def test_gated_repo_says_accept_licence_login_or_weights(monkeypatch):
    import transformers
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id, **kwargs):
        response = types.SimpleNamespace(headers={}, request=None)  # what GatedRepoError reads
        cause = GatedRepoError(f"401 Client Error. Cannot access gated repo for url {repo_id}", response=response)
        # transformers wraps it like this (utils/hub.py).
        raise OSError(f"You are trying to access a gated repo.\nMake sure to have access to it at "
                      f"https://huggingface.co/{repo_id}.") from cause

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", gated)
    with pytest.raises(WeightsNotFoundError) as info:
        load_encoder("dinov3-vitb16", device="cpu")
    msg = str(info.value)
    assert "https://huggingface.co/facebook/dinov3-vitb16-pretrain-lvd1689m" in msg
    assert "hf auth login" in msg and "--weights" in msg and "licence" in msg


def test_bad_weights_dirs(tiny, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist.*save_pretrained"):
        load_encoder("dinov2-small", weights=str(tmp_path / "missing"), device="cpu")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WeightsNotFoundError, match="not a directory"):
        load_encoder("dinov2-small", weights=str(tmp_path / "file"), device="cpu")
    with pytest.raises(WeightsNotFoundError, match="'siglip' checkpoint"):
        load_encoder("dinov2-small", weights=str(tiny["siglip"]), device="cpu")
    pickled_only = shutil.copytree(tiny["dinov2"], tmp_path / "bin_only")
    (pickled_only / "model.safetensors").unlink()
    (pickled_only / "pytorch_model.bin").write_bytes(b"never read")
    with pytest.raises(WeightsNotFoundError, match=r"no \*\.safetensors.*pytorch_model\.bin.*never unpickles"):
        load_encoder("dinov2-small", weights=str(pickled_only), device="cpu")


def test_hub_loads_pass_revision_and_never_remote_code(monkeypatch):
    import dataclasses

    import huggingface_hub

    seen = {}

    def loader(target, **kwargs):
        seen.update(kwargs, target=target)
        return "loaded"

    spec = dataclasses.replace(get_spec("dinov2-small"), revision="abc123")
    assert from_pretrained(loader, spec, None, use_safetensors=True) == "loaded"
    assert seen == {"target": "facebook/dinov2-small", "revision": "abc123", "trust_remote_code": False,
                    "use_safetensors": True}
    cached = "/cache/models--facebook--dinov2-small/snapshots/0123abcd/config.json"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, revision: cached)
    assert weights_identity(get_spec("dinov2-small"), None) == {
        "kind": "hub", "id": "facebook/dinov2-small", "revision": "0123abcd"}


def test_device_and_precision_errors(tiny, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA"):
        load_encoder("dinov2-small", weights=str(tiny["dinov2"]), device="cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        load_encoder("dinov2-small", weights=str(tiny["dinov2"]), device="tpu")
    with pytest.raises(DeviceError, match="CUDA-only"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="takes no options"):
        load_encoder("siglip-base", weights=str(tiny["siglip"]), device="cpu", options={"arcface_align": "center"})

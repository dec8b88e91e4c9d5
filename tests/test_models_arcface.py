"""ArcFace family through ``load_encoder("arcface-r50", weights=dir)`` with a tiny exported ONNX.

The references are insightface's own API: ``ArcFaceONNX.get_feat`` on BGR 112x112 crops (which
swaps to RGB inside ``cv2.dnn.blobFromImages``) and ``face_align.norm_crop`` at the landmarks
the fake SCRFD detector reports.
"""

from __future__ import annotations

import json
import pickle
import warnings

import cv2
import numpy as np
import pytest
import torch

from facestore.errors import DeviceError, PreprocessFailure, WeightsNotFoundError
from facestore.models import load_encoder
from facestore.models.arcface import PAD_FRACTION, find_pack_files
from tests.tiny import others


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return others.make_arcface(tmp_path_factory.mktemp("tiny_arcface"))


@pytest.fixture(scope="module")
def chips():
    return others.face_chips()


@pytest.fixture(scope="module")
def reference(pack):
    """insightface's recogniser wrapper over the same ONNX: the reference run."""
    import onnxruntime
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = str(pack / "w600k_r50.onnx")
    return ArcFaceONNX(model_file=path, session=onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]))


@pytest.fixture(scope="module")
def detect(pack):
    return load_encoder("arcface-r50", weights=str(pack), device="cpu")


@pytest.fixture(scope="module")
def center(pack):
    return load_encoder("arcface-r50", weights=str(pack), device="cpu", options={"arcface_align": "center"})


def embed(encoder, chips):
    pre = encoder.preprocessor()
    return encoder.encode(encoder.collate([pre(c) for c in chips]))["embedding"]


def norm_crop(bgr, kps):
    from insightface.utils import face_align

    with warnings.catch_warnings():
        # skimage >= 0.26 deprecates SimilarityTransform.estimate, which norm_crop calls.
        warnings.filterwarnings("ignore", message=".*estimate.*deprecated", category=FutureWarning)
        return face_align.norm_crop(bgr, kps, image_size=112)


def test_center_path_matches_direct_onnxruntime_run(center, reference, chips):
    """Centre crop = central half of the chip resized to 112, fed as insightface feeds BGR crops."""
    out = embed(center, chips)
    assert out.shape == (2, 512) and out.dtype == torch.float32
    crops = [cv2.resize(np.ascontiguousarray(c[128:384, 128:384, ::-1]), (112, 112), interpolation=cv2.INTER_LINEAR)
             for c in chips]
    expected = reference.get_feat(crops)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-3, rtol=1e-3)
    assert not np.allclose(out[0].numpy(), out[1].numpy())


def test_detect_path_aligns_with_norm_crop_at_the_detected_landmarks(detect, reference, chips):
    pre = detect.preprocessor()
    kps = others.fake_landmarks_on_chip(512, pad_fraction=PAD_FRACTION)
    for chip in chips:
        np.testing.assert_allclose(pre.landmarks(chip), kps, atol=1e-3)
    out = embed(detect, chips)
    expected = reference.get_feat([norm_crop(np.ascontiguousarray(c[..., ::-1]), kps) for c in chips])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, rtol=1e-4)
    # The aligned crop is not the centre crop: the geometry really comes from the detector.
    assert not torch.equal(pre(chips[0]), detect_center_tensor(detect, chips[0]))


def detect_center_tensor(encoder, chip):
    from facestore.models.arcface import ArcFacePreprocessor

    p = encoder.preprocessor()
    return ArcFacePreprocessor(align="center", no_face="record", center_fraction=p.center_fraction,
                               detector_path=None, input_mean=p.input_mean, input_std=p.input_std)(chip)


def test_channel_order_is_insightface_s(detect, reference, chips):
    """Our RGB chip gives get_feat(BGR crop); a channel-swapped chip gives a different vector."""
    chip = chips[1]  # the colour photo (the Tom Hanks photo is grey: swapping would change nothing)
    assert np.abs(chip[..., 0].astype(int) - chip[..., 2]).mean() > 5
    x = embed(detect, [chip])
    swapped = embed(detect, [np.ascontiguousarray(chip[..., ::-1])])
    cos = torch.nn.functional.cosine_similarity(x, swapped).item()
    assert cos < 0.999, cos
    kps = others.fake_landmarks_on_chip(512, pad_fraction=PAD_FRACTION)
    wrong = reference.get_feat([norm_crop(chip, kps)])  # RGB handed over as if it were BGR
    assert not np.allclose(x.numpy(), wrong, atol=1e-3)
    np.testing.assert_allclose(swapped.numpy(), wrong, atol=1e-4, rtol=1e-4)


def test_no_face_is_recorded_or_falls_back_to_center(pack, detect, center):
    dark = np.full((512, 512, 3), 40, np.uint8)  # the fake detector sees no face on a dark chip
    with pytest.raises(PreprocessFailure) as info:
        detect.preprocessor()(dark)
    assert info.value.reason == "no_face"
    assert detect.resolved_spec()["alignment"]["no_face_fallback"] is None

    fallback = load_encoder("arcface-r50", weights=str(pack), device="cpu", options={"no_face": "center"})
    torch.testing.assert_close(fallback.preprocessor()(dark), center.preprocessor()(dark))
    spec = fallback.resolved_spec()
    assert spec["options"]["no_face"] == "center" and spec["alignment"]["no_face_fallback"] == "center crop"


def test_batched_run_equals_per_image_and_fixed_batch_loops(tmp_path, detect, chips):
    batch = embed(detect, chips + chips[:1])
    singles = torch.cat([embed(detect, [c]) for c in chips + chips[:1]])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=1e-5)
    assert detect.dynamic_batch and "one session.run per batch" in detect.runtime()["batching"]

    fixed_pack = others.make_arcface(tmp_path, dynamic_batch=False)
    fixed = load_encoder("arcface-r50", weights=str(fixed_pack), device="cpu")
    assert not fixed.dynamic_batch and "per image" in fixed.runtime()["batching"]
    torch.testing.assert_close(embed(fixed, chips + chips[:1]), batch, atol=1e-5, rtol=1e-5)


def test_preprocessor_pickles_and_creates_its_detector_in_workers(detect, chips):
    pre = detect.preprocessor()
    expected = pre(chips[0])  # creates this process's detector session
    assert expected.dtype == torch.uint8 and expected.shape == (3, 112, 112)  # normalised in encode
    main = pre.runtime_info()
    assert main["process"] == "main process" and main["providers"] == ["CPUExecutionProvider"]
    assert main["intra_op_threads"] == 0  # onnxruntime's own pool in the main process
    clone = pickle.loads(pickle.dumps(pre))
    assert clone._detector is None and clone.runtime_info() is None
    torch.testing.assert_close(clone(chips[0]), expected)

    class Chips(torch.utils.data.Dataset):
        def __len__(self):
            return len(chips)

        def __getitem__(self, i):
            return pre(chips[i]), pre.runtime_info()

    loader = torch.utils.data.DataLoader(Chips(), batch_size=None, num_workers=1)
    items = list(loader)
    torch.testing.assert_close(torch.stack([x for x, _ in items]), torch.stack([pre(c) for c in chips]))
    # In a decode worker the detector session gets one intra-op thread (one worker per core).
    info = items[0][1]
    assert info == {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1, "process": "decode worker"}


def test_resolved_spec_and_runtime(pack, detect, center):
    spec = detect.resolved_spec()
    json.dumps(spec)
    assert spec["views"] == {"embedding": 512}
    p = spec["preprocessing"]
    assert p["size"] == [112, 112] and p["resize"] == "aligned"
    # (x / 255 - 0.5) / 0.5 == (x - 127.5) / 127.5
    assert p["mean"] == pytest.approx([0.5] * 3) and p["std"] == pytest.approx([0.5] * 3)
    assert spec["alignment"]["method"] == "detect+norm_crop" and center.resolved_spec()["alignment"]["method"] == "center"
    assert spec["weights"]["detector"] == "det_10g.onnx" and center.resolved_spec()["weights"]["detector"] is None
    assert spec == load_encoder("arcface-r50", weights=str(pack), device="cpu").resolved_spec()
    assert spec["precision"] == "fp32" and spec["versions"]["onnxruntime"]
    rt = detect.runtime()
    assert rt["providers"] == ["CPUExecutionProvider"] and rt["detector_device"] == "cpu"
    assert center.runtime()["detector_device"] is None
    with pytest.raises(ValueError, match="float32"):
        load_encoder("arcface-r50", weights=str(pack), device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="arcface_align"):
        load_encoder("arcface-r50", weights=str(pack), device="cpu", options={"arcface_align": "sideways"})


def test_cuda_without_the_cuda_provider_is_an_error(pack):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        enc = load_encoder("arcface-r50", weights=str(pack), device="cuda")
        assert "CUDAExecutionProvider" in enc.runtime()["providers"]
    else:
        with pytest.raises(DeviceError, match="pip uninstall -y onnxruntime onnxruntime-gpu"):
            load_encoder("arcface-r50", weights=str(pack), device="cuda")


def test_missing_weights_say_how_to_get_them(tmp_path, pack):
    with pytest.raises(WeightsNotFoundError, match="--weights"):
        load_encoder("arcface-r50", weights=str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(WeightsNotFoundError, match="non-commercial"):
        find_pack_files(None, default_dir=tmp_path / "models" / "buffalo_l")
    only_rec = tmp_path / "rec_only"
    only_rec.mkdir()
    (only_rec / "w600k_r50.onnx").write_bytes((pack / "w600k_r50.onnx").read_bytes())
    with pytest.raises(WeightsNotFoundError, match="det_10g.onnx"):
        load_encoder("arcface-r50", weights=str(only_rec), device="cpu")
    enc = load_encoder("arcface-r50", weights=str(only_rec), device="cpu", options={"arcface_align": "center"})
    assert enc.resolved_spec()["weights"]["recogniser"] == "w600k_r50.onnx"

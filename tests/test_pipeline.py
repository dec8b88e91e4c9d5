"""The build pipeline of issue 14: vectors equal the reference pipelines, workers and other models change no bit,
settings that change bits are recorded and a resume with others is refused, the writer thread, cores and /dev/shm."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import facestore
from facestore.build import (
    DecodeTask,
    _ModelRun,
    build_store,
    cgroup_cpu_limit,
    fit_shared_memory,
    plan_tasks,
    usable_cores,
)
from facestore.errors import BuildError, SpecMismatchError
from facestore.models import load_encoder
from tests.conftest import write_chips
from tests.tiny import make_weights

# The families of the registry, one name each (ArcFace's alignment: the centre crop; detection is
# covered against insightface in tests/test_models_arcface.py and through workers below).
FAMILY_MODELS = ("dinov2-small", "dinov3-vits16", "siglip-base", "clip-vit-b-32", "resnet50", "arcface-r50",
                 "pixels-32", "random-vit-tiny")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path | None]:
    root = tmp_path_factory.mktemp("pipeline_weights")
    names = set(FAMILY_MODELS) | {"dinov2-base"}
    return {m: make_weights(m, root) for m in sorted(names)}


def _w(weights, models):
    return {m: weights[m] for m in models if weights[m] is not None}


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    """Six 96x80 chips (non-square: the shortest-edge resize and crop paths run) as 90%-quality JPEGs."""
    root = tmp_path_factory.mktemp("pipeline_chips") / "chips"
    write_chips(root, {"Anna": {"p1": 2}, "Bob": {"p2": 2}, "Cleo": {"p3": 2}}, size=96, seed=11)
    for p in root.rglob("*.jpg"):
        Image.open(p).crop((0, 0, 80, 96)).save(p, quality=90)
    return root


def _pil(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_vectors_equal_the_reference_pipelines(chips, weights, tmp_path):
    """One build of every family (uint8 pixels, normalised in the encoder) vs each library's own pipeline on PIL images."""
    import open_clip.transform
    import timm.data
    from transformers import AutoImageProcessor

    store_path = tmp_path / "s"
    build_store(chips, store_path, list(FAMILY_MODELS), weights=_w(weights, FAMILY_MODELS), dtype="float32",
                chunk_rows=4, batch_size=3, workers=0, device="cpu", precision="fp32",
                options={"arcface_align": "center"}, progress=False)
    store = facestore.open_store(store_path)
    ids = store.index.image_ids
    images = [_pil(chips / i) for i in ids]

    def stored(model, view):
        X, got = store.load(model, view)
        assert np.array_equal(got, ids)
        return X

    enc = {m: load_encoder(m, weights=None if weights[m] is None else str(weights[m]), device="cpu",
                           precision="fp32", options={"arcface_align": "center"} if m == "arcface-r50" else None)
           for m in FAMILY_MODELS}
    with torch.no_grad():
        # transformers: the checkpoint's own processor; max abs <= 1e-5 on pixel values, so vectors agree tightly.
        for m in ("dinov2-small", "dinov3-vits16"):
            x = AutoImageProcessor.from_pretrained(str(weights[m]))(images=images, return_tensors="pt")["pixel_values"]
            hidden = enc[m].model(pixel_values=x).last_hidden_state
            patches = hidden[:, 1 + enc[m].num_register_tokens:]
            np.testing.assert_allclose(stored(m, "cls"), hidden[:, 0].numpy(), atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(stored(m, "patch_mean"), patches.mean(1).numpy(), atol=1e-4, rtol=1e-4)
        x = AutoImageProcessor.from_pretrained(str(weights["siglip-base"]))(images=images, return_tensors="pt")
        ref = enc["siglip-base"].model.get_image_features(pixel_values=x["pixel_values"])
        np.testing.assert_allclose(stored("siglip-base", "image"), ref.pooler_output.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(stored("siglip-base", "pooled"), ref.last_hidden_state.mean(1).numpy(),
                                   atol=1e-4, rtol=1e-4)
        # open_clip / timm: PIL-resized references within about one grey level: vectors within cosine 0.999.
        clip = enc["clip-vit-b-32"]
        tf = open_clip.transform.image_transform_v2(
            open_clip.transform.PreprocessCfg(**clip.model.visual.preprocess_cfg), is_train=False)
        ref = clip.model.encode_image(torch.stack([tf(im) for im in images])).numpy()
        assert _cos(stored("clip-vit-b-32", "image"), ref).min() > 0.999
        for m, view in (("resnet50", "pooled"), ("random-vit-tiny", "cls")):
            model = enc[m].model
            tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
            x = torch.stack([tf(im) for im in images])
            ref = model.forward_head(model.forward_features(x), pre_logits=True) if m == "resnet50" \
                else model.forward_features(x)[:, 0]
            assert _cos(stored(m, view), ref.numpy()).min() > 0.999, m
    # ArcFace: insightface's get_feat on BGR crops of the PIL-decoded chips (its own normalisation).
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    rec = ArcFaceONNX(model_file=str(weights["arcface-r50"] / "w600k_r50.onnx"), session=enc["arcface-r50"].session)
    crops = []
    for im in images:
        a = np.asarray(im)
        side = 0.5 * min(a.shape[:2])
        y0, x0 = (a.shape[0] - side) / 2, (a.shape[1] - side) / 2
        s = 112 / side
        m = np.array([[s, 0, s * (0.5 - x0) - 0.5], [0, s, s * (0.5 - y0) - 0.5]])
        crops.append(cv2.warpAffine(np.ascontiguousarray(a[..., ::-1]), m, (112, 112), borderValue=0.0))
    np.testing.assert_allclose(stored("arcface-r50", "embedding"), rec.get_feat(crops), atol=2e-3, rtol=1e-3)
    # pixels-32: exact area averages of PIL's pixels.
    np.testing.assert_allclose(stored("pixels-32", "pixels"),
                               np.stack([_area_32_any(chips / i) for i in ids]), atol=1e-6)


def _area_32_any(path: Path) -> np.ndarray:
    a = torch.from_numpy(np.asarray(_pil(path), dtype=np.float32)).permute(2, 0, 1)[None]
    return (torch.nn.functional.adaptive_avg_pool2d(a, (32, 32))[0] / 255).permute(1, 2, 0).reshape(-1).numpy()


def test_workers_and_shared_pixels_change_no_bit(chips, weights, tmp_path):
    """--workers 0 and --workers 2 give bitwise-identical stores; dinov2-small and -base share one preprocessing."""
    models = ["dinov2-small", "dinov2-base", "pixels-32", "arcface-r50"]
    reports = {}
    for w in (0, 2):
        reports[w] = build_store(chips, tmp_path / f"w{w}", models, weights=_w(weights, models), chunk_rows=4,
                                 batch_size=3, workers=w, device="cpu", progress=False)
    assert reports[2].pipeline["workers"] == 2 and reports[0].pipeline["workers"] == 0
    groups = reports[2].pipeline["preprocessing_groups"]
    assert ["dinov2-small", "dinov2-base"] in groups and len(groups) == 3  # one decode, three distinct pixel sets
    arc = {m.model: m for m in reports[2].models}["arcface-r50"]
    assert arc.runtime["detector_ran_on"] == ["CPUExecutionProvider"]  # what the workers' detector really ran on
    a, b = facestore.open_store(tmp_path / "w0"), facestore.open_store(tmp_path / "w2")
    for m in models:
        assert a.model_spec(m) == b.model_spec(m)
        np.testing.assert_array_equal(a.status(m), b.status(m))
        for view in a.views(m):
            np.testing.assert_array_equal(a.load(m, view, dtype=None)[0], b.load(m, view, dtype=None)[0])


class _Interrupt(RuntimeError):
    pass


def _interrupt_after(monkeypatch, n_chunks: int, log: list | None = None):
    """Make the store's writer fail after ``n_chunks`` commits, as a crash between chunks would."""
    from facestore.store.writer import ModelWriter

    real = ModelWriter.write_chunk
    calls = {"n": 0}

    def write_chunk(self, c, *args, **kwargs):
        if log is not None:
            log.append((threading.current_thread().name, self.model, c))
        calls["n"] += 1
        if calls["n"] > n_chunks:
            raise _Interrupt(f"simulated crash before chunk {c} of {self.model}")
        return real(self, c, *args, **kwargs)

    monkeypatch.setattr(ModelWriter, "write_chunk", write_chunk)
    return real


def _arrays(path: Path, model: str) -> dict[str, np.ndarray]:
    st = facestore.open_store(path)
    return {"status": st.status(model), **{v: st.load(model, v, dtype=None)[0] for v in st.views(model)}}


def test_resume_with_other_models_and_workers_is_bitwise_identical(chips, weights, tmp_path, monkeypatch):
    """A model's batches depend on its own pending rows only: resumed beside other models, it ends with the same bits."""
    dino = {"dinov2-small": weights["dinov2-small"]}
    build_store(chips, tmp_path / "clean", "dinov2-small", weights=dino, chunk_rows=2, batch_size=3, workers=0,
                progress=False)
    log: list = []
    real = _interrupt_after(monkeypatch, 1, log)
    with pytest.raises(BuildError, match="simulated crash.*run the same command again to resume"):
        build_store(chips, tmp_path / "killed", "dinov2-small", weights=dino, chunk_rows=2, batch_size=3, workers=0,
                    progress=False)
    # Every store write ran in the writer thread, in chunk order, and its error reached the build.
    assert [c for _, _, c in log] == [0, 1] and {t for t, _, _ in log} == {"facestore-writer_0"}
    status = facestore.open_store(tmp_path / "killed").status("dinov2-small")
    assert (status[:2] == 1).all() and (status[2:] == 0).all()  # chunk 0 committed, the rest pending
    monkeypatch.setattr("facestore.store.writer.ModelWriter.write_chunk", real)
    # Resume beside pixels-32, with workers and another decoder spelling: the same bits as the clean build.
    both = {"pixels-32": None, **dino}
    report = build_store(chips, tmp_path / "killed", list(both), weights=dino, chunk_rows=2, batch_size=3,
                         workers=2, decode="pil", progress=False)
    assert {m.model: m.rows_written for m in report.models} == {"pixels-32": 6, "dinov2-small": 4}
    clean, resumed = _arrays(tmp_path / "clean", "dinov2-small"), _arrays(tmp_path / "killed", "dinov2-small")
    for k in clean:
        np.testing.assert_array_equal(resumed[k], clean[k], err_msg=k)


def test_settings_that_change_bits_are_recorded_and_refused_on_resume(chips, weights, tmp_path):
    import shutil

    data = shutil.copytree(chips, tmp_path / "data")
    dino = {"dinov2-small": weights["dinov2-small"]}
    build_store(data, tmp_path / "s", ["dinov2-small", "pixels-32"], weights=dino, chunk_rows=4, batch_size=3,
                workers=0, progress=False)
    store = facestore.open_store(tmp_path / "s")
    pipe = store.model_spec("dinov2-small")["pipeline"]
    assert pipe["batch_size"] == 3 and pipe["decode"] == "full" and pipe["device_type"] == "cpu"
    assert "cut every batch_size" in pipe["batching"]
    # pixels-32 is exact per row: its batch size and device are not part of its bits.
    assert store.model_spec("pixels-32")["pipeline"] == {"decode": "full"}
    write_chips(data, {"Dan": {"p9": 2}}, size=96, seed=5)  # new images: the builds below have work to do
    with pytest.raises(SpecMismatchError, match=r"spec\.pipeline\.batch_size: 3 -> 5"):
        build_store(data, tmp_path / "s", "dinov2-small", weights=dino, chunk_rows=4, batch_size=5, workers=0,
                    progress=False)
    with pytest.raises(SpecMismatchError, match=r"spec\.pipeline\.decode: 'full' -> 'draft'"):
        build_store(data, tmp_path / "s", "pixels-32", chunk_rows=4, workers=0, decode="draft", progress=False)
    # Another batch size for the exact model is accepted: it changes no bit.
    report = build_store(data, tmp_path / "s", "pixels-32", chunk_rows=4, batch_size=7, workers=0, progress=False)
    assert report.models[0].rows_written == 2
    X, ids = facestore.open_store(tmp_path / "s").load("pixels-32", dtype=np.float32)
    np.testing.assert_allclose(X, np.stack([_area_32_any(data / i) for i in ids]), atol=2e-3)  # float16 store


def test_draft_decoding_is_used_and_records_its_size(tmp_path, weights):
    data = tmp_path / "big"
    write_chips(data, {"Anna": {"p1": 2}, "Bob": {"p2": 2}}, size=512, seed=3)  # 512 px: 1/2 scale keeps 256
    kw = dict(weights=_w(weights, ["dinov2-small"]), chunk_rows=4, workers=0, dtype="float32", progress=False)
    report = build_store(data, tmp_path / "d", ["pixels-32", "dinov2-small"], decode="draft", **kw)
    build_store(data, tmp_path / "f", ["pixels-32", "dinov2-small"], **kw)
    d, f = facestore.open_store(tmp_path / "d"), facestore.open_store(tmp_path / "f")
    spec = d.model_spec("dinov2-small")["pipeline"]
    # The largest side any model of the command needs: dinov2 resizes the short side to 256.
    assert spec["decode"] == "draft" and spec["draft_size"] == 256 == report.pipeline["draft_size"]
    assert f.model_spec("dinov2-small")["pipeline"]["decode"] == "full"
    # The DCT-scaled decode really ran: other pixels, close to the full decode's.
    a, b = d.load("pixels-32")[0], f.load("pixels-32")[0]
    assert not np.array_equal(a, b) and np.abs(a - b).mean() < 2 / 255


def _run(name: str, pending: dict[int, np.ndarray]) -> _ModelRun:
    return _ModelRun(name=name, encoder=None, writer=None, views={}, stack=True, pending=pending)


def test_plan_cuts_each_models_own_rows():
    """Batches depend on a model's own pending rows, not on the other models of the command."""
    every = np.ones(8, bool)
    tail = np.zeros(8, bool)
    tail[5:] = True
    tasks = plan_tasks([_run("a", {0: every}), _run("b", {0: tail}), _run("c", {0: every.copy()})],
                       lambda c: (8 * c, 8 * c + 8), batch_size=3)
    by_model = {}
    for t in tasks:
        assert isinstance(t, DecodeTask) and t.chunk == 0
        for m in t.models:
            by_model.setdefault(m, []).append(t.rows.tolist())
    assert by_model["a"] == by_model["c"] == [[0, 1, 2], [3, 4, 5], [6, 7]]  # a and c share the decode
    assert by_model["b"] == [[5, 6, 7]]  # alone it would be cut the same way
    alone = plan_tasks([_run("b", {0: tail})], lambda c: (0, 8), batch_size=3)
    assert [t.rows.tolist() for t in alone] == by_model["b"]


def test_shared_memory_budget_lowers_prefetch_then_workers_then_says_what_to_do():
    mib = 2 ** 20
    assert fit_shared_memory(workers=4, batch_bytes=10 * mib, free_bytes=1024 * mib) == (4, 4)
    assert fit_shared_memory(workers=4, batch_bytes=10 * mib, free_bytes=200 * mib) == (4, 2)
    assert fit_shared_memory(workers=4, batch_bytes=10 * mib, free_bytes=50 * mib) == (1, 1)
    assert fit_shared_memory(workers=0, batch_bytes=10 * mib, free_bytes=1) == (0, 4)  # no shared memory used
    with pytest.raises(BuildError, match=r"/dev/shm has 15 MiB free.*--batch-size.*--workers 0.*--shm-size"):
        fit_shared_memory(workers=4, batch_bytes=10 * mib, free_bytes=15 * mib)


def test_usable_cores_follow_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 3.0
    import facestore.build as fb

    monkeypatch.setattr(fb.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(fb, "cgroup_cpu_limit", lambda: 2.5)
    assert usable_cores() == 2
    monkeypatch.setattr(fb, "cgroup_cpu_limit", lambda: None)
    assert usable_cores() == 6 and fb.default_workers() == 5


def test_doctor_reports_what_a_build_would_use(monkeypatch):
    import facestore.build as fb
    from facestore.doctor import doctor_report, format_report

    monkeypatch.setattr(fb, "shm_free_bytes", lambda path="/dev/shm": 64 * 2 ** 20)  # a container's default
    report = doctor_report()
    p = report["pipeline"]
    assert p["usable_cores"] == usable_cores() and p["default_workers"] == max(0, usable_cores() - 1)
    assert p["dev_shm_free_mib"] == 64 and any("--shm-size" in w for w in report["warnings"])
    assert "torchvision" in p["jpeg_decoder"]
    text = format_report(report)
    assert "usable cores" in text and "default decode workers" in text and "JPEG decoding" in text


def test_a_group_built_before_the_pipeline_was_recorded_still_resumes(chips, tmp_path, caplog):
    import shutil

    import zarr

    data = shutil.copytree(chips, tmp_path / "data")
    build_store(data, tmp_path / "s", "pixels-32", chunk_rows=4, workers=0, progress=False)
    group = zarr.open_group(str(tmp_path / "s" / "models" / "pixels-32"), mode="r+")
    old = dict(group.attrs["spec"])
    old.pop("pipeline")
    group.attrs["spec"] = old  # as facestore wrote it before recording the pipeline
    write_chips(data, {"Dan": {"p9": 2}}, size=96, seed=5)
    with caplog.at_level("WARNING", logger="facestore.build"):
        report = build_store(data, tmp_path / "s", "pixels-32", chunk_rows=4, workers=0, progress=False)
    assert report.models[0].rows_written == 2 and "before facestore recorded the batch size" in caplog.text
    assert "pipeline" not in facestore.open_store(tmp_path / "s").model_spec("pixels-32")

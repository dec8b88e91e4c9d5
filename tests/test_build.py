"""The extraction pipeline through its public API: values, bad images, strict, append, spec changes, locks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facestore
from facestore.build import BuildReport, build_store
from facestore.errors import BuildError, SpecMismatchError, StoreLockedError
from facestore.store import layout
from tests.conftest import write_chips


def area_32(path: Path) -> np.ndarray:
    """The reference pixels-32 vector: 64x64 RGB -> mean of 2x2 blocks -> /255 -> HWC flatten."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    h, w, _ = a.shape
    blocks = a.reshape(32, h // 32, 32, w // 32, 3).mean(axis=(1, 3))
    return (blocks / 255.0).reshape(-1)


def add_bad_images(root: Path) -> dict[str, str]:
    """Bad files and odd-but-valid colour modes; returns ``{image_id: expected reason or 'ok'}``."""
    bad = root / "Anna" / "p1"
    good = next(bad.glob("*.jpg")).read_bytes()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "text.jpg").write_bytes(b"this is not an image at all\n" * 20)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(bad / "cmyk.jpg")
    Image.fromarray(rgb[:, :, 0]).save(bad / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((64, 64), 128, np.uint8)])).save(bad / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=np.uint16)).save(bad / "gray16.png")
    return {"Anna/p1/zero.jpg": "empty_file", "Anna/p1/truncated.jpg": "truncated", "Anna/p1/text.jpg": "not_an_image",
            "Anna/p1/cmyk.jpg": "ok", "Anna/p1/gray.png": "ok", "Anna/p1/rgba.png": "ok", "Anna/p1/gray16.png": "ok"}


def test_pixels_build_stores_the_reference_values(chip_folder: Path, tmp_path: Path):
    report = build_store(chip_folder, tmp_path / "s", "pixels-32", chunk_rows=5, batch_size=4, workers=0,
                         dtype="float32", progress=False)
    assert isinstance(report, BuildReport)
    (m,) = report.models
    assert (report.n_rows, report.rows_added, m.rows_written, m.rows_skipped, m.failures) == (18, 18, 18, 0, {})
    assert m.chunks_written == 4 and m.views == {"pixels": 3072}
    store = facestore.open_store(tmp_path / "s")
    X, ids = store.load("pixels-32", view="pixels")
    expected = np.stack([area_32(chip_folder / i) for i in ids])
    np.testing.assert_allclose(X, expected, rtol=0, atol=1e-6)
    spec = store.model_spec("pixels-32")
    assert spec["preprocessing"]["interpolation"] == "area" and spec["weights"] == {"kind": "none"}
    assert "interpolate(mode='area')" in spec["preprocessing"]["implementation"]


def test_pixels_fast_block_path_equals_area_interpolation():
    import torch
    import torch.nn.functional as F

    from facestore.models import load_encoder

    pre = load_encoder("pixels-32").preprocessor()
    rng = np.random.default_rng(0)
    for shape in ((512, 512, 3), (96, 64, 3), (50, 70, 3)):  # integer ratios (fast path), and not
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(32, 32), mode="area")[0] / 255
        got = pre(img)
        assert got.shape == (3, 32, 32) and got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_bad_images_are_recorded_and_the_build_finishes(chip_folder: Path, tmp_path: Path):
    expected = add_bad_images(chip_folder)
    report = build_store(chip_folder, tmp_path / "s", ["pixels-32"], chunk_rows=8, workers=1, progress=False)
    (m,) = report.models
    assert m.failures == {"empty_file": 1, "not_an_image": 1, "truncated": 1}
    assert m.rows_written == 18 + 4
    store = facestore.open_store(tmp_path / "s")
    status = store.status("pixels-32")
    rows = store.rows_of(list(expected))
    got = {i: layout.STATUS_CODES[int(status[r])] for i, r in zip(expected, rows, strict=True)}
    assert got == expected
    failures = {i: (reason, detail) for i, reason, detail in store.failures("pixels-32")}
    assert set(failures) == {i for i, r in expected.items() if r != "ok"}
    assert "zero bytes" in failures["Anna/p1/zero.jpg"][1]
    X, _ = store.load("pixels-32", ids=["Anna/p1/gray.png"])
    assert np.ptp(X.reshape(32, 32, 3), axis=2).max() == 0  # grayscale -> equal RGB channels


def test_strict_raises_after_recording(chip_folder: Path, tmp_path: Path):
    add_bad_images(chip_folder)
    with pytest.raises(BuildError, match=r"--strict.*empty_file 1.*not_an_image 1.*truncated 1"):
        build_store(chip_folder, tmp_path / "s", "pixels-32", workers=0, strict=True, progress=False)
    status = facestore.open_store(tmp_path / "s").status("pixels-32")
    assert (status != layout.PENDING).all() and (status >= 2).sum() == 3


def test_rerun_of_a_complete_build_does_nothing(chip_folder: Path, tmp_path: Path):
    build_store(chip_folder, tmp_path / "s", "pixels-32", chunk_rows=8, workers=0, progress=False)
    chunk_files = sorted((tmp_path / "s" / "models" / "pixels-32").rglob("c/*"))
    before = {p: p.stat().st_mtime_ns for p in chunk_files if p.is_file()}
    report = build_store(chip_folder, tmp_path / "s", "pixels-32", chunk_rows=8, workers=0, progress=False)
    (m,) = report.models
    assert (report.rows_decoded, report.rows_added, m.rows_written, m.rows_skipped, m.chunks_written) == (0, 0, 0, 18, 0)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "nothing to do" in report.summary()


def test_append_extracts_only_new_images_into_the_partial_chunk(chip_folder: Path, tmp_path: Path):
    store_path = tmp_path / "s"
    build_store(chip_folder, store_path, "pixels-32", chunk_rows=8, workers=0, dtype="float32", progress=False)
    X0, ids0 = facestore.open_store(store_path).load("pixels-32")
    write_chips(chip_folder, {"Bob": {"p9": 3}, "Cleo": {"p7": 2}}, seed=5)
    report = build_store(chip_folder, store_path, "pixels-32", chunk_rows=8, workers=0, dtype="float32",
                         progress=False)
    (m,) = report.models
    assert (report.rows_added, report.rows_decoded, m.rows_written, m.rows_skipped) == (5, 5, 5, 18)
    store = facestore.open_store(store_path)
    assert store.n == 23 and "Cleo" in store.index.names
    X1, ids1 = store.load("pixels-32")
    assert len(ids1) == 23
    old = store.rows_of(ids0)
    assert np.array_equal(store.index.image_ids[old], ids0)
    np.testing.assert_array_equal(store.load("pixels-32", ids=ids0)[0], X0)  # old rows untouched, bit for bit
    new_ids = sorted(set(ids1.tolist()) - set(ids0.tolist()))
    np.testing.assert_allclose(store.load("pixels-32", ids=new_ids)[0],
                               np.stack([area_32(chip_folder / i) for i in new_ids]), atol=1e-6)


def test_spec_change_is_refused_naming_the_difference(chip_folder: Path, tmp_path: Path):
    build_store(chip_folder, tmp_path / "s", "pixels-32", workers=0, progress=False)
    with pytest.raises(SpecMismatchError, match=r"dtype: 'float16' -> 'float32'"):
        build_store(chip_folder, tmp_path / "s", "pixels-32", workers=0, dtype="float32", progress=False)
    with pytest.raises(SpecMismatchError, match=r"chunk_rows: 8192 -> 4"):
        build_store(chip_folder, tmp_path / "s", "pixels-32", workers=0, chunk_rows=4, progress=False)


def test_a_model_locked_by_a_live_writer_is_refused(chip_folder: Path, tmp_path: Path):
    build_store(chip_folder, tmp_path / "s", "pixels-32", workers=0, progress=False)
    store = facestore.open_store(tmp_path / "s", mode="a")
    with store.lock("pixels-32", owner="another build"):
        with pytest.raises(StoreLockedError, match="another build"):
            build_store(chip_folder, tmp_path / "s", "pixels-32", workers=0, progress=False)
    assert not (tmp_path / "s" / ".locks" / "pixels-32.lock").exists()


def test_bad_arguments_say_what_to_do(chip_folder: Path, tmp_path: Path):
    with pytest.raises(facestore.errors.ModelNotFoundError, match="Available"):
        build_store(chip_folder, tmp_path / "s", "pixels-64", progress=False)
    with pytest.raises(BuildError, match="more than once"):
        build_store(chip_folder, tmp_path / "s", ["pixels-32", "pixels-32"], progress=False)
    with pytest.raises(BuildError, match="NAME=DIR"):
        build_store(chip_folder, tmp_path / "s", ["pixels-32", "dinov2-small"], weights=tmp_path, progress=False)
    with pytest.raises(BuildError, match="applies to none"):
        build_store(chip_folder, tmp_path / "s", "pixels-32", options={"arcface_align": "center"}, progress=False)
    with pytest.raises(facestore.errors.WeightsNotFoundError, match="weight-free"):
        build_store(chip_folder, tmp_path / "s", "pixels-32", weights=tmp_path, workers=0, progress=False)
    assert not os.path.exists(tmp_path / "s" / "models" / "pixels-32")


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> Path:
    from tests.tiny import make_weights

    return make_weights("dinov2-small", tmp_path_factory.mktemp("dino"))


def test_one_decode_for_many_models_equals_separate_builds(chip_folder: Path, tmp_path: Path, tiny_dino: Path):
    both = build_store(chip_folder, tmp_path / "both", ["pixels-32", "dinov2-small"],
                       weights={"dinov2-small": tiny_dino}, chunk_rows=8, batch_size=3, workers=1, progress=False)
    assert both.rows_decoded == 18  # each image decoded once for both models
    assert [m.rows_written for m in both.models] == [18, 18]
    for m, w in (("pixels-32", None), ("dinov2-small", tiny_dino)):
        build_store(chip_folder, tmp_path / m, m, weights=w, chunk_rows=8, batch_size=3, workers=0, progress=False)
        a, b = facestore.open_store(tmp_path / "both"), facestore.open_store(tmp_path / m)
        assert a.model_spec(m) == b.model_spec(m)
        for view in a.views(m):
            np.testing.assert_array_equal(a.load(m, view, dtype=None)[0], b.load(m, view, dtype=None)[0])


def test_other_weights_are_refused_naming_the_difference(chip_folder: Path, tmp_path: Path, tiny_dino: Path):
    import json
    import shutil

    build_store(chip_folder, tmp_path / "s", "dinov2-small", weights=tiny_dino, workers=0, progress=False)
    other = tmp_path / "elsewhere" / tiny_dino.name
    shutil.copytree(tiny_dino, other)
    config = json.loads((other / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpecMismatchError, match=r"spec\.weights\.sha256: '[0-9a-f]+' -> '[0-9a-f]+'"):
        build_store(chip_folder, tmp_path / "s", "dinov2-small", weights=other, workers=0, progress=False)

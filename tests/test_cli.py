"""The facestore command line through click's CliRunner, and every registry model built through --weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import facestore
from facestore.cli import main
from facestore.models import list_models, load_encoder
from tests.conftest import write_chips
from tests.test_build import add_bad_images
from tests.tiny import make_weights

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    if code:
        assert "Traceback" not in result.output
    return result


def test_help_is_instant_and_imports_no_heavy_library():
    probe = ("import sys; from facestore.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'transformers', 'zarr', 'open_clip', 'onnxruntime') if m in sys.modules]\n"
             "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "Commands:" in out.stdout and "build" in out.stdout and "HEAVY []" in out.stdout, out.stderr


def test_build_info_export_import_verify(chip_folder: Path, tmp_path: Path):
    add_bad_images(chip_folder)
    store = tmp_path / "s"
    res = run("build", "--data", chip_folder, "--store", store, "--model", "pixels-32", "--chunk-rows", "8",
              "--workers", "0", "--no-progress")
    assert "25 images (25 new)" in res.stdout
    assert "pixels-32: 22 rows written" in res.stdout and "empty_file 1, not_an_image 1, truncated 1" in res.stdout

    res = run("info", store)
    assert "25 images, 3 names, 6 identities" in res.stdout
    assert "pixels-32 [extracted]: pixels 3072; float16; ok 22" in res.stdout and "complete" in res.stdout
    info = json.loads(run("info", store, "--json").stdout)
    assert info["models"]["pixels-32"]["status"]["truncated"] == 1

    out = tmp_path / "exported"
    res = run("export", store, "--model", "pixels-32", "--out", out)
    assert "exported 22 x 3072" in res.stdout
    X, ids = facestore.open_store(store).load("pixels-32")
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), X)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(np.load(out / "image_ids.npy").tolist()) + "\n")

    res = run("import", store, "--model", "pixels-copy", "--embeddings", out / "embeddings.npy", "--ids", ids_file,
              "--view", "pixels", "--allow-missing")
    assert "imported 22 vectors into pixels-copy/pixels (3 store images without a vector)" in res.stdout
    Y, ids2 = facestore.open_store(store).load("pixels-copy", view="pixels")
    np.testing.assert_array_equal(Y, X)
    assert np.array_equal(ids2, ids)

    ids_file.write_text("Anna/p1/000.jpg\nnobody/here.jpg\n")
    res = run("import", store, "--model", "other", "--embeddings", out / "embeddings.npy", "--ids", ids_file, code=2)
    assert "Error" in res.output

    # Bad images are recorded failures and imported gaps are recorded as not_imported: no problems.
    assert f"{store}: OK" in run("verify", store).stdout


def test_verify_passes_on_a_sound_store_and_names_a_deleted_chunk(chip_folder: Path, tmp_path: Path):
    store = tmp_path / "s"
    run("build", "--data", chip_folder, "--store", store, "--model", "pixels-32", "--chunk-rows", "8",
        "--workers", "0", "--no-progress")
    assert f"{store}: OK" in run("verify", store).stdout
    (store / "models" / "pixels-32" / "pixels" / "c" / "1" / "0").unlink()
    res = run("verify", store, code=1)
    assert "pixels-32" in res.stderr and "1 problem(s) found" in res.stderr


def test_strict_and_errors_are_one_line_with_exit_codes(chip_folder: Path, tmp_path: Path):
    add_bad_images(chip_folder)
    store = tmp_path / "s"
    res = run("build", "--data", chip_folder, "--store", store, "--model", "pixels-32", "--workers", "0",
              "--no-progress", "--strict", code=1)
    assert res.stderr.startswith("Error: --strict: the build recorded failures")
    res = run("build", "--data", chip_folder, "--store", store, "--model", "pixels-32", "--dtype", "float32",
              "--workers", "0", "--no-progress", code=2)
    assert "different spec" in res.stderr and "dtype: 'float16' -> 'float32'" in res.stderr
    res = run("build", "--data", chip_folder, "--store", store, "--model", "dinov2-tiny", code=2)
    assert res.stderr.startswith("Error: model 'dinov2-tiny' not found.") and "dinov2-small" in res.stderr
    res = run("build", "--data", chip_folder, "--store", store, "--model", "pixels-32", "--model", "dinov2-small",
              "--weights", tmp_path, "--weights", tmp_path, code=2)
    assert "NAME=DIR" in res.output
    res = run("info", tmp_path / "nowhere", code=2)
    assert "no facestore store" in res.stderr


def test_models_lists_dims_views_sources_and_licences():
    res = run("models")
    assert all(name in res.stdout for name in list_models())
    assert "non-commercial research use only" in res.stdout
    assert "dinov2-base        dinov2     views: cls 768, patch_mean 768" in res.stdout
    specs = json.loads(run("models", "clip*", "--json").stdout)
    assert [s["name"] for s in specs] == ["clip-vit-b-32"]
    assert specs[0]["views"] == {"image": 512, "pooled": 768} and specs[0]["text"] is True
    assert "non-commercial" not in run("models", "dino*").stdout
    assert "no model matches" in run("models", "zzz*", code=2).stderr


def test_doctor_reports_versions_devices_and_providers():
    text = run("doctor").stdout
    assert "torch" in text and "available providers" in text and "hub cache" in text
    report = json.loads(run("doctor", "--json").stdout)
    assert report["versions"]["zarr"] == __import__("zarr").__version__
    assert "CPUExecutionProvider" in report["onnxruntime"]["available_providers"]
    assert isinstance(report["torch"]["cuda_available"], bool) and "cpu_bf16" in report["torch"]
    assert report["huggingface"]["offline"] is True  # the test run sets HF_HUB_OFFLINE=1


@pytest.fixture(scope="module")
def small_chips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry") / "chips"
    write_chips(root, {"Anna": {"p1": 2}, "Bob": {"p2": 2}, "Cleo": {"p3": 1}}, size=128, seed=7)
    return root


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_builds_through_weights(name: str, small_chips: Path, tmp_path: Path):
    weights = make_weights(name, tmp_path / "weights")
    args = ["--data", small_chips, "--model", name, "--workers", "0", "--no-progress", "--batch-size", "2",
            "--chunk-rows", "4", "--device", "cpu"]
    if weights is not None:
        args += ["--weights", weights]
    run("build", "--store", tmp_path / "a", *args)
    run("build", "--store", tmp_path / "b", *args)
    a, b = facestore.open_store(tmp_path / "a"), facestore.open_store(tmp_path / "b")
    expected = load_encoder(name, weights=None if weights is None else str(weights), device="cpu").resolved_spec()
    stored = a.model_spec(name)
    # The build adds how it batched and decoded ("pipeline") to the encoder's own resolved spec.
    assert {k: v for k, v in stored.items() if k != "pipeline"} == json.loads(json.dumps(expected))
    assert stored["name"] == name and a.views(name) == stored["views"]
    assert (a.status(name) == 1).all()
    for view, dim in a.views(name).items():
        X, ids = a.load(name, view, dtype=None)
        assert X.shape == (5, dim) and np.isfinite(X).all() and np.abs(X).sum() > 0
        np.testing.assert_array_equal(X, b.load(name, view, dtype=None)[0])  # deterministic, bit for bit
        assert np.array_equal(ids, b.index.image_ids)


def test_arcface_options_reach_the_encoder_and_are_part_of_the_spec(small_chips: Path, tmp_path: Path):
    weights = make_weights("arcface-r50", tmp_path / "w")
    store = tmp_path / "s"
    common = ["--data", small_chips, "--store", store, "--model", "arcface-r50", "--weights", weights,
              "--workers", "0", "--no-progress", "--device", "cpu"]
    res = run("build", *common, "--arcface-align", "center")
    assert "arcface-r50: 5 rows written" in res.stdout
    assert facestore.open_store(store).model_spec("arcface-r50")["options"]["arcface_align"] == "center"
    res = run("build", *common, code=2)  # default: detect, a different preprocessing
    assert "options.arcface_align: 'center' -> 'detect'" in res.stderr
    res = run("build", "--data", small_chips, "--store", tmp_path / "p", "--model", "pixels-32",
              "--arcface-align", "center", code=2)
    assert "applies to none of the models" in res.stderr


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path: Path):
    res = run("demo", tmp_path / "demo", "--quick", "--device", "cpu")
    report = tmp_path / "demo" / "results" / "track3_comparison.md"
    assert f"report: {report}" in res.stdout and report.is_file()
    # Not a terminal: no progress bars (carriage-return noise in a log), without --no-progress.
    assert "%|" not in res.stderr + res.stdout and "\r" not in res.stderr + res.stdout
    store = facestore.open_store(tmp_path / "demo" / "store")
    assert store.models == ["pixels-32", "random-vit-tiny"]
    assert all((store.status(m) == 1).all() for m in store.models)


def test_doctor_warns_when_both_onnxruntime_packages_are_installed(monkeypatch):
    import facestore.doctor as doctor

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: "1.31.1" if dist == "onnxruntime-gpu" else real(dist))
    res = run("doctor")
    assert "both onnxruntime and onnxruntime-gpu are installed" in res.stdout
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in res.stdout


def test_chips_without_a_face_are_recorded_or_centre_cropped(tmp_path: Path):
    from PIL import Image

    root = tmp_path / "chips"
    write_chips(root, {"Anna": {"p1": 2}, "Bob": {"p2": 1}}, size=128, seed=2)
    # The tiny detector reports its face only when some pixel is brighter than mid-grey.
    Image.fromarray(np.full((128, 128, 3), 40, np.uint8)).save(root / "Bob" / "p2" / "dark.jpg")
    weights = make_weights("arcface-r50", tmp_path / "w")
    common = ["--data", root, "--model", "arcface-r50", "--weights", weights, "--workers", "1", "--no-progress"]
    res = run("build", "--store", tmp_path / "rec", *common)
    assert "arcface-r50: 3 rows written" in res.stdout and "no_face 1" in res.stdout
    assert [(i, r) for i, r, _ in facestore.open_store(tmp_path / "rec").failures("arcface-r50")] == \
        [("Bob/p2/dark.jpg", "no_face")]
    run("build", "--store", tmp_path / "strict", *common, "--strict", code=1)
    res = run("build", "--store", tmp_path / "fallback", *common, "--no-face", "center")
    assert "arcface-r50: 4 rows written" in res.stdout and "failures this run: none" in res.stdout


# --------------------------------------------------------------------------- issue 11 / 13: integrity and friction


def _commands():
    return sorted(main.commands.items())


def test_dash_h_works_on_every_command_and_every_option_has_help():
    undocumented = []
    for name, cmd in _commands():
        res = run(name, "-h")
        assert "Usage:" in res.stdout and "--help" in res.stdout, name
        if name == "demo":  # the report engineer's command
            continue
        undocumented += [f"{name} {p.opts[0]}" for p in cmd.params
                         if isinstance(p, __import__("click").Option) and not p.help]
    assert not undocumented, undocumented


@pytest.fixture
def built(chip_folder: Path, tmp_path: Path) -> Path:
    store = tmp_path / "s"
    run("build", "--data", chip_folder, "--store", store, "--model", "pixels-32", "--chunk-rows", "8",
        "--workers", "0", "--no-progress")
    return store


def test_a_damaged_chunk_exits_3_naming_it_and_repair_then_build_restores(built: Path, chip_folder: Path):
    before = facestore.open_store(built).load("pixels-32", dtype=None)[0]
    f = built / "models" / "pixels-32" / "pixels" / "c" / "1" / "0"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 0x10
    f.write_bytes(bytes(raw))
    res = run("export", built, "--model", "pixels-32", "--out", built.parent / "x", code=3)
    assert "model 'pixels-32' view 'pixels': chunk 1 (rows 8-15) is damaged" in res.stderr
    res = run("verify", built, code=1)
    assert "damaged_chunk" in res.stderr and "chunk 1" in res.stderr
    res = run("verify", built, "--repair", code=1)
    assert "reset 1 chunk(s) of pixels-32" in res.stderr
    run("build", "--data", chip_folder, "--store", built, "--model", "pixels-32", "--chunk-rows", "8",
        "--workers", "0", "--no-progress")
    assert f"{built}: OK" in run("verify", built).stdout
    np.testing.assert_array_equal(facestore.open_store(built).load("pixels-32", dtype=None)[0], before)


def test_wrong_view_and_model_typos_say_what_can_work(built: Path):
    res = run("export", built, "--model", "pixels-32", "--view", "pixel", "--out", built.parent / "x", code=2)
    assert res.stderr.startswith("Error: model 'pixels-32' has no view 'pixel'; its views: pixels. Did you mean 'pixels'?")
    res = run("export", built, "--model", "pixels32", "--out", built.parent / "x", code=2)
    assert "Did you mean 'pixels-32'?" in res.stderr and "--model pixels32" not in res.stderr


def test_locked_store_exits_4_and_permission_denied_exits_5(built: Path, monkeypatch):
    with facestore.open_store(built, mode="a").lock("pixels-32", owner="another build"):
        res = run("verify", built, "--repair", code=4)
        assert "another build" in res.stderr

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(built / "zarr.json"))

    monkeypatch.setattr("facestore.store.store.Store.__init__", denied)
    res = run("info", built, code=5)
    assert res.stderr.startswith(f"Error: permission denied: {built / 'zarr.json'} (running as user")


def test_index_then_import_a_superset_of_vectors(chip_folder: Path, tmp_path: Path):
    store = tmp_path / "s"
    res = run("index", "--data", chip_folder, "--store", store)
    assert "18 images (18 new), 3 new name(s)" in res.stdout
    st = facestore.open_store(store)
    assert st.n == 18 and st.models == []
    ids = np.concatenate([st.index.image_ids, ["Elsewhere/x.jpg"]])
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(19, 5)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    res = run("import", store, "--model", "ext", "--embeddings", tmp_path / "v.npy", "--ids", tmp_path / "ids.txt",
              code=2)
    assert "--ignore-unknown-ids" in res.stderr
    res = run("import", store, "--model", "ext", "--embeddings", tmp_path / "v.npy", "--ids", tmp_path / "ids.txt",
              "--ignore-unknown-ids")
    assert "imported 18 vectors" in res.stdout and "ignored 1 vectors whose image ID is not in the store" in res.stdout
    assert f"{store}: OK" in run("verify", store).stdout
    assert "18 images (0 new)" in run("index", "--data", chip_folder, "--store", store).stdout


def test_build_follow_symlinks_and_rehash(built: Path, chip_folder: Path, tmp_path: Path):
    import os

    p = chip_folder / "Anna" / "p1" / "000.jpg"
    st = p.stat()
    raw = bytearray(p.read_bytes())
    raw[-10] ^= 0xFF
    p.write_bytes(bytes(raw))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # an edit that kept size and mtime
    common = ["--store", built, "--model", "pixels-32", "--chunk-rows", "8", "--workers", "0", "--no-progress"]
    run("build", "--data", chip_folder, *common)
    res = run("build", "--data", chip_folder, *common, "--rehash", code=2)
    assert "changed on disk" in res.stderr and "Anna/p1/000.jpg" in res.stderr
    outside = tmp_path / "outside"
    write_chips(outside, {"Cleo": {"p9": 2}}, seed=4)
    os.symlink(outside / "Cleo", chip_folder / "Cleo")
    args = ["--model", "pixels-32", "--workers", "0", "--no-progress"]
    res = run("build", "--data", chip_folder, "--store", tmp_path / "a", *args)
    assert "18 images (18 new)" in res.stdout
    res = run("build", "--data", chip_folder, "--store", tmp_path / "b", *args, "--follow-symlinks")
    assert "20 images (20 new)" in res.stdout
    assert facestore.open_store(tmp_path / "b").info()["follow_symlinks"] is True

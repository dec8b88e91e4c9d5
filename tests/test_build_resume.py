"""Builds as separate processes: SIGKILL and resume, concurrent builds on one store, the per-model lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import facestore
from facestore.build import build_store
from facestore.errors import StoreLockedError
from tests.conftest import write_chips
from tests.tiny import make_weights

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """96 chips: enough work that a build is still running when its first chunk lands."""
    root = tmp_path_factory.mktemp("resume") / "chips"
    write_chips(root, {f"name{k}": {f"p{k}{j}": 8 for j in range(3)} for k in range(4)}, size=96, seed=3)
    return root


@pytest.fixture(scope="module")
def dino(tmp_path_factory) -> Path:
    return make_weights("dinov2-small", tmp_path_factory.mktemp("weights"))


def build_cmd(data: Path, store: Path, dino: Path, *models: str) -> list[str]:
    cmd = [sys.executable, "-m", "facestore", "build", "--data", str(data), "--store", str(store),
           "--chunk-rows", "8", "--batch-size", "4", "--workers", "1", "--no-progress"]
    for m in models:
        cmd += ["--model", m]
    if "dinov2-small" in models:
        cmd += ["--weights", f"dinov2-small={dino}"]
    return cmd


def start(cmd: list[str]) -> subprocess.Popen:
    # A new session, so that the build and its DataLoader worker can be killed together.
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, *, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the build exited ({proc.returncode}) before the condition held:\n{out}\n{err}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail("timed out waiting for the build")
        time.sleep(0.01)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def model_arrays(store_path: Path, model: str) -> dict[str, np.ndarray]:
    store = facestore.open_store(store_path)
    out = {"status": store.status(model)}
    for view in store.views(model):
        out[view] = store.load(model, view, dtype=None)[0]
    return out


def test_sigkill_then_resume_is_bitwise_identical(dataset: Path, dino: Path, tmp_path: Path):
    models = ("pixels-32", "dinov2-small")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = start(build_cmd(dataset, killed, dino, *models))
    first_chunk = killed / "models" / "dinov2-small" / "status" / "c" / "0"
    wait_for(first_chunk.exists, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    status = facestore.open_store(killed).status("dinov2-small")
    assert (status == 1).any() and (status == 0).any(), "the kill must land mid-build"

    rc, out, err = finish(start(build_cmd(dataset, killed, dino, *models)))
    assert rc == 0, err
    assert "96 images (0 new)" in out
    # The uninterrupted reference, in this process: same batches, same bits.
    build_store(dataset, clean, list(models), weights={"dinov2-small": dino}, chunk_rows=8, batch_size=4,
                workers=0, progress=False)
    for m in models:
        a, b = model_arrays(killed, m), model_arrays(clean, m)
        assert set(a) == set(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (m, key)
        assert (a["status"] == 1).all()

    report = build_store(dataset, killed, list(models), weights={"dinov2-small": dino}, chunk_rows=8, batch_size=4,
                         workers=0, progress=False)
    assert report.rows_decoded == 0 and all(m.rows_written == 0 and m.rows_skipped == 96 for m in report.models)


def test_two_models_built_concurrently_on_one_new_store(dataset: Path, dino: Path, tmp_path: Path):
    store = tmp_path / "s"
    procs = [start(build_cmd(dataset, store, dino, m)) for m in ("pixels-32", "dinov2-small")]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    st = facestore.open_store(store)
    assert st.n == 96 and st.models == ["dinov2-small", "pixels-32"]
    for m in st.models:
        assert (st.status(m) == 1).all()
    single = tmp_path / "single"
    build_store(dataset, single, "dinov2-small", weights=dino, chunk_rows=8, batch_size=4, workers=0, progress=False)
    np.testing.assert_array_equal(st.load("dinov2-small", dtype=None)[0],
                                  facestore.open_store(single).load("dinov2-small", dtype=None)[0])


def test_same_model_while_another_process_builds_it_is_locked(dataset: Path, dino: Path, tmp_path: Path):
    store = tmp_path / "s"
    proc = start(build_cmd(dataset, store, dino, "dinov2-small"))
    wait_for((store / ".locks" / "dinov2-small.lock").exists, proc)
    try:
        with pytest.raises(StoreLockedError, match=r"is being written by facestore build \(pid"):
            build_store(dataset, store, "dinov2-small", weights=dino, chunk_rows=8, batch_size=4, workers=0,
                        progress=False)
    finally:
        rc, _, err = finish(proc)
    assert rc == 0, err
    assert (facestore.open_store(store).status("dinov2-small") == 1).all()

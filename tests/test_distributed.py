"""Distributed builds: torchrun with two CPU ranks under gloo equals a single-process build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import facestore
from facestore.build import build_store
from facestore.distributed import DistributedContext, context_from_env
from facestore.errors import BuildError
from tests.tiny import make_weights

ROOT = Path(__file__).resolve().parents[1]


def test_context_from_torchrun_environment():
    assert context_from_env({}) is None
    assert context_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    ctx = context_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert ctx == DistributedContext(rank=2, world_size=4, local_rank=0) and not ctx.is_main
    assert [c for c in range(10) if ctx.owns(c)] == [2, 6]
    assert ctx.device("auto", cuda_available=False) == "cpu"
    assert ctx.device("cuda", cuda_available=True) == "cuda:0"
    # torchrun's LOCAL_WORLD_SIZE: the ranks of one machine share its cores for decode workers.
    two = context_from_env({"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert two.local_world_size == 2
    from facestore.build import default_workers

    assert default_workers(cores=16, processes_per_node=two.local_world_size) == 7
    assert default_workers(cores=16) == 15 and default_workers(cores=2) == 1 and default_workers(cores=1) == 0
    with pytest.raises(BuildError, match="outside"):
        context_from_env({"WORLD_SIZE": "2", "RANK": "5"})
    with pytest.raises(BuildError, match="must be integers"):
        context_from_env({"WORLD_SIZE": "two"})


@pytest.mark.slow
def test_two_gloo_ranks_equal_a_single_process_build(chip_folder: Path, tmp_path: Path):
    weights = make_weights("dinov2-small", tmp_path / "w")
    store = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "facestore", "build", "--data", str(chip_folder), "--store", str(store),
           "--model", "pixels-32", "--model", "dinov2-small", "--weights", f"dinov2-small={weights}",
           "--chunk-rows", "4", "--batch-size", "3", "--workers", "0", "--device", "cpu", "--no-progress"]
    # torchrun sets OMP_NUM_THREADS=1 per rank; the reference below runs with the same thread count.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("18 images (18 new)") == 1  # only rank 0 prints the merged summary
    assert "x 2 ranks" in proc.stdout and "dinov2-small: 18 rows written" in proc.stdout

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = tmp_path / "single"
        build_store(chip_folder, single, ["pixels-32", "dinov2-small"], weights={"dinov2-small": weights},
                    chunk_rows=4, batch_size=3, workers=0, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = facestore.open_store(store), facestore.open_store(single)
    assert np.array_equal(a.index.image_ids, b.index.image_ids)
    for m in ("pixels-32", "dinov2-small"):
        assert np.array_equal(a.status(m), b.status(m)) and (a.status(m) == 1).all()
        assert a.model_spec(m) == b.model_spec(m)
        for view in a.views(m):
            assert np.array_equal(a.load(m, view, dtype=None)[0], b.load(m, view, dtype=None)[0]), (m, view)
    assert not list((store / ".locks").glob("*.lock"))  # rank 0 released the session's locks

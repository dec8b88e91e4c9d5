"""``--seeds`` with ``--val`` / ``--test`` on every probe command: one split per seed at those fractions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from probes.cli import main
from tests.synthetic import planted_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = planted_store(tmp_path_factory.mktemp("seeds") / "s.zarr", n_names=5, images_per_person=4, dim=12,
                      signal=2.0, seed=9, models=("toy", "toy2"))
    X, ids = s.load("toy", "embedding")
    lab = np.asarray(s.index.labels)[s.rows_of(ids)]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    E = np.stack([Xn[lab == c].mean(0) for c in range(len(s.index.names))])[:, None, :]
    s.write_text_embeddings("toy", template_set="plan", names=list(s.index.names), templates=["a {}"], embeddings=E,
                            logit_scale=10.0, logit_bias=None, spec={"name": "toy"})
    return s


COMMANDS = {
    "linear": ["linear", "--model", "toy", "--lambdas", "1e-2,1e-1", "--threads", "1"],
    "knn": ["knn", "--model", "toy", "--ks", "3,5"],
    "supcon": ["supcon", "--model", "toy", "--hidden-dim", "16", "--out-dim", "8", "--epochs", "1",
               "--batch-size", "8", "--m-per-class", "2"],
    "ensemble": ["ensemble", "--models", "toy,toy2", "--mode", "late-fusion", "--lambdas", "1e-2"],
    "zeroshot": ["zeroshot", "--model", "toy"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_seeds_make_one_split_per_seed_at_the_given_fractions(store, tmp_path, command):
    args = [*COMMANDS[command], "--store", str(store.path), "--seeds", "2", "--seed", "3", "--val", "0.2",
            "--test", "0.3", "--n-boot", "50", "--out", str(tmp_path), "--experiment", "e"]
    if command != "zeroshot":
        args += ["--device", "cpu"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    agg = json.loads((tmp_path / "track3_e-seeds.json").read_text())
    assert agg["seeds"] == [3, 4] and agg["split"] == {"by": "identity", "val": 0.2, "test": 0.3}
    for seed in (3, 4):
        s = json.loads((tmp_path / f"track3_e-seed{seed}" / "summary.json").read_text())
        assert (s["split"]["seed"], s["split"]["val"], s["split"]["test"]) == (seed, 0.2, 0.3)
        assert s["extra"]["seed_group"] == "e"
    assert "mean over 2 seeds" in res.output

"""Ensembles: alignment by image id with missing images counted, concat, late fusion, learned weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.ensemble import BlockScaler, LearnedWeights, align_features, concat_features, late_fusion


def test_alignment_by_image_id_counts_missing_images():
    Xa = np.arange(10, dtype=np.float32).reshape(5, 2)
    ida = np.array(["e", "a", "c", "b", "d"])
    Xb = np.arange(8, dtype=np.float32).reshape(4, 2) + 100
    idb = np.array(["d", "c", "b", "a"])  # "e" failed in model b
    al = align_features({"a": (Xa, ida), "b": (Xb, idb)})
    assert al.image_ids.tolist() == ["a", "b", "c", "d"]
    assert al.missing == {"a": 0, "b": 1} and al.n_dropped == 1
    np.testing.assert_array_equal(al.features[0][:, 0], [2, 6, 4, 8])  # rows of a, b, c, d in model a
    np.testing.assert_array_equal(al.features[1][:, 0], [106, 104, 102, 100])
    with pytest.raises(ValueError, match="duplicate"):
        align_features({"a": (Xa, np.array(["a"] * 5))})


def test_concat_normalises_each_model_first():
    A = np.array([[3.0, 4.0]])
    B = np.array([[100.0, 0.0, 0.0]])
    np.testing.assert_allclose(concat_features([A, B]), [[0.6, 0.8, 1.0, 0.0, 0.0]])


def test_concat_blocks_stay_on_an_equal_footing():
    rng = np.random.default_rng(1)
    narrow = rng.normal(size=(500, 8)) * 50.0  # a loud, narrow block
    wide = rng.normal(size=(500, 64)) * np.linspace(0.1, 3, 64)  # a quiet, wide, anisotropic one
    scaler = BlockScaler().fit([narrow[:300], wide[:300]])
    Z = scaler.transform([narrow[:300], wide[:300]])
    assert Z.shape == (300, 72)
    # Every block ends with total variance 1 (its width no longer buys it weight under the L2 penalty);
    # a per-column standardisation of the concatenation would give the wide block 8x the narrow one.
    np.testing.assert_allclose([Z[:, :8].var(0).sum(), Z[:, 8:].var(0).sum()], [1.0, 1.0], rtol=1e-3)
    np.testing.assert_allclose(Z[:, 8:].var(0), 1 / 64, rtol=1e-3)
    held = scaler.transform([narrow[300:], wide[300:]])  # the training statistics, applied as they are
    assert held.shape == (200, 72) and abs(held[:, :8].var(0).sum() - 1) < 0.3


def test_out_of_fold_probabilities_come_from_probes_that_never_saw_the_fold():
    from probes.ensemble import _out_of_fold
    from probes.linear import LinearSweep

    rng = np.random.default_rng(2)
    people = np.repeat(np.arange(60), 5)
    y = np.array([f"n{p % 4}" for p in people])
    X = (rng.normal(size=(300, 24)) + 1.5 * rng.normal(size=(60, 24))[people]).astype(np.float32)
    sweep = LinearSweep([1e-3], extend_grid=False, n_threads=1).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    P = _out_of_fold(sweep, X, y, people, folds=3, seed=0)
    assert P.shape == (300, 4) and np.allclose(P.sum(1), 1)
    # Person-specific features: a probe that saw a person predicts its name well, one that did not,
    # near chance. Out-of-fold must look like the latter, the train+val refit like the former.
    seen = sweep.best_estimator_.predict_proba(X)[np.arange(300), np.searchsorted(sweep.classes_, y)].mean()
    oof = P[np.arange(300), np.searchsorted(sweep.classes_, y)].mean()
    assert oof < seen - 0.1


def test_late_fusion_is_the_mean_of_log_probabilities():
    P1 = np.array([[0.7, 0.2, 0.1]])
    P2 = np.array([[0.1, 0.6, 0.3]])
    ref = np.sqrt(P1 * P2)
    np.testing.assert_allclose(late_fusion([P1, P2]), ref / ref.sum(), rtol=1e-9)


def test_learned_weights_favour_the_informative_model():
    rng = np.random.default_rng(0)
    n, C = 400, 5
    y = rng.integers(0, C, n)
    good = np.full((n, C), 0.1)
    good[np.arange(n), y] = 0.6
    noise = rng.dirichlet(np.ones(C), size=n)
    lw = LearnedWeights().fit([good, noise], y)
    assert lw.weights_[0] > 5 * lw.weights_[1]
    assert lw.predict_proba([good, noise]).shape == (n, C)


@pytest.mark.parametrize("mode", ["concat", "late-fusion", "learned-weights"])
def test_cli_ensemble_modes_on_a_two_model_store(tmp_path, mode):
    from click.testing import CliRunner

    from probes.cli import main
    from tests.synthetic import planted_store

    planted_store(tmp_path / "s.zarr", n_names=5, images_per_person=4, dim=12, signal=1.5, seed=2,
                  models=("m1", "m2"))
    res = CliRunner().invoke(main, ["ensemble", "--store", str(tmp_path / "s.zarr"), "--models", "m1,m2",
                                    "--mode", mode, "--lambdas", "1e-1", "--oof-folds", "2",
                                    "--out", str(tmp_path / "r"),
                                    "--n-boot", "100", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "r" / f"track3_ensemble-{mode}_m1+m2_all"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["family"] == "ensemble" and summary["extra"]["mode"] == mode
    assert summary["extra"]["missing_images"]["test"]["dropped"] == 0
    assert summary["ci"]["balanced_accuracy"][1] > 1 / 5
    if mode == "learned-weights":
        assert set(summary["extra"]["weights"]) == {"m1", "m2"}
        assert "out-of-fold" in summary["extra"]["weights_fitted_on"]
    one = CliRunner().invoke(main, ["ensemble", "--store", str(tmp_path / "s.zarr"), "--models", "m1",
                                    "--out", str(tmp_path / "r")])
    assert one.exit_code != 0 and "at least two models" in one.output

"""FAISS kNN: one search for the largest k, weighted votes, self-exclusion, agreement with a brute reference."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn.exceptions import NotFittedError

from probes.knn import KNNProbe, knn_search, weighted_votes


def _blobs(n_per=30, n_classes=4, dim=16, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    X = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.array([f"name{i}" for i in range(n_classes)]), n_per)
    return X, y


def test_search_matches_brute_force_cosine():
    rng = np.random.default_rng(1)
    db, q = rng.normal(size=(200, 12)), rng.normal(size=(25, 12))
    res = knn_search(db, q, k=7, device="cpu")
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (db / np.linalg.norm(db, axis=1, keepdims=True)).T
    ref = np.argsort(-cos, axis=1)[:, :7]
    assert np.array_equal(res.indices, ref)
    np.testing.assert_allclose(res.similarities, np.take_along_axis(cos, ref, axis=1), atol=1e-5)
    assert res.device == "cpu"


def test_exclude_self_drops_the_query_row_even_with_duplicates():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 8)).astype(np.float32)
    X[10] = X[11]  # an exact duplicate pair
    res = knn_search(X, X, k=5, device="cpu", exclude_self=True)
    assert not np.any(res.indices == np.arange(50)[:, None])
    assert 11 in res.indices[10] and 10 in res.indices[11]
    with pytest.raises(ValueError, match="query set to be the database"):
        knn_search(X, X[:5], k=3, exclude_self=True)


def test_weighted_votes_reference():
    labels = np.array([[0, 1, 1], [2, 2, 0]])
    sims = np.array([[0.9, 0.5, 0.4], [0.8, 0.7, 0.6]])
    got = weighted_votes(labels, sims, n_classes=3, k=3, temperature=0.07)
    w = np.exp(sims / 0.07)
    ref = np.zeros((2, 3))
    for i in range(2):
        for j in range(3):
            ref[i, labels[i, j]] += w[i, j]
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    # k=1 is the nearest neighbour's label with all the mass.
    np.testing.assert_allclose(weighted_votes(labels, sims, n_classes=3, k=1)[0], [1, 0, 0])


def test_probe_reports_every_k_from_one_search_and_records_k_and_T():
    X, y = _blobs()
    probe = KNNProbe(ks=(5, 10, 20), k=10).fit(X[::2], y[::2])
    scores = probe.decision_functions(X[1::2])
    assert set(scores) == {5, 10, 20}
    for s in scores.values():
        assert s.shape == (60, 4)
        np.testing.assert_allclose(s.sum(axis=1), 1.0)
    assert probe.score(X[1::2], y[1::2]) > 0.9
    assert list(probe.predict(X[1::2][:3])) == list(y[1::2][:3])
    params = probe.params()
    assert params["ks"] == [5, 10, 20] and params["temperature"] == 0.07 and params["search_device"] == "cpu"


def test_leave_one_out_on_the_training_set():
    X, y = _blobs(n_per=10, spread=2.0, seed=3)
    probe = KNNProbe(ks=(1,), k=1).fit(X, y)
    loo = probe.decision_functions(X, exclude_self=True)[1]
    with_self = probe.decision_functions(X)[1]
    # With itself in the database every point is its own nearest neighbour: 100%.
    assert np.mean(probe.classes_[with_self.argmax(1)] == y) == 1.0
    assert np.mean(probe.classes_[loo.argmax(1)] == y) < 1.0


def test_bad_arguments_explain_themselves():
    X, y = _blobs(n_per=5)
    with pytest.raises(ValueError, match="k=3 must be one of"):
        KNNProbe(ks=(10,), k=3).fit(X, y)
    with pytest.raises(ValueError, match="device must be one of"):
        knn_search(X, X, k=2, device="tpu")
    with pytest.raises(ValueError, match="exceeds"):
        knn_search(X, X, k=500)
    with pytest.raises(NotFittedError, match="not fitted"):
        KNNProbe().predict(X)


def test_k_and_temperature_are_chosen_on_validation():
    from probes.knn import select_k_and_temperature
    from probes.metrics import balanced_accuracy

    X, y = _blobs(n_per=80, n_classes=4, spread=0.9, seed=4)
    y_idx = np.unique(y, return_inverse=True)[1]
    rng = np.random.default_rng(5)
    noisy = y_idx.copy()
    flip = rng.random(len(y_idx)) < 0.35  # a third of the database labels are wrong: k=1 copies them
    noisy[flip] = rng.integers(0, 4, flip.sum())
    tr, va = np.arange(0, 320, 2), np.arange(1, 320, 2)
    k, T, table = select_k_and_temperature(X[tr], noisy[tr], X[va], y_idx[va], n_classes=4, ks=(1, 5, 40),
                                           temperatures=(0.07, 0.5))
    assert len(table) == 6 and {(r["k"], r["temperature"]) for r in table} == {(a, b) for a in (1, 5, 40)
                                                                              for b in (0.07, 0.5)}
    by_k = {r["k"]: r["val_balanced_accuracy"] for r in table if r["temperature"] == T}
    assert k != 1 and by_k[k] > by_k[1]
    # The table is what a fresh probe at that (k, T) scores on the validation rows.
    probe = KNNProbe((k,), k=k, temperature=T).fit(X[tr], noisy[tr])
    assert balanced_accuracy(y_idx[va], probe.predict(X[va])) == pytest.approx(by_k[k])


def test_cli_knn_writes_a_result_folder_on_a_planted_store(tmp_path):
    import json

    from click.testing import CliRunner

    from probes.cli import main
    from probes.metrics import balanced_accuracy
    from probes.results import read_result
    from tests.synthetic import planted_store

    store = planted_store(tmp_path / "s.zarr", n_names=6, images_per_person=4, dim=16, signal=2.0, seed=0)
    res = CliRunner().invoke(main, ["knn", "--store", str(tmp_path / "s.zarr"), "--model", "toy", "--ks", "5,10",
                                    "--temperatures", "0.07,0.2", "--out", str(tmp_path / "res"), "--n-boot", "200",
                                    "--forced-choice", "--null-repeats", "5", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "res" / "track3_toy_knn_all"
    summary = json.loads((folder / "summary.json").read_text())
    x = summary["extra"]
    assert x["k"] in (5, 10) and x["temperature"] in (0.07, 0.2) and x["k_and_temperature"] == "chosen on validation"
    assert summary["probe"]["k"] == x["k"] and summary["probe"]["temperature"] == x["temperature"]
    assert len(x["selection"]) == 4 and "per_k" not in x  # test metrics for the chosen (k, T) only
    assert summary["ci"]["balanced_accuracy"][0] > 1 / 6  # a planted signal beats chance
    assert summary["split"]["by"] == "identity"
    assert [fc["n_way"] for fc in x["forced_choice"]] == [2, 2, 4, 4]
    assert x["forced_choice"][0]["null"]["repeats"] == 5
    r = read_result(folder)
    assert len(r.predictions) == summary["metrics"]["n_test"]
    # The test metrics are those of a kNN at the chosen (k, T) over train+val.
    from probes.data import load_xy
    from probes.splits import load_split

    split = load_split(store, summary["split"]["name"])
    tv, te = (load_xy(store, "toy", split=split, subset=s) for s in ("trainval", "test"))
    probe = KNNProbe((x["k"],), k=x["k"], temperature=x["temperature"]).fit(tv.X, tv.y)
    assert balanced_accuracy(te.y, probe.predict(te.X)) == pytest.approx(summary["metrics"]["balanced_accuracy"])
    assert f"k={x['k']}" in res.output and "faiss cpu" in res.output

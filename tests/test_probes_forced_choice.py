"""Forced choice: raw, prior-corrected and face-blind scores under the same seeded foils."""

from __future__ import annotations

import numpy as np
import pytest

from probes.forced_choice import (choice_outcomes, forced_choice, forced_choice_report, sample_foils,
                                  train_prior)


def _frequency_world(n=4000, C=20, seed=0, face_signal=0.0):
    """Names with a Zipf-like prior; a probe that knows the prior, plus optional face evidence."""
    rng = np.random.default_rng(seed)
    prior = 1.0 / np.arange(1, C + 1)
    prior /= prior.sum()
    y = np.repeat(rng.choice(C, size=n // 4, p=prior), 4)  # one name per person, 4 images each
    train = rng.choice(C, size=5 * n, p=prior)
    logits = np.log(prior)[None, :] + rng.normal(scale=0.5, size=(n, C))
    logits[np.arange(n), y] += face_signal
    P = np.exp(logits)
    P /= P.sum(axis=1, keepdims=True)
    groups = np.array([f"p{i // 4}" for i in range(n)])
    return P, y, train, groups, prior


def test_face_blind_probe_scores_chance_once_prior_corrected():
    P, y, train, groups, prior = _frequency_world()
    blind = np.broadcast_to(train_prior(train, n_classes=20), P.shape).copy()
    r = forced_choice(blind, y, prior=train_prior(train, n_classes=20), n_way=2, groups=groups, seed=1)
    # It beats chance raw (it knows frequencies) but its corrected score is exactly a tie: 0.5.
    assert r.raw.accuracy > 0.6
    assert r.raw.accuracy == pytest.approx(r.prior_only.accuracy)
    assert r.prior_corrected.accuracy == pytest.approx(0.5)
    assert r.ci_method == "cluster bootstrap over identities"


def _blind_probas(n, prior, seed):
    """What a probe refit on names shuffled across identities predicts: the prior, no face evidence."""
    rng = np.random.default_rng(seed)
    logits = np.log(prior)[None, :] + rng.normal(scale=0.5, size=(n, prior.size))
    P = np.exp(logits)
    return P / P.sum(axis=1, keepdims=True)


def test_face_signal_beats_the_refit_null_and_each_score_sits_beside_its_own():
    P, y, train, groups, prior = _frequency_world(face_signal=1.0, seed=2)
    nulls = [_blind_probas(len(y), prior, 100 + i) for i in range(20)]
    p_train = train_prior(train, n_classes=20)
    r = forced_choice(P, y, prior=p_train, n_way=2, groups=groups, seed=3, null_probas=nulls, n_boot=300)
    assert r.prior_corrected.ci_low > 0.55
    # Refit on shuffled names, a probe knows the frequencies only: its prior-corrected score is
    # chance, its raw score is the face-blind rule's.
    assert r.prior_corrected.null_mean == pytest.approx(0.5, abs=0.02)
    assert r.raw.null_mean == pytest.approx(r.prior_only.accuracy, abs=0.03)
    assert r.null["mean"] == r.prior_corrected.null_mean and r.null["repeats"] == 20
    assert r.null["p_value"] < 0.1 and r.null["shuffled_across"] == "identities" and "refit" in r.null["method"]
    assert r.prior_corrected.null_q975 < r.prior_corrected.accuracy
    assert r.raw.ci_low <= r.raw.accuracy <= r.raw.ci_high
    with pytest.raises(ValueError, match="not both"):
        forced_choice(P, y, prior=p_train, null_probas=nulls, null_repeats=5)


def test_refit_null_of_the_linear_probe_centres_on_chance(tmp_path):
    # The shuffled-name null of `probes linear --permutations N --forced-choice`: N refits on names
    # shuffled across identities, scored against the true test names under the same foils.
    from click.testing import CliRunner

    from probes.cli import main
    from tests.synthetic import planted_store

    store = planted_store(tmp_path / "s.zarr", n_names=8, images_per_person=6, signal=1.0, seed=7)
    res = CliRunner().invoke(main, ["linear", "--store", str(store.path), "--model", "toy", "--forced-choice",
                                    "--permutations", "5", "--lambdas", "1e-2,1e-1,1", "--n-boot", "100",
                                    "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "r"),
                                    "--experiment", "fc"])
    assert res.exit_code == 0, res.output
    import json

    s = json.loads((tmp_path / "r" / "track3_fc" / "summary.json").read_text())
    for fc in (e for e in s["extra"]["forced_choice"] if e["n_way"] == 2):
        null = fc["null"]["by_score"]
        assert null["prior_corrected"]["mean"] == pytest.approx(0.5, abs=0.07), fc
        assert fc["prior_corrected"]["accuracy"] > null["prior_corrected"]["q975"]
        assert fc["prior_corrected"]["null_mean"] == null["prior_corrected"]["mean"]
        assert fc["null"]["repeats"] == 5 and s["permutation"]["n"] == 5


def test_no_signal_ci_includes_chance():
    P, y, train, groups, _ = _frequency_world(face_signal=0.0, seed=4)
    r = forced_choice(P, y, prior=train_prior(train, n_classes=20), n_way=4, foils="popularity",
                      groups=groups, seed=0, n_boot=300, popularity_pool=6)
    assert r.prior_corrected.ci_low <= 0.25 <= r.prior_corrected.ci_high
    assert r.chance == 0.25 and r.popularity_pool == 6


def test_foils_are_seeded_distinct_and_popularity_matched():
    prior = np.linspace(1, 0.01, 30)
    prior /= prior.sum()
    y = np.repeat(np.arange(30), 10)
    f1 = sample_foils(y, n_classes=30, n_way=4, kind="uniform", prior=prior, rng=np.random.default_rng(5))
    f2 = sample_foils(y, n_classes=30, n_way=4, kind="uniform", prior=prior, rng=np.random.default_rng(5))
    assert np.array_equal(f1, f2)
    assert not np.any(f1 == y[:, None])
    assert all(len(set(row)) == 3 for row in f1)
    fp = sample_foils(y, n_classes=30, n_way=2, kind="popularity", prior=prior, rng=np.random.default_rng(5),
                      popularity_pool=2)
    # Prior is monotone in the index, so the two nearest-frequency names are the index neighbours.
    assert np.all(np.abs(fp[:, 0] - y) <= 2) and not np.any(fp[:, 0] == y)


def test_ties_split_the_credit():
    scores = np.array([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]])
    out = choice_outcomes(scores, np.array([0, 0]), np.array([[1], [1]]))
    np.testing.assert_allclose(out, [0.5, 0.0])


def test_report_covers_every_protocol():
    P, y, train, groups, _ = _frequency_world(n=600, seed=6)
    rep = forced_choice_report(P, y, train_labels=train, groups=groups, n_boot=100)
    assert [(r["n_way"], r["foils"]) for r in rep] == [(2, "uniform"), (2, "popularity"), (4, "uniform"),
                                                       (4, "popularity")]
    assert all({"raw", "prior_corrected", "prior_only", "seed"} <= set(r) for r in rep)
    assert all(r["null"] is None and r["raw"]["null_mean"] is None for r in rep)
    with pytest.raises(ValueError, match="positive"):
        forced_choice(P, y, prior=np.zeros(20))

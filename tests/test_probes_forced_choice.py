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


def test_face_signal_survives_prior_correction_and_beats_the_null():
    P, y, train, groups, _ = _frequency_world(face_signal=1.0, seed=2)
    r = forced_choice(P, y, prior=train_prior(train, n_classes=20), n_way=2, groups=groups, seed=3,
                      null_repeats=20, n_boot=300)
    assert r.prior_corrected.ci_low > 0.55
    # The null is not exactly 0.5: a shuffled name equals the true one at the prior-matched rate.
    assert r.null["q975"] < r.prior_corrected.accuracy - 0.05
    assert r.null["p_value"] < 0.1 and r.null["shuffled_across"] == "identities"
    assert r.raw.ci_low <= r.raw.accuracy <= r.raw.ci_high


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
    with pytest.raises(ValueError, match="positive"):
        forced_choice(P, y, prior=np.zeros(20))

"""Pure metrics, chance levels, bootstrap CIs and p-values, paired bootstrap, permutation shuffles."""

from __future__ import annotations

import numpy as np
import pytest

from probes import metrics as M
from probes import stats as S


def test_evaluate_model_matches_the_plan_and_covers_all_names():
    names = ["Anna", "Bob", "Cleo", "Dan"]
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])  # Dan never in the test set nor predicted
    out = M.evaluate_model(pred, y, names)
    assert out["accuracy"] == pytest.approx(4 / 6)
    counts = np.array([2, 3, 1, 0])
    assert out["prediction_cv"] == pytest.approx(counts.std() / counts.mean())
    assert set(out["per_class_report"]) >= set(names)
    assert out["per_class_report"]["Dan"]["f1-score"] == 0.0
    assert out["top5_names"][0][0] == "Bob" and len(out["top5_names"]) == 4
    assert out["bottom5_names"][-1] == ("Dan", 0.0)


def test_headline_metrics_and_chance_levels():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.zeros(8, int)
    m = M.headline_metrics(y, pred, n_classes=4, top5=np.tile(np.arange(4), (8, 1)))
    assert m["accuracy"] == 0.5
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)  # recall 1, 0, 0 over 3 present names
    assert m["top5_accuracy"] == 1.0 and m["distinct_predicted"] == 1 and m["entropy"] == 0.0
    ch = M.chance_levels(y, train_labels=np.array([0, 0, 1, 2]), n_classes=4)
    assert ch["uniform"] == 0.25 and ch["majority"] == 0.5
    assert ch["prior_matched"] == pytest.approx(0.5 * 0.5 + 0.25 * 0.25 + 0.25 * 0.25)
    assert ch["balanced_constant"] == pytest.approx(1 / 3) and ch["best_top1"] == 0.5


def test_top_k_indices_are_best_first():
    scores = np.array([[0.1, 0.5, 0.2, 0.9, 0.0, 0.3]])
    assert M.top_k_indices(scores, k=3).tolist() == [[3, 1, 5]]


def _people(n_people=60, per=5, n_classes=6, seed=0):
    rng = np.random.default_rng(seed)
    person_name = rng.integers(0, n_classes, n_people)
    groups = np.repeat(np.arange(n_people), per)
    return person_name[groups], groups.astype(str), rng


def test_always_majority_is_never_significant():
    y, groups, _ = _people()
    train = np.r_[y, np.zeros(50, int)]
    majority = np.bincount(train).argmax()
    out = S.bootstrap_metrics(y, np.full(y.size, majority), n_classes=6, groups=groups,
                              train_labels=train, n_boot=200)
    assert out["p_value"]["balanced_accuracy"] == 1.0 and out["p_value"]["accuracy"] == 1.0
    assert out["method"] == "cluster bootstrap over identities"


def test_cluster_ci_is_wider_than_image_ci_when_people_are_correlated():
    y, groups, rng = _people(n_people=40, per=10)
    # Correctness is a property of the person: whole identities right or wrong.
    person_ok = rng.random(40) < 0.5
    pred = np.where(person_ok[groups.astype(int)], y, (y + 1) % 6)
    cl = S.bootstrap_metrics(y, pred, n_classes=6, groups=groups, n_boot=300)
    im = S.bootstrap_metrics(y, pred, n_classes=6, groups=None, n_boot=300)
    width = lambda o: o["ci"]["accuracy"][1] - o["ci"]["accuracy"][0]  # noqa: E731
    assert width(cl) > 1.8 * width(im)
    assert "accuracy_wilson" in im["ci"] and im["method"] == "image bootstrap"


def test_wilson_interval_known_value():
    lo, hi = S.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


def test_paired_bootstrap_detects_a_better_model_and_ties_itself():
    y, groups, rng = _people(n_people=80, per=4)
    good = np.where(rng.random(y.size) < 0.7, y, (y + 1) % 6)
    bad = np.where(rng.random(y.size) < 0.3, y, (y + 2) % 6)
    out = S.paired_bootstrap(y, good, bad, n_classes=6, groups=groups, n_boot=300)
    assert out["difference"] > 0 and out["ci"][0] > 0 and out["p_value"] < 0.05
    same = S.paired_bootstrap(y, good, good, n_classes=6, groups=groups, n_boot=100)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]


def test_shuffle_across_identities_keeps_people_per_name():
    y, groups, _ = _people(n_people=50, per=3)
    shuffled = S.shuffle_names_across_identities(y, groups, seed=1)
    assert not np.array_equal(shuffled, y)
    for g in np.unique(groups):  # each person still has one name
        assert np.unique(shuffled[groups == g]).size == 1
    people_per_name = lambda lab: np.bincount(lab[::3], minlength=6)  # noqa: E731
    assert np.array_equal(people_per_name(shuffled), people_per_name(y))
    assert S.permutation_p_value(0.5, np.array([0.1, 0.2, 0.6])) == pytest.approx(0.5)


def _ece_loop(y, P, n_bins=15):
    """Guo et al. 2017, written out bin by bin (the reference the vectorised version must match)."""
    conf, pred = P.max(axis=1), P.argmax(axis=1)
    total = 0.0
    for m in range(1, n_bins + 1):
        lo, hi = (m - 1) / n_bins, m / n_bins
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


def test_calibration_metrics_match_sklearn_and_the_ece_definition():
    from sklearn.metrics import brier_score_loss, log_loss

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(300, 7)) * 2
    y = rng.integers(0, 7, 300)
    P, source = M.as_probabilities(logits)
    assert source == "softmax(scores)" and np.allclose(P.sum(axis=1), 1)
    assert M.as_probabilities(P)[1] == "scores"
    # sklearn's log_loss and multi-class brier_score_loss are the references (float round-off only).
    assert M.negative_log_likelihood(y, P) == pytest.approx(log_loss(y, P, labels=range(7)), rel=1e-10)
    assert M.brier_score(y, P) == pytest.approx(brier_score_loss(y, P, labels=range(7)), rel=1e-10)
    assert M.expected_calibration_error(y, P) == pytest.approx(_ece_loop(y, P), abs=1e-12)
    # A hand-computed ECE: two rows at confidence 0.9 (one right), one at 0.6 (right), 15 bins.
    Q = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    assert M.expected_calibration_error(np.array([0, 1, 1]), Q) == pytest.approx((2 / 3) * 0.4 + (1 / 3) * 0.4)
    cal = M.calibration_metrics(y, P, source=source)
    assert cal["ece_bins"] == 15 and set(cal) >= {"nll", "ece", "brier", "source"}


def test_run_evaluation_uses_given_probabilities_for_calibration_only():
    from probes.evaluation import run_evaluation

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 80)
    groups = np.repeat(np.arange(20), 4).astype(str)
    logits = rng.normal(size=(80, 4))
    P = np.full((80, 4), 0.25)
    ev = run_evaluation(logits, y, names=list("abcd"), groups=groups, train_labels=y, n_boot=50)
    assert ev["calibration"]["source"] == "softmax(scores)"
    given = run_evaluation(logits, y, names=list("abcd"), groups=groups, train_labels=y, n_boot=50, probabilities=P)
    assert given["calibration"]["source"] == "probabilities"
    assert given["calibration"]["nll"] == pytest.approx(np.log(4))
    assert np.array_equal(given["predictions"], ev["predictions"])  # decisions still come from the scores
    with pytest.raises(ValueError, match="rows summing to 1"):
        run_evaluation(logits, y, names=list("abcd"), groups=groups, train_labels=y, n_boot=50, probabilities=logits)

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
    # It scores its baselines exactly; the resampled estimate straddles them.
    assert out["p_value"]["balanced_accuracy"] > 0.2 and out["p_value"]["accuracy"] > 0.2
    assert out["ci"]["balanced_accuracy"][0] <= out["baseline"]["balanced_accuracy"] <= out["ci"]["balanced_accuracy"][1]
    assert out["baseline"]["accuracy"] == pytest.approx(np.mean(y == majority))
    assert out["method"] == "cluster bootstrap over identities" and out["interval"] == "BCa"


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


def test_bca_interval_matches_scipy():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    x = rng.exponential(size=40)  # skewed: BCa differs visibly from the percentile interval
    boot = x[rng.integers(0, 40, (20000, 40))].mean(axis=1)
    jack = np.array([np.delete(x, i).mean() for i in range(40)])
    ours = S.bca_interval(x.mean(), boot, jack)["ci"]
    ref = bootstrap((x,), np.mean, method="BCa", n_resamples=20000, random_state=2).confidence_interval
    se = x.std(ddof=1) / np.sqrt(40)
    # Both are Monte Carlo estimates from 20,000 resamples: agree within 15% of a standard error.
    assert ours[0] == pytest.approx(ref.low, abs=0.15 * se) and ours[1] == pytest.approx(ref.high, abs=0.15 * se)
    pct = np.percentile(boot, [2.5, 97.5])
    assert ours[1] - pct[1] > 0.3 * se  # the skew correction is really applied


def test_ci_excludes_the_baseline_exactly_when_one_sided_p_is_below_0025():
    y, groups, _ = _people(n_people=60, per=5)
    seen = set()
    for i in range(40):
        rng = np.random.default_rng(i)
        pred = np.where(rng.random(y.size) < rng.uniform(0, 0.4), y, rng.integers(0, 6, y.size))
        out = S.bootstrap_metrics(y, pred, n_classes=6, groups=groups, train_labels=y, n_boot=100, seed=i)
        for k in ("balanced_accuracy", "accuracy"):
            excludes = out["ci"][k][0] > out["baseline"][k]
            assert excludes == (out["p_value"][k] < 0.025), (i, k, out["ci"][k], out["baseline"][k], out["p_value"][k])
            seen.add(excludes)
    assert seen == {True, False}  # both outcomes occurred, so the check is not vacuous


def test_a_resample_missing_a_name_keeps_the_same_weighted_mean():
    # Name 0: one identity, always right; names 1-3: three identities each, always wrong.
    y = np.r_[np.zeros(5, int), np.repeat([1, 2, 3], 6)]
    groups = np.r_[np.zeros(5, int), 1 + np.arange(18) // 2].astype(str)
    pred = np.zeros(y.size, int)
    out = S.bootstrap_metrics(y, pred, n_classes=4, groups=groups, train_labels=y, n_boot=2000, return_replicates=True)
    reps = out["replicates"]["balanced_accuracy"]
    # Averaging recall over the names a resample happens to draw puts the replicates 0.6 sd
    # below the estimate 0.25 (35% of resamples miss name 0); fixed weights keep them centred.
    assert abs(reps.mean() - 0.25) < 0.25 * reps.std()
    assert not out["reliable"] and "fewer than 5 test identities" in out["reliability"][0]


def test_reliability_flags():
    y, groups, rng = _people(n_people=120, per=3)
    pred = np.where(rng.random(y.size) < 0.5, y, (y + 1) % 6)
    ok = S.bootstrap_metrics(y, pred, n_classes=6, groups=groups, n_boot=60)
    assert ok["reliable"] and ok["identities_per_name"]["min"] >= 5
    img = S.bootstrap_metrics(y, pred, n_classes=6, groups=None, n_boot=60)
    assert not img["reliable"] and "no identities" in img["reliability"][0]
    few = S.bootstrap_metrics(y, pred, n_classes=6, groups=groups, n_boot=20)
    assert not few["reliable"] and "n_boot=20" in few["reliability"][-1]


def test_holm_and_benjamini_hochberg_match_their_definitions():
    from scipy.stats import false_discovery_control

    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.04])
    m = p.size
    order = np.argsort(p, kind="stable")
    holm_ref = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):  # Holm 1979: step down, monotone, capped at 1
        running = max(running, min(1.0, (m - rank) * p[i]))
        holm_ref[i] = running
    assert S.holm(p) == pytest.approx(holm_ref, abs=1e-12)
    assert S.adjust_p_values(p, "bh") == pytest.approx(false_discovery_control(p, method="bh"), abs=1e-12)
    assert (S.holm(p) >= p).all() and (S.benjamini_hochberg(p) <= S.holm(p) + 1e-12).all()
    with pytest.raises(ValueError, match="holm, bh"):
        S.adjust_p_values(p, "bonferroni")


def test_paired_bootstrap_detects_a_better_model_and_ties_itself():
    y, groups, rng = _people(n_people=80, per=4)
    good = np.where(rng.random(y.size) < 0.7, y, (y + 1) % 6)
    bad = np.where(rng.random(y.size) < 0.3, y, (y + 2) % 6)
    out = S.paired_bootstrap(y, good, bad, n_classes=6, groups=groups, n_boot=300)
    assert out["difference"] > 0 and out["ci"][0] > 0 and out["p_value"] < 0.05
    same = S.paired_bootstrap(y, good, good, n_classes=6, groups=groups, n_boot=100)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    # CI and p from the same replicates agree; seeds combine by averaging replicates.
    for seed in range(10):
        close = np.where(np.random.default_rng(seed).random(y.size) < 0.05, (y + 3) % 6, good)
        r = S.paired_bootstrap(y, good, close, n_classes=6, groups=groups, n_boot=100, seed=seed,
                               return_replicates=True)
        assert (r["ci"][0] > 0 or r["ci"][1] < 0) == (r["p_value"] < 0.05)
    a = S.paired_bootstrap(y, good, bad, n_classes=6, groups=groups, n_boot=100, return_replicates=True)
    b = S.paired_bootstrap(y, good, good, n_classes=6, groups=groups, n_boot=100, return_replicates=True)
    both = S.combine_paired([a, b])
    assert both["n_seeds"] == 2 and both["difference"] == pytest.approx(a["difference"] / 2)
    assert both["ci"][0] > 0


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
    assert cal["ece_bins"] == 15 and set(cal) >= {"nll", "ece", "brier", "source", "reliability"}


def test_reliability_table_is_the_ece_bin_by_bin():
    """The diagram's bins, checked against the written-out loop; count-weighted gaps sum to the ECE."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(400, 5)) * 3
    y = rng.integers(0, 5, 400)
    P, _ = M.as_probabilities(logits)
    tab = M.reliability_table(y, P)
    conf, pred = P.max(axis=1), P.argmax(axis=1)
    assert len(tab["edges"]) == 16 and tab["edges"][0] == 0.0 and tab["edges"][-1] == 1.0
    for m in range(15):
        inside = (conf > m / 15) & (conf <= (m + 1) / 15)
        assert tab["count"][m] == int(inside.sum())
        if inside.any():
            assert tab["confidence"][m] == pytest.approx(conf[inside].mean(), abs=1e-12)
            assert tab["accuracy"][m] == pytest.approx((pred[inside] == y[inside]).mean(), abs=1e-12)
        else:
            assert tab["confidence"][m] is None and tab["accuracy"][m] is None
    assert sum(tab["count"]) == 400
    gaps = sum(c * abs(a - f) for c, a, f in zip(tab["count"], tab["accuracy"], tab["confidence"]) if c)
    assert gaps / 400 == pytest.approx(M.expected_calibration_error(y, P), abs=1e-12)
    assert M.calibration_metrics(y, P, source="x")["reliability"] == tab


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

"""LinearProbe / LinearSweep: the estimator contract, batched sweep == independent fits, halving."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from probes.errors import ProbeConfigError
from probes.linear import LinearProbe, LinearSweep

NAMES = np.array(["Anna", "Bob", "Cleo", "Dan", "Eve"])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 1.2
    y = rng.choice(5, size=900, p=[0.4, 0.25, 0.15, 0.1, 0.1])
    X = (rng.normal(size=(900, 16)) + centers[y]).astype(np.float32)
    return X[:600], NAMES[y[:600]], X[600:], NAMES[y[600:]]


FAST = dict(epochs=3, batch_size=128, n_threads=1, random_state=0)


def test_estimator_contract(problem):
    Xtr, ytr, Xte, yte = problem
    probe = LinearProbe(lr=1e-2, weight_decay=1e-3, **FAST)
    with pytest.raises(NotFittedError):
        probe.predict(Xte)
    assert probe.fit(Xtr, ytr) is probe
    assert list(probe.classes_) == sorted(NAMES)
    pred = probe.predict(Xte)
    assert set(pred) <= set(NAMES)
    proba = probe.predict_proba(Xte)
    assert proba.shape == (len(Xte), 5) and np.allclose(proba.sum(1), 1)
    assert np.array_equal(probe.classes_[proba.argmax(1)], pred)
    assert probe.decision_function(Xte).shape == (len(Xte), 5)
    assert probe.score(Xte, yte) > 0.6
    assert clone(probe).get_params() == probe.get_params()
    assert probe.coef_.shape == (16, 5) and probe.device_ == "cpu"


def test_fixed_classes_keep_absent_names_as_columns(problem):
    Xtr, ytr, Xte, _ = problem
    classes = np.r_[NAMES, ["Zed"]]
    probe = LinearProbe(classes=classes, **FAST).fit(Xtr, ytr)
    assert list(probe.classes_) == list(classes) and probe.predict_proba(Xte).shape[1] == 6
    with pytest.raises(ProbeConfigError, match="not among"):
        LinearProbe(classes=NAMES[:3], **FAST).fit(Xtr, ytr)
    with pytest.raises(ProbeConfigError, match="balance"):
        LinearProbe(balance="oversample").fit(Xtr, ytr)


def test_sweep_members_equal_independent_fits(problem):
    Xtr, ytr, Xva, yva = problem
    grid = [1e-3, 1e-1, 3.0]
    sweep = LinearSweep(grid, lrs=(1e-2, 3e-2), extend_grid=False, **FAST).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    assert sweep.coef_grid_.shape == (6, 16, 5) and len(sweep.cv_results_["params"]) == 6
    for g, (wd, lr) in enumerate(sweep.members_):
        alone = LinearProbe(lr=lr, weight_decay=wd, **FAST).fit(Xtr, ytr)
        np.testing.assert_allclose(sweep.coef_grid_[g], alone.coef_, atol=1e-5)
        np.testing.assert_allclose(sweep.intercept_grid_[g], alone.intercept_, atol=1e-5)
    best = sweep.best_index_
    assert sweep.cv_results_["rank_val_score"][best] == 1
    assert sweep.best_score_ == max(sweep.cv_results_["val_score"])
    # Refit on train+val with the chosen parameters, used by predict.
    ref = sweep.make_probe().fit(np.r_[Xtr, Xva], np.r_[ytr, yva])
    np.testing.assert_allclose(sweep.predict_proba(Xva), ref.predict_proba(Xva), atol=1e-5)


def test_sweep_extends_the_grid_when_the_best_is_on_an_edge(problem):
    Xtr, ytr, Xva, yva = problem
    grid = [3.0, 10.0]  # two points: the best is always on an edge, so the grid must move
    sweep = LinearSweep(grid, lrs=(1e-2,), max_extensions=1, extend_steps=2, **FAST).fit(
        Xtr, ytr, X_val=Xva, y_val=yva
    )
    ext = sweep.grid_extensions_[0]
    assert ext["param"] == "weight_decay" and len(ext["added"]) == 2
    assert all(a > 10.0 for a in ext["added"]) if ext["edge"] == "high" else all(a < 3.0 for a in ext["added"])
    assert len(sweep.cv_results_["params"]) == 4
    assert isinstance(sweep.edge_optimum_, bool)
    fixed = LinearSweep(grid, lrs=(1e-2,), extend_grid=False, **FAST).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    assert fixed.grid_extensions_ == [] and fixed.edge_optimum_ is True


def test_logit_adjust_chooses_tau_on_validation_and_flattens_predictions(problem):
    Xtr, ytr, Xva, yva = problem
    plain = LinearSweep([1e-2], lrs=(1e-2,), extend_grid=False, **FAST).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    adj = LinearSweep([1e-2], lrs=(1e-2,), extend_grid=False, balance="logit-adjust", taus=(0.0, 1.0, 2.0),
                      **FAST).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    assert plain.best_params_["tau"] is None and adj.best_params_["tau"] in (0.0, 1.0, 2.0)
    z_plain = adj.best_estimator_._raw_logits(Xva)
    shift = adj.best_estimator_.decision_function(Xva) - z_plain
    np.testing.assert_allclose(shift[0], -adj.best_params_["tau"] * adj.best_estimator_.log_prior_, rtol=1e-5)


def test_weighted_and_lbfgs_fit(problem):
    Xtr, ytr, Xte, yte = problem
    w = LinearProbe(balance="weighted", lr=1e-2, **FAST).fit(Xtr, ytr)
    plain = LinearProbe(lr=1e-2, **FAST).fit(Xtr, ytr)
    rare = np.isin(yte, ["Dan", "Eve"])
    assert (w.predict(Xte)[rare] == yte[rare]).mean() >= (plain.predict(Xte)[rare] == yte[rare]).mean()
    lb = LinearProbe("lbfgs", weight_decay=1e-3, max_iter=50, features="l2-standardize", n_threads=1).fit(Xtr, ytr)
    assert lb.score(Xte, yte) > 0.6


def test_sweep_holds_out_validation_by_group(problem):
    Xtr, ytr, _, _ = problem
    groups = np.repeat(np.arange(len(Xtr) // 3), 3)
    sweep = LinearSweep([1e-2, 1e-1], lrs=(1e-2,), extend_grid=False, **FAST).fit(Xtr, ytr, groups=groups)
    assert "by group" in sweep.validation_ and sweep.best_estimator_.n_features_in_ == 16


def test_successive_halving_stops_the_worse_half_and_finishers_equal_independent_fits(problem):
    Xtr, ytr, Xva, yva = problem
    grid = [1e-3, 1e-1, 3.0, 30.0]
    sweep = LinearSweep(grid, lrs=(3e-2,), extend_grid=False, halving_epochs=(1, 2), scoring="accuracy",
                        **FAST).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    cv = sweep.cv_results_
    # 4 members -> 2 stop after epoch 1 -> 1 stops after epoch 2 -> 1 trains all 3 epochs.
    assert sorted(cv["epochs_trained"]) == [1, 1, 2, 3]
    assert cv["stopped_early"] == [e < 3 for e in cv["epochs_trained"]]
    finisher = cv["epochs_trained"].index(3)
    assert sweep.best_index_ == finisher and cv["rank_val_score"][finisher] == 1
    assert sorted(cv["rank_val_score"]) == [1, 2, 3, 4]
    wd, lr = sweep.members_[finisher]
    alone = LinearProbe(lr=lr, weight_decay=wd, **FAST).fit(Xtr, ytr)
    np.testing.assert_allclose(sweep.coef_grid_[finisher], alone.coef_, atol=1e-5)
    # A stopped member's recorded score is that of its stored head at the stop.
    mu, sd = Xtr.mean(0), Xtr.std(0, ddof=1)
    for g in range(4):
        z = ((Xva - mu) / sd) @ sweep.coef_grid_[g] + sweep.intercept_grid_[g]
        assert abs((sweep.classes_[z.argmax(1)] == yva).mean() - cv["val_accuracy"][g]) < 2 / len(yva)
    with pytest.raises(ProbeConfigError, match="halving_epochs"):
        LinearSweep(grid, halving_epochs=(3,), **FAST).fit(Xtr, ytr, X_val=Xva, y_val=yva)

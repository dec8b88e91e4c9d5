"""LinearProbe / LinearSweep: L2 logistic regression solved to convergence, checked against scikit-learn.

Tolerances: at a fixed lambda the coefficients equal scikit-learn's ``LogisticRegression(C=1/(lambda n))``
(lbfgs, tol 1e-10) to 1e-3 relative (Frobenius) and the test log-loss to 1e-4; with the grid,
test balanced accuracy and top-1 equal scikit-learn's (the same grid, validation rows and
selection rule) within one standard error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from probes.errors import ProbeConfigError
from probes.linear import LinearProbe, LinearSweep, c_from_lambda, default_lambdas
from probes.linear_path import select, validation_metrics

NAMES = np.array(["Anna", "Bob", "Cleo", "Dan", "Eve"])
ONE = dict(n_threads=1)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 1.2
    y = rng.choice(5, size=900, p=[0.4, 0.25, 0.15, 0.1, 0.1])
    X = (rng.normal(size=(900, 16)) + centers[y]).astype(np.float32)
    return X[:600], NAMES[y[:600]], X[600:], NAMES[y[600:]]


def planted(n, dim, n_classes, signal, seed):
    """Zipf-like class frequencies, class means N(0, signal^2) per dimension, unit noise."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_classes + 1) ** 0.5
    y = rng.choice(n_classes, size=n, p=p / p.sum())
    X = (rng.normal(size=(n, dim)) + rng.normal(size=(n_classes, dim))[y] * signal).astype(np.float32)
    return X, y


def test_estimator_contract(problem):
    Xtr, ytr, Xte, yte = problem
    probe = LinearProbe(1e-2, **ONE)
    with pytest.raises(NotFittedError):
        probe.predict(Xte)
    assert probe.fit(Xtr, ytr) is probe
    assert list(probe.classes_) == sorted(NAMES)
    proba = probe.predict_proba(Xte)
    assert proba.shape == (len(Xte), 5) and np.allclose(proba.sum(1), 1)
    assert np.array_equal(probe.classes_[proba.argmax(1)], probe.predict(Xte))
    assert probe.score(Xte, yte) > 0.8
    assert clone(probe).get_params() == probe.get_params()
    assert probe.coef_.shape == (16, 5) and probe.device_ == "cpu"
    assert probe.converged_ and probe.n_iter_ > 0 and probe.grad_norm_ <= probe.tol * probe.grad_scale_
    assert probe.C_ == pytest.approx(1 / (1e-2 * len(Xtr)))
    classes = np.r_[NAMES, ["Zed"]]  # a fixed class order keeps names absent from training as columns
    wide = LinearProbe(1e-2, classes=classes, **ONE).fit(Xtr, ytr)
    assert list(wide.classes_) == list(classes) and wide.predict_proba(Xte).shape[1] == 6
    with pytest.raises(ProbeConfigError, match="not among"):
        LinearProbe(classes=NAMES[:3], **ONE).fit(Xtr, ytr)
    with pytest.raises(ProbeConfigError, match="balance"):
        LinearProbe(balance="oversample").fit(Xtr, ytr)
    with pytest.raises(ProbeConfigError, match="l2 must be > 0"):
        LinearProbe(0.0).fit(Xtr, ytr)


@pytest.mark.parametrize("lam,balance", [(1e-1, "none"), (1e-2, "none"), (1e-3, "none"), (1e-2, "weighted")])
def test_fixed_lambda_equals_scikit_learn(problem, lam, balance):
    Xtr, ytr, Xte, yte = problem
    mu, sd = Xtr.mean(0), Xtr.std(0, ddof=1)
    Ztr, Zte = ((Xtr - mu) / sd).astype(np.float64), ((Xte - mu) / sd).astype(np.float64)
    # Same feature space (standardised here, features="none" there) and the same objective.
    ours = LinearProbe(lam, features="none", balance=balance, tol=1e-7, **ONE).fit(Ztr, ytr)
    with threadpool_limits(1):
        theirs = LogisticRegression(C=c_from_lambda(lam, len(ytr)), tol=1e-10, max_iter=10_000,
                                    class_weight="balanced" if balance == "weighted" else None).fit(Ztr, ytr)
    assert ours.converged_
    rel = np.linalg.norm(ours.coef_ - theirs.coef_.T) / np.linalg.norm(theirs.coef_)
    assert rel < 1e-3, rel
    # The unpenalised intercept is defined up to a constant shift across classes: compare centred.
    b, b_sk = ours.intercept_ - ours.intercept_.mean(), theirs.intercept_ - theirs.intercept_.mean()
    np.testing.assert_allclose(b, b_sk, atol=1e-3 * max(1.0, np.abs(b_sk).max()))
    rows = np.arange(len(yte))
    ll = -np.log(ours.predict_proba(Zte)[rows, np.searchsorted(ours.classes_, yte)]).mean()
    ll_sk = -np.log(theirs.predict_proba(Zte)[rows, np.searchsorted(theirs.classes_, yte)]).mean()
    assert abs(ll - ll_sk) < 1e-4, (ll, ll_sk)


@pytest.mark.parametrize("signal,seed", [(0.6, 1), (0.15, 2)], ids=["strong", "weak"])
def test_grid_selection_equals_scikit_learn_within_one_standard_error(signal, seed):
    from probes.metrics import accuracy, balanced_accuracy

    X, y = planted(4000, 32, 20, signal, seed)
    mu, sd = X[:2000].mean(0), X[:2000].std(0)
    X = (X - mu) / sd
    Xtr, ytr, Xva, yva, Xte, yte = X[:2000], y[:2000], X[2000:2600], y[2000:2600], X[2600:], y[2600:]
    sweep = LinearSweep(features="none", **ONE).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    assert sweep.converged_ and not sweep.edge_optimum_
    # scikit-learn over every value of the same grid, the same validation rows, the same rule.
    grid = default_lambdas()
    fits, rows = [], []
    with threadpool_limits(1):  # scikit-learn's OpenMP threads spin against the other tests on a loaded machine
        for lam in grid:
            clf = LogisticRegression(C=c_from_lambda(lam, len(ytr)), tol=1e-6, max_iter=2000).fit(Xtr, ytr)
            fits.append(clf)
            rows.append(validation_metrics(clf.decision_function(Xva).astype(np.float64), yva, "balanced_accuracy"))
    sk = fits[select(rows, "balanced_accuracy")]
    head = sweep.coef_grid_[sweep.best_index_], sweep.intercept_grid_[sweep.best_index_]
    ours_pred = (Xte @ head[0] + head[1]).argmax(1)
    sk_pred = sk.predict(Xte)
    se = np.sqrt(0.25 / len(yte))  # the largest binomial standard error at this test size
    assert abs(accuracy(yte, ours_pred) - accuracy(yte, sk_pred)) <= se
    assert abs(balanced_accuracy(yte, ours_pred) - balanced_accuracy(yte, sk_pred)) <= se
    assert balanced_accuracy(yte, ours_pred) > 1.5 / 20  # a real signal was found


def test_real_signal_gives_a_validation_curve_not_a_plateau():
    # The case: ~1,200 training rows, 30 names. A converged path must rise and fall on
    # validation (under-fitted mini-batch steps scored every weight decay the same).
    X, y = planted(2200, 64, 30, 0.35, 3)
    Xtr, ytr, Xva, yva = X[:1200], y[:1200], X[1200:], y[1200:]
    sweep = LinearSweep(**ONE).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    cv = sweep.cv_results_
    scores = np.asarray(cv["val_score"])
    best = sweep.best_index_
    assert all(cv["converged"]) and sweep.best_estimator_.converged_
    assert scores[best] - scores.min() > 5 * cv["val_score_se"][best]
    assert np.argmin(cv["val_log_loss"]) not in (0, len(scores) - 1)  # a real optimum inside the path
    assert 0 < best < len(scores) - 1 and not sweep.edge_optimum_
    W = sweep.best_estimator_.coef_
    assert np.isfinite(W).all() and np.abs(W).max() < 10  # no blown-up head
    assert sweep.best_estimator_.score(Xtr, ytr) > sweep.best_score_ > 2 / 30


def test_coarse_to_fine_walk_matches_the_full_grid_with_fewer_fits():
    X, y = planted(1600, 24, 12, 0.4, 4)
    kw = dict(features="none", refit=False, **ONE)
    fast = LinearSweep(**kw).fit(X[:1100], y[:1100], X_val=X[1100:], y_val=y[1100:])
    full = LinearSweep(search="full", **kw).fit(X[:1100], y[:1100], X_val=X[1100:], y_val=y[1100:])
    assert len(full.cv_results_["param_lambda"]) == len(default_lambdas())
    assert len(fast.cv_results_["param_lambda"]) < len(full.cv_results_["param_lambda"])
    assert fast.best_params_ == full.best_params_
    # The selected value's grid neighbours were fitted (the refinement), and the two walks agree
    # on every value both fitted (warm starts change the path, not the solutions, to tolerance).
    grid = sorted(default_lambdas(), reverse=True)
    i = grid.index(fast.best_params_["lambda"])
    fitted = fast.cv_results_["param_lambda"]
    assert {grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)} <= set(fitted)
    for g, lam in enumerate(fitted):
        h = full.cv_results_["param_lambda"].index(lam)
        assert abs(fast.cv_results_["val_log_loss"][g] - full.cv_results_["val_log_loss"][h]) < 1e-3
    assert sum(fast.cv_results_["n_iter"]) < sum(full.cv_results_["n_iter"])
    assert set(fast.cv_results_["stage"]) <= {"coarse", "refine", "extension"}


def test_edge_of_the_grid_is_extended_or_reported(problem):
    Xtr, ytr, Xva, yva = problem
    grid = [10.0, 3.0]  # far too strong: the best is the weak edge
    sweep = LinearSweep(grid, max_extensions=1, extend_steps=2, **ONE).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    ext = sweep.grid_extensions_[0]
    assert ext["edge"] == "weak" and len(ext["added"]) == 2 and all(a < 3.0 for a in ext["added"])
    assert len(sweep.cv_results_["param_lambda"]) == 4 and "extension" in sweep.cv_results_["stage"]
    fixed = LinearSweep(grid, extend_grid=False, **ONE).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    assert fixed.grid_extensions_ == [] and fixed.edge_optimum_ is True
    assert any("edge of the grid" in w for w in fixed.warnings_)


def test_a_fit_that_does_not_converge_says_so(problem):
    Xtr, ytr, Xva, yva = problem
    probe = LinearProbe(1e-4, max_iter=2, **ONE).fit(Xtr, ytr)
    assert not probe.converged_ and "max_iter=2" in probe.solver_message_
    sweep = LinearSweep([1e-2, 1e-3], max_iter=2, extend_grid=False, **ONE).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    assert not sweep.converged_ and not any(sweep.cv_results_["converged"])
    assert any("did not converge" in w for w in sweep.warnings_)
    slow = LinearProbe(1e-3, solver="adam", max_epochs=2, batch_size=128, **ONE).fit(Xtr, ytr)
    assert not slow.converged_ and "max_epochs=2" in slow.solver_message_


def test_logit_adjustment_moves_the_decision_not_the_probabilities():
    X, y = planted(3000, 24, 12, 0.35, 5)
    Xtr, ytr, Xva, yva, Xte = X[:1800], y[:1800], X[1800:2400], y[1800:2400], X[2400:]
    adj = LinearSweep(balance="logit-adjust", taus=(0.0, 0.5, 1.0, 1.5), **ONE).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    tau = adj.best_params_["tau"]
    assert tau in (0.0, 0.5, 1.0, 1.5) and set(adj.cv_results_["val_score_by_tau"][0]) == {"0.0", "0.5", "1.0", "1.5"}
    est = adj.best_estimator_
    raw = est._raw_logits(Xte)
    # predict_proba: the model's own calibrated probabilities; the adjusted ones are named so.
    np.testing.assert_allclose(adj.predict_proba(Xte), np.exp(raw) / np.exp(raw).sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(adj.decision_function(Xte) - raw, np.broadcast_to(-tau * est.log_prior_, raw.shape),
                               rtol=1e-5, atol=1e-5)
    z = adj.decision_function(Xte)
    np.testing.assert_allclose(adj.predict_proba_adjusted(Xte), np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-5)
    assert np.array_equal(adj.predict(Xte), est.classes_[z.argmax(1)])
    # The same converged model under balance="none": identical probabilities.
    plain = LinearSweep([adj.best_params_["lambda"]], extend_grid=False, **ONE).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    np.testing.assert_allclose(plain.predict_proba(Xte), adj.predict_proba(Xte), atol=1e-4)


def test_sweep_holds_out_validation_by_group(problem):
    Xtr, ytr, _, _ = problem
    groups = np.repeat(np.arange(len(Xtr) // 3), 3)
    sweep = LinearSweep([1e-2, 1e-1], extend_grid=False, **ONE).fit(Xtr, ytr, groups=groups)
    assert "by group" in sweep.validation_ and sweep.best_estimator_.n_features_in_ == 16
    with pytest.raises(ProbeConfigError, match="lambdas"):
        LinearSweep([0.0]).fit(Xtr, ytr, groups=groups)


def test_cli_linear_help_names_file_and_lambdas(tmp_path):
    from click.testing import CliRunner

    from probes.cli import main, linear_cmd
    from tests.synthetic import planted_store

    assert all(p.help for p in linear_cmd.params if isinstance(p, __import__("click").Option)), \
        [p.name for p in linear_cmd.params if not p.help]
    store = planted_store(tmp_path / "s.zarr", n_names=5, images_per_person=4, dim=16, signal=1.5, seed=6)
    runner = CliRunner()
    missing = runner.invoke(main, ["linear", "--store", str(store.path), "--model", "toy", "--names", "/missing.txt",
                                   "--out", str(tmp_path / "r")])
    assert missing.exit_code != 0 and "file not found: /missing.txt" in missing.output
    res = runner.invoke(main, ["linear", "--store", str(store.path), "--model", "toy", "--lambdas", "1e-3,1e-2,1e-1",
                               "--n-boot", "100", "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "r"),
                               "--experiment", "e"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "r" / "track3_e" / "summary.json").read_text())
    p = s["probe"]
    assert p["converged"] and p["best_params"]["lambda"] in s["extra"]["cv_results"]["param_lambda"]
    assert p["refit"]["C"] == pytest.approx(1 / (p["best_params"]["lambda"] * sum(s["split"]["counts"][k]
                                                                                   for k in ("train", "val"))))
    assert s["extra"]["cv_results"]["converged"] and "edge_optimum" in p
    assert "lambda" in res.output and "converged True" in res.output


def test_ridge_screen_is_closed_form_ridge(problem):
    from sklearn.linear_model import Ridge

    from probes.ridge_screen import RidgeScreen

    Xtr, ytr, Xva, yva = problem
    screen = RidgeScreen([1e-3, 1e-1, 10.0], features="none").fit(Xtr, ytr, X_val=Xva, y_val=yva)
    lam = screen.best_params_["lambda"]
    X, y = np.r_[Xtr, Xva].astype(np.float64), np.r_[ytr, yva]
    Y = (y[:, None] == screen.classes_[None, :]).astype(np.float64)
    ref = Ridge(alpha=lam * len(y)).fit(X, Y)  # ||XW + b - Y||^2 + alpha ||W||^2, alpha = lambda n
    np.testing.assert_allclose(screen.coef_, ref.coef_.T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(screen.decision_function(Xva), ref.predict(Xva), rtol=1e-5, atol=1e-6)
    assert screen.cv_results_["param_lambda"] == [1e-3, 1e-1, 10.0] and screen.score(Xva, yva) > 0.8

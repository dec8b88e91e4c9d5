"""Linear probes: L2-regularised multinomial logistic regression solved to convergence.

The objective (one head ``W`` (D, C), ``b`` (C,), on preprocessed features ``x_i``)::

    f(W, b) = sum_i s_i CE(x_i W + b, y_i) / sum_i s_i  +  (lambda / 2) ||W||_F^2

``s_i`` = 1, or the class-balanced weight ``n / (C_seen * count(y_i))`` with
``balance="weighted"``; the intercept is not penalised. This is exactly scikit-learn's
``LogisticRegression(C=1 / (lambda * sum_i s_i))`` (lbfgs, ``l2``), so ``C = 1 / (lambda n)``
for unweighted data. It is minimised in torch (CPU or CUDA) by full-batch L-BFGS
(:func:`probes.solvers.lbfgs`), float32 products with float64 reductions, until the largest
absolute entry of the gradient is at most ``tol`` times that of the intercept-only model's
weight gradient (a scale-free version of scikit-learn's ``gtol``: the same ``tol`` means the same
thing whether features are standardised or unit-norm, for 5 names or 500). Every fit records
its iterations, final gradient and a ``converged`` flag.

:class:`LinearProbe` is one head. :class:`LinearSweep` walks a log grid of lambdas from strong
to weak regularisation, warm-starting each fit from its neighbour's solution and L-BFGS memory;
by default it steps a decade at a time until the validation loss flattens, then half a decade,
stops the walk once a value past the selected one raised the validation loss without a clearly
better score (``patience``), then fits any skipped neighbour of the best value (both at once, as
one ``(D, 2C)`` matrix). The best value is chosen
on validation only (:func:`probes.linear_path.select`): the score (balanced accuracy by default), scores within one
standard error of the best counted as ties, ties broken by the validation log-loss
(class-balanced for balanced accuracy), never by "the more regularised". A best value on the
grid's edge extends the grid; the chosen head is refit on train+validation (warm-started,
converged too).

Balancing (``balance``):
- ``none``: plain cross-entropy.
- ``weighted``: class-balanced sample weights (scikit-learn's ``class_weight="balanced"``).
- ``logit-adjust``: trained plain; the *decision* subtracts ``tau * log prior`` from the logits
  (post-hoc logit adjustment, Menon et al. 2021), with ``tau`` chosen on validation against the
  converged model. ``predict_proba`` stays the model's own calibrated probabilities; the adjusted
  ones are :meth:`LinearProbe.predict_proba_adjusted` (and :meth:`decision_function` are their
  logits, which :meth:`predict` follows).

Mini-batch Adam (``solver="adam"``) minimises the same objective with a full-gradient
convergence test after each epoch; it is an explicit option, never the default.
"""

from __future__ import annotations

import math
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from probes.errors import NotEnoughDataError, ProbeConfigError
from probes.linear_path import Path, select, validation_metrics  # noqa: F401 (select, validation_metrics re-exported)
from probes.solvers import adam, lbfgs, resolve_device, threads

__all__ = [
    "BALANCE_MODES",
    "FEATURE_MODES",
    "SOLVERS",
    "LinearProbe",
    "LinearSweep",
    "c_from_lambda",
    "default_lambdas",
]

FEATURE_MODES = ("none", "standardize", "l2", "l2-standardize")
BALANCE_MODES = ("none", "weighted", "logit-adjust")
SOLVERS = ("lbfgs", "adam")
SEARCHES = ("coarse-to-fine", "full")
SCORINGS = ("balanced_accuracy", "accuracy", "macro_f1")
DEFAULT_TOL = 1e-4
_PREDICT_CHUNK = 65536


def default_lambdas(n: int = 15, *, low: float = 1e-6, high: float = 10.0) -> tuple[float, ...]:
    """``n`` log-spaced L2 strengths from ``low`` to ``high`` (default 15: two per decade, 1e-6..1e1)."""
    return tuple(float(x) for x in np.logspace(math.log10(low), math.log10(high), n))


def c_from_lambda(lam: float, n: float) -> float:
    """scikit-learn's ``C`` for this objective's ``lambda`` on ``n`` rows (or the sum of sample weights)."""
    return 1.0 / (float(lam) * float(n))


def _encode_labels(y, classes) -> tuple[np.ndarray, np.ndarray]:
    """(classes_, indices of y into classes_); ``classes`` None means the sorted unique y."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if classes is None:
        classes_, idx = np.unique(y, return_inverse=True)
        return classes_, idx.astype(np.int64)
    classes_ = np.asarray(classes)
    lookup = {c: i for i, c in enumerate(classes_.tolist())}
    if len(lookup) != len(classes_):
        raise ProbeConfigError("classes must be unique")
    uniq, inv = np.unique(y, return_inverse=True)
    missing = [u for u in uniq.tolist() if u not in lookup]
    if missing:
        raise ProbeConfigError(f"labels {missing[:5]} are not among the {len(classes_)} given classes")
    return classes_, np.array([lookup[u] for u in uniq.tolist()], dtype=np.int64)[inv]


class _Features:
    """Feature preprocessing fitted on the fit rows (mean/std in float64 for stability)."""

    def __init__(self, mode: str):
        if mode not in FEATURE_MODES:
            raise ProbeConfigError(f"features must be one of {FEATURE_MODES}, got {mode!r}")
        self.mode = mode
        self.mean = None
        self.std = None

    @staticmethod
    def _l2(X):
        return X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def fit_transform(self, X):
        if self.mode in ("l2", "l2-standardize"):
            X = self._l2(X)
        if self.mode in ("standardize", "l2-standardize"):
            Xd = X.double()
            self.mean = Xd.mean(0).to(X.dtype)
            self.std = Xd.std(0).clamp_min(1e-6).to(X.dtype)
            X = (X - self.mean) / self.std
        return X

    def transform(self, X):
        if self.mode in ("l2", "l2-standardize"):
            X = self._l2(X)
        if self.mean is not None:
            X = (X - self.mean.to(X.device)) / self.std.to(X.device)
        return X

    def carry(self, W, b, to: _Features):
        """The same linear function in ``to``'s feature space: warm start of a refit on other rows."""
        if self.mean is None or to.mean is None:
            return W, b
        ratio = (to.std / self.std).to(W.dtype)
        shift = ((to.mean - self.mean) / self.std).to(W.dtype)
        return W * ratio[:, None], b + shift @ W


def sample_weights(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Class-balanced weights ``n / (C_seen * count(y_i))`` (scikit-learn's ``"balanced"``)."""
    counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
    seen = counts > 0
    w = np.zeros(n_classes)
    w[seen] = y_idx.size / (seen.sum() * counts[seen])
    return w[y_idx]


def log_prior(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Laplace-smoothed log class frequencies (a name absent from training gets a finite value)."""
    counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
    return np.log((counts + 1) / (counts.sum() + n_classes))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of logits ``z`` (float64)."""
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def _gradient_scale(X, y, n_classes, w):
    """max |weight gradient| of the intercept-only model: the size of the linear signal to fit.

    At ``W = 0`` with the intercept at its optimum the predictions are the class frequencies, so
    the weight gradient is ``X^T (pi - Y) / n``: per-class feature sums, no GEMM.
    """
    import torch

    n = X.shape[0]
    wt = torch.ones(n, dtype=torch.float64, device=X.device) if w is None else w.double() / w.double().sum() * n
    Xd = X.double()
    sums = torch.zeros(n_classes, X.shape[1], dtype=torch.float64, device=X.device)
    sums.index_add_(0, y, Xd * wt[:, None])
    counts = torch.zeros(n_classes, dtype=torch.float64, device=X.device).index_add_(0, y, wt)
    pi = counts / counts.sum()
    mean_x = (Xd * wt[:, None]).sum(0) / wt.sum()
    g = (pi[:, None] * mean_x[None, :] - sums / wt.sum())
    return max(float(g.abs().max()), 1e-12)


class _Fitter:
    """The preprocessed training rows and the solver call shared by a probe and a sweep."""

    def __init__(self, X, y_idx, *, n_classes, features, balance, device, dtype):
        import torch

        self.device = device
        self.dtype = dtype
        self.n_classes = n_classes
        self.features = _Features(features)
        self.X = self.features.fit_transform(torch.from_numpy(X).to(device=device, dtype=dtype))
        self.y = torch.from_numpy(y_idx).to(device)
        self.y_idx = y_idx
        self.sw = None
        self.weight_total = float(len(y_idx))
        if balance == "weighted":
            sw = sample_weights(y_idx, n_classes)
            self.sw = torch.from_numpy(sw).to(device=device, dtype=dtype)
            self.weight_total = float(sw.sum())
        self.scale = _gradient_scale(self.X, self.y, n_classes, self.sw)

    def fit(self, lambdas, *, solver, tol, max_iter, W0=None, b0=None, memory=None, adam_options=None, seed=0):
        """Fit one head per lambda; ``tol`` is relative (see the module docstring)."""
        if solver == "lbfgs":
            return lbfgs(self.X, self.y, n_classes=self.n_classes, lambdas=lambdas, sample_weight=self.sw, W0=W0,
                         b0=b0, memory=memory, tol=tol * self.scale, max_iter=max_iter)
        opts = dict(adam_options or {})
        return adam(self.X, self.y, n_classes=self.n_classes, lambdas=lambdas, sample_weight=self.sw,
                    tol=tol * self.scale, seed=seed, W0=W0, b0=b0, **opts)


def _validate_common(est):
    if est.solver not in SOLVERS:
        raise ProbeConfigError(f"solver must be one of {SOLVERS}, got {est.solver!r}")
    if est.balance not in BALANCE_MODES:
        raise ProbeConfigError(f"balance must be one of {BALANCE_MODES}, got {est.balance!r}")
    if est.features not in FEATURE_MODES:
        raise ProbeConfigError(f"features must be one of {FEATURE_MODES}, got {est.features!r}")
    if not (est.tol > 0) or est.max_iter < 1:
        raise ProbeConfigError(f"tol must be > 0 and max_iter >= 1, got tol={est.tol}, max_iter={est.max_iter}")
    if est.dtype not in ("float32", "float64"):
        raise ProbeConfigError(f"dtype must be 'float32' or 'float64', got {est.dtype!r}")


class LinearProbe(ClassifierMixin, BaseEstimator):
    """L2-regularised multinomial logistic regression on frozen embeddings (torch, CPU or CUDA).

    Args:
        l2: ``lambda`` of the objective (see the module docstring); scikit-learn's
            ``C = 1 / (l2 * n)`` on n unweighted rows (``C_`` after fit).
        solver: ``"lbfgs"`` (full batch, default) or ``"adam"`` (mini-batch, explicit option).
        tol: convergence when max |gradient| <= tol x the intercept-only model's max |weight
            gradient| (``grad_scale_``).
        max_iter: L-BFGS iterations (``adam``: epochs are ``max_epochs``).
        lr, max_epochs, batch_size: ``adam`` only.
        features: ``none``, ``standardize``, ``l2`` or ``l2-standardize`` (fitted on fit data).
        balance: ``none``, ``weighted`` or ``logit-adjust`` (see the module docstring).
        tau: logit-adjustment strength (only for ``balance="logit-adjust"``).
        classes: the fixed class order (e.g. all names of a task, including names absent from
            the training rows); default the sorted unique training labels.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        n_threads: torch CPU threads during fit/predict (None: leave torch's setting).
        dtype: ``"float32"`` (default) or ``"float64"`` for the products.
        random_state: seed of ``adam``'s batch order (L-BFGS is deterministic).

    Fitted attributes: ``classes_``, ``coef_`` (D, C) and ``intercept_`` (C,) in the
    preprocessed feature space, ``log_prior_``, ``n_iter_``, ``grad_norm_`` (final max
    |gradient|), ``grad_scale_``, ``converged_``, ``solver_message_``, ``loss_``, ``C_``,
    ``n_features_in_``, ``device_``, ``fit_time_``.
    """

    def __init__(
        self,
        l2: float = 1e-3,
        *,
        solver: str = "lbfgs",
        tol: float = DEFAULT_TOL,
        max_iter: int = 1000,
        lr: float = 1e-3,
        max_epochs: int = 100,
        batch_size: int = 1024,
        features: str = "standardize",
        balance: str = "none",
        tau: float = 1.0,
        classes=None,
        device: str = "cpu",
        n_threads: int | None = None,
        dtype: str = "float32",
        random_state: int | None = None,
    ):
        self.l2 = l2
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.features = features
        self.balance = balance
        self.tau = tau
        self.classes = classes
        self.device = device
        self.n_threads = n_threads
        self.dtype = dtype
        self.random_state = random_state

    def fit(self, X, y, *, init=None):
        """Fit on features ``X`` (n, D) and labels ``y`` (names or ints); returns self.

        ``init``: an optional warm start ``(coef (D, C), intercept (C,))`` in the preprocessed
        feature space of this fit (:class:`LinearSweep` passes its train-only solution).
        """
        import torch

        _validate_common(self)
        if not (self.l2 > 0):
            raise ProbeConfigError(f"l2 must be > 0 (an unpenalised multinomial fit can diverge), got {self.l2}")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] != len(y):
            raise ValueError(f"X must be (n, D) with n = len(y); got {X.shape} and {len(y)} labels")
        self.classes_, y_idx = _encode_labels(y, self.classes)
        if len(np.unique(y_idx)) < 2:
            raise NotEnoughDataError("fit needs at least two distinct classes in y")
        n_classes = len(self.classes_)
        dev = resolve_device(self.device)
        self.device_ = str(dev)
        dt = torch.float32 if self.dtype == "float32" else torch.float64
        t0 = time.perf_counter()
        with threads(self.n_threads), torch.no_grad():
            fitter = _Fitter(X, y_idx, n_classes=n_classes, features=self.features, balance=self.balance,
                             device=dev, dtype=dt)
            W0 = b0 = None
            if init is not None:
                W0 = torch.as_tensor(np.asarray(init[0]), dtype=dt, device=dev)[:, None, :]
                b0 = torch.as_tensor(np.asarray(init[1]), dtype=dt, device=dev)[None, :]
            res = fitter.fit([float(self.l2)], solver=self.solver, tol=self.tol, max_iter=self.max_iter, W0=W0,
                             b0=b0, adam_options=dict(lr=self.lr, max_epochs=self.max_epochs,
                                                      batch_size=self.batch_size),
                             seed=0 if self.random_state is None else int(self.random_state))
        self._set_head(res.W[0], res.b[0], y_idx, n_classes, fitter.features)
        self.n_iter_ = int(res.n_iter[0])
        self.grad_norm_ = float(res.grad_norm[0])
        self.grad_scale_ = float(fitter.scale)
        self.converged_ = bool(res.converged[0])
        self.solver_message_ = res.message[0]
        self.loss_ = float(res.loss[0])
        self.C_ = c_from_lambda(self.l2, fitter.weight_total)
        self.n_features_in_ = X.shape[1]
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _set_head(self, W, b, y_idx, n_classes, features):
        self._W, self._b = W, b
        self._features = features
        self.coef_ = W.cpu().numpy()
        self.intercept_ = b.cpu().numpy()
        self.log_prior_ = log_prior(y_idx, n_classes)

    def _raw_logits(self, X):
        import torch

        check_is_fitted(self, "coef_")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be (n, {self.n_features_in_}), got {X.shape}")
        out = []
        dev = self.device_
        with threads(self.n_threads), torch.no_grad():
            W, b = self._W.to(dev), self._b.to(dev)
            for s in range(0, X.shape[0], _PREDICT_CHUNK):
                xb = torch.from_numpy(X[s : s + _PREDICT_CHUNK]).to(device=dev, dtype=W.dtype)
                out.append((self._features.transform(xb) @ W + b).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)), np.float32)

    def decision_function(self, X) -> np.ndarray:
        """Logits (n, C) of the decision: ``raw - tau * log prior`` with ``balance="logit-adjust"``."""
        logits = self._raw_logits(X)
        if self.balance == "logit-adjust":
            logits = logits - np.asarray(self.tau * self.log_prior_, dtype=logits.dtype)
        return logits

    def predict_proba(self, X) -> np.ndarray:
        """The model's own probabilities (n, C), never logit-adjusted; columns = ``classes_``."""
        return _softmax(self._raw_logits(X))

    def predict_proba_adjusted(self, X) -> np.ndarray:
        """Softmax of :meth:`decision_function`: the logit-adjusted probabilities (equal to
        :meth:`predict_proba` unless ``balance="logit-adjust"``)."""
        return _softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        """The predicted class (a name when fitted on names) of each row: argmax of the decision."""
        scores = self.decision_function(X)
        return self.classes_[np.argmax(scores, axis=1)]


class LinearSweep(ClassifierMixin, BaseEstimator):
    """The regularisation path of :class:`LinearProbe`, the best lambda picked on validation, then refit.

    Args:
        lambdas: the grid (default :func:`default_lambdas`: 15 values, 1e-6 .. 10).
        search: ``"coarse-to-fine"`` (default: strong to weak, two grid values per step while the
            validation loss falls ever faster, one once its fall slows, the walk stopped once
            ``patience`` values in a row past the selected one raised the validation loss without a
            better score, then any skipped neighbour of the best) or ``"full"`` (every value).
        taus: logit-adjustment strengths tried per lambda with ``balance="logit-adjust"``.
        scoring: ``balanced_accuracy`` (default), ``accuracy`` or ``macro_f1``; scores within one
            standard error of the best are ties, broken by the validation log-loss (see
            :func:`probes.linear_path.select`; of the adjusted probabilities with logit adjustment).
        extend_grid, extend_steps, max_extensions: when the best value is the grid's strongest or
            weakest, fit ``extend_steps`` more values beyond it (at the grid's spacing), at most
            ``max_extensions`` times; ``edge_optimum_`` says whether it is still on the edge.
        val_fraction: without ``X_val``, the validation rows held out of ``X`` (by group with
            ``groups``).
        refit: refit the chosen lambda (and tau) on train+validation (``best_estimator_``).
        other arguments: as :class:`LinearProbe`.

    Fitted attributes: ``classes_``, ``cv_results_`` (dict of lists, one entry per fitted
    lambda, strong to weak: ``param_lambda``, ``param_C``, ``param_tau``, ``val_score``,
    ``val_accuracy``, ``val_balanced_accuracy``, ``val_log_loss``, ``n_iter``, ``grad_norm``,
    ``converged``, ``solver_message``, ``stage``, ``fit_seconds``, ``rank_val_score``),
    ``grid_`` (every grid value and whether it was fitted), ``best_params_`` (``lambda``,
    ``tau``), ``best_score_``, ``best_index_``, ``coef_grid_`` (G, D, C) / ``intercept_grid_``
    (G, C) of the train-only fits, ``grid_extensions_``, ``edge_optimum_``, ``converged_`` (every
    fit, refit included), ``warnings_``, ``best_estimator_``, ``fit_time_``, ``refit_time_``.
    """

    def __init__(
        self,
        lambdas=None,
        *,
        solver: str = "lbfgs",
        tol: float = DEFAULT_TOL,
        max_iter: int = 1000,
        search: str = "coarse-to-fine",
        patience: int = 1,
        lr: float = 1e-3,
        max_epochs: int = 100,
        batch_size: int = 1024,
        features: str = "standardize",
        balance: str = "none",
        taus=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
        scoring: str = "balanced_accuracy",
        extend_grid: bool = True,
        extend_steps: int = 2,
        max_extensions: int = 2,
        val_fraction: float = 0.1,
        refit: bool = True,
        classes=None,
        device: str = "cpu",
        n_threads: int | None = None,
        dtype: str = "float32",
        random_state: int | None = None,
    ):
        self.lambdas = lambdas
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.search = search
        self.patience = patience
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.features = features
        self.balance = balance
        self.taus = taus
        self.scoring = scoring
        self.extend_grid = extend_grid
        self.extend_steps = extend_steps
        self.max_extensions = max_extensions
        self.val_fraction = val_fraction
        self.refit = refit
        self.classes = classes
        self.device = device
        self.n_threads = n_threads
        self.dtype = dtype
        self.random_state = random_state

    def _holdout(self, n, y_idx, groups, seed):
        from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit, StratifiedShuffleSplit

        if groups is not None:
            splitter = GroupShuffleSplit(n_splits=1, test_size=self.val_fraction, random_state=seed)
            return next(splitter.split(np.zeros(n), y_idx, groups))
        counts = np.bincount(y_idx)
        cls = StratifiedShuffleSplit if counts[counts > 0].min() >= 2 else ShuffleSplit
        return next(cls(n_splits=1, test_size=self.val_fraction, random_state=seed).split(np.zeros(n), y_idx))

    def _validate(self):
        _validate_common(self)
        if self.search not in SEARCHES:
            raise ProbeConfigError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if self.scoring not in SCORINGS:
            raise ProbeConfigError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        grid = default_lambdas() if self.lambdas is None else tuple(float(v) for v in self.lambdas)
        if not grid or min(grid) <= 0 or not all(math.isfinite(v) for v in grid):
            raise ProbeConfigError(f"lambdas must be non-empty, finite and > 0, got {self.lambdas!r}")
        if self.patience < 1:
            raise ProbeConfigError(f"patience must be >= 1, got {self.patience}")
        return sorted(set(grid), reverse=True)  # strong to weak: the path's direction

    def fit(self, X, y, *, X_val=None, y_val=None, groups=None):
        """Fit the path on ``X``/``y``, select on ``X_val``/``y_val``, refit on both; returns self."""
        import torch

        grid = self._validate()
        X = np.asarray(X, dtype=np.float32)
        self.classes_, y_idx = _encode_labels(y, self.classes)
        n_classes = len(self.classes_)
        seed = 0 if self.random_state is None else int(self.random_state)
        if X_val is None:
            if y_val is not None:
                raise ProbeConfigError("give X_val together with y_val")
            tr, va = self._holdout(X.shape[0], y_idx, groups, seed)
            X_tr, y_tr, X_va, yv_idx = X[tr], y_idx[tr], X[va], y_idx[va]
            self.validation_ = f"held out {self.val_fraction:.0%} of the fit rows" + (" by group" if groups is not None else "")
        else:
            X_tr, y_tr = X, y_idx
            X_va = np.asarray(X_val, dtype=np.float32)
            yv_idx = _encode_labels(y_val, self.classes_)[1]
            self.validation_ = "given validation set"
        if len(np.unique(y_tr)) < 2 or X_va.shape[0] == 0:
            raise NotEnoughDataError("the sweep needs two classes in training and a non-empty validation set")
        taus = [float(t) for t in self.taus] if self.balance == "logit-adjust" else [None]
        if not taus:
            raise ProbeConfigError("taus must be non-empty with balance='logit-adjust'")
        dev = resolve_device(self.device)
        self.device_ = str(dev)
        dt = torch.float32 if self.dtype == "float32" else torch.float64
        lp = log_prior(y_tr, n_classes)
        t0 = time.perf_counter()
        with threads(self.n_threads), torch.no_grad():
            fitter = _Fitter(X_tr, y_tr, n_classes=n_classes, features=self.features, balance=self.balance,
                             device=dev, dtype=dt)
            Xv = fitter.features.transform(torch.from_numpy(X_va).to(device=dev, dtype=dt))
            path = Path(self, fitter, Xv, yv_idx, taus, lp, seed)
            path.run(grid)
        self._fitter_features = fitter.features
        self.fit_time_ = time.perf_counter() - t0
        rows = path.rows
        order = sorted(range(len(rows)), key=lambda i: -rows[i]["lambda"])
        rows = [rows[i] for i in order]
        best = select(rows, self.scoring)
        self.coef_grid_ = np.stack([path.heads[i][0] for i in order])
        self.intercept_grid_ = np.stack([path.heads[i][1] for i in order])
        self._best_head = path.heads[order[best]]
        rank = np.empty(len(rows), dtype=int)
        rank[sorted(range(len(rows)), key=lambda i: (rows[i]["val_score"], -rows[i]["val_log_loss"]),
                    reverse=True)] = np.arange(1, len(rows) + 1)
        keys = ("val_score", "val_score_se", "val_accuracy", "val_balanced_accuracy", "val_log_loss",
                "val_balanced_log_loss", "n_iter", "grad_norm", "converged", "solver_message", "stage",
                "fit_seconds")
        self.cv_results_ = {
            "params": [{"lambda": r["lambda"], "tau": r["tau"]} for r in rows],
            "param_lambda": [r["lambda"] for r in rows],
            "param_C": [c_from_lambda(r["lambda"], fitter.weight_total) for r in rows],
            "param_tau": [r["tau"] for r in rows],
            **{k: [r[k] for r in rows] for k in keys},
            "val_score_by_tau": [r["by_tau"] for r in rows],
            "rank_val_score": rank.tolist(),
        }
        fitted = {r["lambda"] for r in rows}
        self.grid_ = [{"lambda": v, "fitted": v in fitted} for v in sorted(set(grid) | fitted, reverse=True)]
        self.grid_extensions_ = path.extensions
        self.edge_optimum_ = path.edge_optimum(rows[best]["lambda"])
        self.best_index_ = int(best)
        self.best_params_ = dict(self.cv_results_["params"][best])
        self.best_score_ = float(rows[best]["val_score"])
        self.n_features_in_ = X.shape[1]
        self.path_stopped_ = path.stopped
        warns = []
        bad = [r for r in rows if not r["converged"]]
        if bad:
            warns.append(f"{len(bad)} of {len(rows)} lambda fits did not converge (tol {self.tol:g}): "
                         + "; ".join(f"lambda {r['lambda']:.3g}: {r['solver_message']}" for r in bad[:3]))
        if self.edge_optimum_:
            warns.append(f"the best lambda {rows[best]['lambda']:.3g} is on the edge of the grid "
                         f"{'after extending it' if self.extend_grid else '(extension off)'}")
        self.refit_time_ = 0.0
        if self.refit:
            t1 = time.perf_counter()
            X_all = np.concatenate([X_tr, X_va])
            y_all = self.classes_[np.concatenate([y_tr, yv_idx])]
            probe = self.make_probe()
            init = self._refit_init(probe, X_all, dt, dev)
            self.best_estimator_ = probe.fit(X_all, y_all, init=init)
            self.refit_time_ = time.perf_counter() - t1
            if not self.best_estimator_.converged_:
                warns.append(f"the refit on train+validation did not converge: {self.best_estimator_.solver_message_}")
        self.converged_ = not bad and (not self.refit or self.best_estimator_.converged_)
        self.warnings_ = warns
        return self

    def _refit_init(self, probe, X_all, dt, dev):
        """The train-only solution, mapped to the train+validation feature space (a warm start)."""
        import torch

        W = torch.as_tensor(self._best_head[0], dtype=dt)
        b = torch.as_tensor(self._best_head[1], dtype=dt)
        to = _Features(probe.features)
        to.fit_transform(torch.from_numpy(X_all).to(dtype=dt))
        W, b = self._fitter_features.carry(W, b, to)
        return W.numpy(), b.numpy()

    def make_probe(self) -> LinearProbe:
        """An unfitted :class:`LinearProbe` with the selected lambda (and tau)."""
        check_is_fitted(self, "best_params_")
        p = self.best_params_
        return LinearProbe(
            p["lambda"], solver=self.solver, tol=self.tol, max_iter=self.max_iter, lr=self.lr,
            max_epochs=self.max_epochs, batch_size=self.batch_size, features=self.features, balance=self.balance,
            tau=1.0 if p["tau"] is None else p["tau"], classes=self.classes_, device=self.device,
            n_threads=self.n_threads, dtype=self.dtype, random_state=self.random_state,
        )

    def _est(self) -> LinearProbe:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_

    def decision_function(self, X):
        """Logits of the refit head's decision (logit-adjusted with ``balance="logit-adjust"``)."""
        return self._est().decision_function(X)

    def predict_proba(self, X):
        """The refit head's own probabilities (never logit-adjusted)."""
        return self._est().predict_proba(X)

    def predict_proba_adjusted(self, X):
        """The refit head's logit-adjusted probabilities (softmax of :meth:`decision_function`)."""
        return self._est().predict_proba_adjusted(X)

    def predict(self, X):
        """Names predicted by the refit head (argmax of the decision)."""
        return self._est().predict(X)


def __getattr__(name: str):
    # The experiment runner lives in probes.linear_experiment; these names stay importable from
    # here for code written before the split (imported lazily: that module imports this one).
    if name in ("LinearConfig", "run_linear", "run_linear_seeds", "default_experiment_name"):
        from probes import linear_experiment

        return getattr(linear_experiment, name)
    raise AttributeError(f"module 'probes.linear' has no attribute {name!r}")

"""Linear probes: multinomial logistic regression trained in torch, as scikit-learn estimators.

:class:`LinearProbe` is one head. :class:`LinearSweep` trains a whole grid of heads (weight
decays x learning rates) at once, as one ``(D, G*C)`` weight matrix fed the same mini-batches
(every member's logits are one GEMM), in the spirit of dinov2's ``eval/linear.py``; it picks the
best member on a validation set (optionally stopping the worse half of the members early,
successive halving), extends the grid when the best value sits on its edge, chooses the
logit-adjustment strength on validation, and refits the chosen head on train+validation.

Optimisation is AdamW written out by hand over the batched tensors, so each member gets its own
learning rate and decoupled weight decay while sharing every batch: a member of a sweep follows
exactly the trajectory of a :class:`LinearProbe` fitted alone with the same parameters and
``random_state``. Weights start at zero (the problem is convex; zero makes fits reproducible).

Balancing (``balance``):
- ``none``: plain cross-entropy.
- ``weighted``: cross-entropy weighted by n / (C * count(class)).
- ``logit-adjust``: trained plain; at prediction ``tau * log(prior)`` is subtracted from the
  logits (post-hoc logit adjustment, Menon et al. 2021), which stops frequent names from
  absorbing the predictions (the plan's prediction-CV target). ``LinearSweep`` picks ``tau``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import math
import time
from itertools import product

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from probes.errors import NotEnoughDataError, ProbeConfigError

__all__ = [
    "BALANCE_MODES",
    "FEATURE_MODES",
    "LinearConfig",
    "LinearProbe",
    "LinearSweep",
    "default_weight_decays",
    "run_linear",
    "run_linear_seeds",
]

FEATURE_MODES = ("none", "standardize", "l2", "l2-standardize")
BALANCE_MODES = ("none", "weighted", "logit-adjust")
OPTIMIZERS = ("adamw", "lbfgs")
_PREDICT_CHUNK = 65536


def default_weight_decays(n: int = 8) -> tuple[float, ...]:
    """``n`` log-spaced AdamW weight decays from 1e-4 to 10 (decoupled: shrink lr*wd per step)."""
    return tuple(float(x) for x in np.logspace(-4, 1, n))


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeConfigError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


@contextlib.contextmanager
def _threads(n_threads: int | None):
    """Limit torch's intra-op threads for the duration of a fit (shared machines)."""
    import torch

    if n_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    """Feature preprocessing fitted on training rows (mean/std in float64 for stability)."""

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
            self.mean = Xd.mean(0).float()
            self.std = Xd.std(0).clamp_min(1e-6).float()
            X = (X - self.mean) / self.std
        return X

    def transform(self, X):
        if self.mode in ("l2", "l2-standardize"):
            X = self._l2(X)
        if self.mean is not None:
            X = (X - self.mean.to(X.device)) / self.std.to(X.device)
        return X


def _class_weights(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
    w = np.zeros(n_classes)
    seen = counts > 0
    w[seen] = y_idx.size / (seen.sum() * counts[seen])
    return w


def _log_prior(y_idx: np.ndarray, n_classes: int) -> np.ndarray:
    # Laplace-smoothed so that a name absent from training gets a finite adjustment.
    counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
    return np.log((counts + 1) / (counts.sum() + n_classes))


class _BatchedAdamW:
    """G linear heads trained together by per-member AdamW (decoupled weight decay), cosine lr.

    Layout: the heads are one ``(D, G*C)`` matrix, so the logits of every member are a single
    GEMM ``X_b @ W`` and the weight gradient a single GEMM ``X_b^T @ P`` (no per-member batched
    matmul, no permuted copies). Gradients are written in closed form (softmax - onehot), exact
    for the cross-entropy of a linear head, which avoids autograd's bookkeeping. Members only
    share the mini-batches, so dropping some (:meth:`keep`) leaves the others' trajectories, and
    a member's trajectory equals that of a head trained alone with the same parameters and seed.
    The schedule is fixed by ``epochs`` up front, so a member kept to the end sees the full cosine.
    """

    _B1, _B2, _EPS = 0.9, 0.999, 1e-8

    def __init__(self, X, y, *, n_classes, lrs, wds, epochs, batch_size, class_weight, seed):
        import torch

        dev = X.device
        self.X, self.y = X.contiguous(), y
        self.n, self.d = X.shape
        self.c = n_classes
        self.batch_size = int(batch_size)
        self.members = list(range(len(lrs)))  # indices into the original grid still training
        g = len(lrs)
        self.W = torch.zeros(self.d, g, n_classes, device=dev)
        self.b = torch.zeros(g, n_classes, device=dev)
        self.mW, self.vW = torch.zeros_like(self.W), torch.zeros_like(self.W)
        self.mb, self.vb = torch.zeros_like(self.b), torch.zeros_like(self.b)
        self.lr0 = torch.tensor(lrs, dtype=torch.float32, device=dev)
        self.wd = torch.tensor(wds, dtype=torch.float32, device=dev)
        self.cw = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32, device=dev)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)
        self.total = epochs * self.steps_per_epoch
        self.step = 0
        self.losses: list[list[float]] = []  # per epoch, per original member (nan once dropped)
        self._n_grid = g

    def keep(self, positions) -> None:
        """Keep only the members at ``positions`` (indices into the current members)."""
        import torch

        pos = torch.as_tensor(list(positions), dtype=torch.long, device=self.W.device)
        self.W, self.mW, self.vW = (t.index_select(1, pos).contiguous() for t in (self.W, self.mW, self.vW))
        self.b, self.mb, self.vb = (t.index_select(0, pos).contiguous() for t in (self.b, self.mb, self.vb))
        self.lr0, self.wd = self.lr0[pos], self.wd[pos]
        self.members = [self.members[int(p)] for p in pos.tolist()]

    def run_epoch(self) -> None:
        """One pass over the training rows in a fresh random order (the same for every member)."""
        import torch

        X, y, dev = self.X, self.y, self.X.device
        g, c, d = len(self.members), self.c, self.d
        W2 = self.W.view(d, g * c)
        b1, b2, eps = self._B1, self._B2, self._EPS
        perm = torch.randperm(self.n, generator=self.gen).to(dev)
        epoch_loss = torch.zeros(g, device=dev)
        gW = torch.empty_like(W2)
        tmp = torch.empty_like(self.W)
        for start in range(0, self.n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            xb, yb = X[idx], y[idx]
            nb = idx.numel()
            rows = torch.arange(nb, device=dev)
            # One fused softmax over (nb, G, C): a single pass instead of max/sub/exp/sum/div.
            p = torch.softmax(torch.addmm(self.b.view(1, g * c), xb, W2).view(nb, g, c), dim=2)
            p_y = p[rows, :, yb]  # (nb, G); the loss is only reported, so log of a clamped p is enough
            if self.cw is None:
                sw, xs, alpha = None, xb, 1.0 / nb
            else:
                sw = self.cw[yb]
                sw = sw / sw.sum().clamp_min(1e-12)
                # Weight the rows of X (nb x D) rather than of P (nb x G*C): same product, less work.
                xs, alpha = xb * sw[:, None], 1.0
            loss_rows = p_y.clamp_min(1e-30).log_()
            epoch_loss -= loss_rows.mean(0) if sw is None else sw @ loss_rows
            p[rows, :, yb] -= 1.0
            P = p.view(nb, g * c)
            # The mean over rows is folded into the GEMM's alpha (free) instead of a pass over P.
            torch.addmm(gW, xs.t(), P, beta=0.0, alpha=alpha, out=gW)
            gb = (P.sum(0) * alpha if sw is None else sw @ P).view(g, c)
            self.step += 1
            lr = self.lr0 * (0.5 * (1 + math.cos(math.pi * (self.step - 1) / self.total)))
            c1, c2 = 1 - b1**self.step, 1 - b2**self.step
            lr_col = lr.view(1, g, 1)
            gW3 = gW.view(d, g, c)
            self.W.mul_(1 - lr_col * self.wd.view(1, g, 1))
            self.mW.lerp_(gW3, 1 - b1)
            self.vW.mul_(b2).addcmul_(gW3, gW3, value=1 - b2)
            # (m/c1) / (sqrt(v/c2) + eps) == (m * sqrt(c2)/c1) / (sqrt(v) + eps*sqrt(c2)): one pass fewer.
            torch.sqrt(self.vW, out=tmp).add_(eps * math.sqrt(c2))
            torch.div(self.mW, tmp, out=tmp).mul_(lr_col * (math.sqrt(c2) / c1))
            self.W.sub_(tmp)
            self.mb.lerp_(gb, 1 - b1)
            self.vb.mul_(b2).addcmul_(gb, gb, value=1 - b2)
            self.b.sub_(lr.view(g, 1) * (math.sqrt(c2) / c1) * self.mb / (self.vb.sqrt() + eps * math.sqrt(c2)))
        row = [float("nan")] * self._n_grid
        for m, v in zip(self.members, (epoch_loss / self.steps_per_epoch).tolist()):
            row[m] = v
        self.losses.append(row)

    def heads(self):
        """``(W (G, D, C), b (G, C))`` of the members still training, in :attr:`members` order."""
        return self.W.permute(1, 0, 2).contiguous(), self.b.clone()

    def logits(self, X):
        """Logits ``(G, n, C)`` of the current members on rows ``X`` (one GEMM)."""
        import torch

        g = len(self.members)
        z = torch.addmm(self.b.view(1, g * self.c), X, self.W.view(self.d, g * self.c))
        return z.view(X.shape[0], g, self.c).permute(1, 0, 2)


def _train_adamw(X, y, *, n_classes, lrs, wds, epochs, batch_size, class_weight, seed):
    """Train G heads to the end of the schedule; returns ``(W (G, D, C), b (G, C), losses)``."""
    trainer = _BatchedAdamW(
        X, y, n_classes=n_classes, lrs=lrs, wds=wds, epochs=epochs, batch_size=batch_size,
        class_weight=class_weight, seed=seed,
    )
    for _ in range(epochs):
        trainer.run_epoch()
    W, b = trainer.heads()
    return W, b, trainer.losses


def _train_lbfgs(X, y, *, n_classes, l2, max_iter, class_weight):
    """Full-batch L-BFGS on mean cross-entropy + 0.5 * l2 * ||W||^2 (the CLIP paper's probe)."""
    import torch

    dev = X.device
    W = torch.zeros(X.shape[1], n_classes, device=dev, requires_grad=True)
    b = torch.zeros(n_classes, device=dev, requires_grad=True)
    cw = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32, device=dev)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W + b, y, weight=cw) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    return W.detach()[None], b.detach()[None], [[float(loss.detach())]]


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on frozen embeddings, trained in torch (CPU or CUDA).

    Args:
        optimizer: ``"adamw"`` (mini-batch, cosine schedule) or ``"lbfgs"`` (full batch).
        lr: AdamW peak learning rate.
        weight_decay: AdamW decoupled weight decay; for ``lbfgs`` the L2 coefficient.
        epochs, batch_size: AdamW schedule.
        max_iter: L-BFGS iterations.
        features: ``none``, ``standardize``, ``l2`` or ``l2-standardize`` (fitted on fit data).
        balance: ``none``, ``weighted`` or ``logit-adjust`` (see the module docstring).
        tau: logit-adjustment strength (only for ``balance="logit-adjust"``).
        classes: the fixed class order (e.g. all names of a task, including names absent from
            the training rows); default the sorted unique training labels.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        n_threads: torch CPU threads during fit/predict (None: leave torch's setting).
        random_state: seed of the mini-batch order.

    Fitted attributes: ``classes_``, ``coef_`` (D, C) and ``intercept_`` (C,) in the
    preprocessed feature space, ``log_prior_``, ``loss_curve_``, ``n_features_in_``,
    ``device_``, ``fit_time_``.
    """

    def __init__(
        self,
        optimizer: str = "adamw",
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        epochs: int = 10,
        batch_size: int = 1024,
        max_iter: int = 100,
        features: str = "standardize",
        balance: str = "none",
        tau: float = 1.0,
        classes=None,
        device: str = "cpu",
        n_threads: int | None = None,
        random_state: int | None = None,
    ):
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.features = features
        self.balance = balance
        self.tau = tau
        self.classes = classes
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state

    def _validate(self):
        if self.optimizer not in OPTIMIZERS:
            raise ProbeConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.balance not in BALANCE_MODES:
            raise ProbeConfigError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        if self.features not in FEATURE_MODES:
            raise ProbeConfigError(f"features must be one of {FEATURE_MODES}, got {self.features!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.epochs < 1 or self.batch_size < 1:
            raise ProbeConfigError("lr must be > 0, weight_decay >= 0, epochs and batch_size >= 1")

    def fit(self, X, y):
        """Fit on features ``X`` (n, D) and labels ``y`` (names or ints); returns self."""
        import torch

        self._validate()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] != len(y):
            raise ValueError(f"X must be (n, D) with n = len(y); got {X.shape} and {len(y)} labels")
        self.classes_, y_idx = _encode_labels(y, self.classes)
        if len(np.unique(y_idx)) < 2:
            raise NotEnoughDataError("fit needs at least two distinct classes in y")
        n_classes = len(self.classes_)
        seed = 0 if self.random_state is None else int(self.random_state)
        self.device_ = str(_resolve_device(self.device))
        t0 = time.perf_counter()
        with _threads(self.n_threads), torch.no_grad():
            Xt = torch.from_numpy(X).to(self.device_)
            self._features = _Features(self.features)
            Xt = self._features.fit_transform(Xt)
            yt = torch.from_numpy(y_idx).to(self.device_)
            cw = _class_weights(y_idx, n_classes) if self.balance == "weighted" else None
            if self.optimizer == "adamw":
                W, b, losses = _train_adamw(
                    Xt, yt, n_classes=n_classes, lrs=[self.lr], wds=[self.weight_decay],
                    epochs=self.epochs, batch_size=self.batch_size, class_weight=cw, seed=seed,
                )
            else:
                with torch.enable_grad():
                    W, b, losses = _train_lbfgs(
                        Xt, yt, n_classes=n_classes, l2=self.weight_decay,
                        max_iter=self.max_iter, class_weight=cw,
                    )
        self._set_head(W[0], b[0], y_idx, n_classes)
        self.loss_curve_ = [row[0] for row in losses]
        self.n_features_in_ = X.shape[1]
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _set_head(self, W, b, y_idx, n_classes):
        self._W, self._b = W, b
        self.coef_ = W.cpu().numpy()
        self.intercept_ = b.cpu().numpy()
        self.log_prior_ = _log_prior(y_idx, n_classes)

    def _raw_logits(self, X):
        import torch

        check_is_fitted(self, "coef_")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be (n, {self.n_features_in_}), got {X.shape}")
        out = []
        with _threads(self.n_threads), torch.no_grad():
            for s in range(0, X.shape[0], _PREDICT_CHUNK):
                xb = self._features.transform(torch.from_numpy(X[s : s + _PREDICT_CHUNK]).to(self.device_))
                out.append((xb @ self._W.to(self.device_) + self._b.to(self.device_)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)), np.float32)

    def decision_function(self, X) -> np.ndarray:
        """Logits (n, C), logit-adjusted when ``balance="logit-adjust"``; columns = ``classes_``."""
        logits = self._raw_logits(X)
        if self.balance == "logit-adjust":
            logits = logits - np.float32(self.tau) * self.log_prior_.astype(np.float32)
        return logits

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of :meth:`decision_function`; rows sum to 1."""
        z = self.decision_function(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The predicted class (a name when fitted on names) of each row."""
        scores = self.decision_function(X)
        return self.classes_[np.argmax(scores, axis=1)]


def _score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from probes.metrics import accuracy, balanced_accuracy, macro_f1

    return {"balanced_accuracy": balanced_accuracy, "accuracy": accuracy, "macro_f1": macro_f1}[metric](y_true, y_pred)


class LinearSweep(ClassifierMixin, BaseEstimator):
    """A grid of linear heads trained in one pass, the best picked on validation, then refit.

    Every (weight decay, learning rate) pair is one member of a batched ``(G, D, C)`` head fed
    the same mini-batches. Selection uses only the validation rows (``X_val`` / ``y_val``, or a
    ``val_fraction`` held out from ``X`` by group when ``groups`` are given): the test split is
    never seen. When the best weight decay (or learning rate) is the largest or smallest of the
    grid, ``extend_steps`` more values beyond that edge are trained (at the grid's log spacing)
    up to ``max_extensions`` times; ``grid_extensions_`` records each, and ``edge_optimum_``
    says whether the optimum still sat on the edge at the end. With ``balance="logit-adjust"``
    each member's ``tau`` is chosen from ``taus`` on validation too. With ``refit`` (default)
    the chosen head is refit on train+validation (``best_estimator_``) and used by ``predict``.

    ``halving_epochs`` (e.g. ``(2, 4)`` with ``epochs=10``) turns on successive halving: after
    each listed epoch the members still training are scored on validation and the worse half
    stops there (``cv_results_["stopped_early"]``, ``["epochs_trained"]``); only members trained
    to the end can be selected. The schedule of every member is the full ``epochs``-long cosine,
    so a member that trains to the end equals an independent :class:`LinearProbe` fit. Empty
    (default): every member trains to the end.

    Fitted attributes: ``classes_``, ``cv_results_`` (dict of lists, one entry per member),
    ``best_params_``, ``best_score_``, ``best_index_``, ``coef_grid_`` (G, D, C) and
    ``intercept_grid_`` (G, C) of the train-only members (for a member stopped early, its head
    at the stop), ``grid_extensions_``,
    ``edge_optimum_``, ``best_estimator_``, ``fit_time_``, ``refit_time_``.
    """

    def __init__(
        self,
        weight_decays=None,
        *,
        lrs=(1e-3,),
        epochs: int = 10,
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
        halving_epochs=(),
        classes=None,
        device: str = "cpu",
        n_threads: int | None = None,
        random_state: int | None = None,
    ):
        self.weight_decays = weight_decays
        self.lrs = lrs
        self.epochs = epochs
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
        self.halving_epochs = halving_epochs
        self.classes = classes
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state

    def _holdout(self, n, y_idx, groups, seed):
        from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit, ShuffleSplit

        if groups is not None:
            splitter = GroupShuffleSplit(n_splits=1, test_size=self.val_fraction, random_state=seed)
            tr, va = next(splitter.split(np.zeros(n), y_idx, groups))
        else:
            counts = np.bincount(y_idx)
            cls = StratifiedShuffleSplit if counts[counts > 0].min() >= 2 else ShuffleSplit
            tr, va = next(cls(n_splits=1, test_size=self.val_fraction, random_state=seed).split(np.zeros(n), y_idx))
        return tr, va

    def fit(self, X, y, *, X_val=None, y_val=None, groups=None):
        """Train the grid on ``X``/``y``, select on ``X_val``/``y_val``, refit on both; returns self."""
        import torch

        if self.balance not in BALANCE_MODES:
            raise ProbeConfigError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        if self.scoring not in ("balanced_accuracy", "accuracy", "macro_f1"):
            raise ProbeConfigError(f"scoring must be balanced_accuracy, accuracy or macro_f1, got {self.scoring!r}")
        wds = list(default_weight_decays() if self.weight_decays is None else self.weight_decays)
        lrs = list(self.lrs)
        if not wds or not lrs or min(wds) < 0 or min(lrs) <= 0:
            raise ProbeConfigError("weight_decays must be non-empty and >= 0, lrs non-empty and > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ProbeConfigError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        rungs = sorted({int(e) for e in self.halving_epochs})
        if rungs and (rungs[0] < 1 or rungs[-1] >= self.epochs):
            raise ProbeConfigError(
                f"halving_epochs must lie in 1..epochs-1 = 1..{self.epochs - 1}, got {tuple(self.halving_epochs)}"
            )
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
        self.device_ = str(_resolve_device(self.device))
        log_prior = _log_prior(y_tr, n_classes).astype(np.float32)
        cw = _class_weights(y_tr, n_classes) if self.balance == "weighted" else None
        t0 = time.perf_counter()
        members: list[tuple[float, float]] = []
        Ws, bs, scores_rows = [], [], []
        with _threads(self.n_threads), torch.no_grad():
            feats = _Features(self.features)
            Xt = feats.fit_transform(torch.from_numpy(X_tr).to(self.device_))
            Xv = feats.transform(torch.from_numpy(X_va).to(self.device_))
            yt = torch.from_numpy(y_tr).to(self.device_)

            def score(z, m, epoch):
                """The validation row of member ``m`` from its logits ``z`` (tau chosen here too)."""
                best = None
                for tau in taus:
                    zz = z if tau is None else z - tau * log_prior
                    pred = zz.argmax(1)
                    row = {
                        "weight_decay": m[0], "lr": m[1], "tau": tau,
                        "val_score": _score(self.scoring, yv_idx, pred),
                        "val_accuracy": _score("accuracy", yv_idx, pred),
                        "val_balanced_accuracy": _score("balanced_accuracy", yv_idx, pred),
                        "epochs_trained": epoch, "stopped_early": epoch < self.epochs,
                    }
                    if best is None or row["val_score"] > best["val_score"]:
                        best = row
                return best

            def train(new):
                trainer = _BatchedAdamW(
                    Xt, yt, n_classes=n_classes, lrs=[m[1] for m in new], wds=[m[0] for m in new],
                    epochs=self.epochs, batch_size=self.batch_size, class_weight=cw, seed=seed,
                )
                rows, W_out, b_out = [None] * len(new), [None] * len(new), [None] * len(new)
                for epoch in range(1, self.epochs + 1):
                    trainer.run_epoch()
                    last = epoch == self.epochs
                    if not last and (epoch not in rungs or len(trainer.members) < 2):
                        continue
                    logits = trainer.logits(Xv)
                    current = [score(logits[i].cpu().numpy(), new[m], epoch) for i, m in enumerate(trainer.members)]
                    keep = set(range(len(current)))
                    if not last:
                        # Successive halving: the better half on validation (same tie-break as the
                        # final selection) trains on; the rest stop here, recorded as stopped early.
                        order = sorted(keep, key=lambda i: (current[i]["val_score"], current[i]["weight_decay"]))
                        keep = set(order[len(order) // 2 :])
                    W, b = trainer.heads()
                    for i, m in enumerate(trainer.members):
                        if last or i not in keep:
                            rows[m], W_out[m], b_out[m] = current[i], W[i].cpu().numpy(), b[i].cpu().numpy()
                    if not last:
                        trainer.keep(sorted(keep))
                scores_rows.extend(rows)
                Ws.extend(W_out)
                bs.extend(b_out)
                members.extend(new)

            train(list(product(wds, lrs)))
            self.grid_extensions_ = []
            for _ in range(self.max_extensions if self.extend_grid else 0):
                best = self._best(scores_rows)
                new = []
                for key, values in (("weight_decay", wds), ("lr", lrs)):
                    added = _extend(values, scores_rows[best][key], self.extend_steps)
                    if added:
                        edge = "high" if added[0] > max(values) else "low"
                        self.grid_extensions_.append({"param": key, "edge": edge, "added": added})
                        values.extend(added)
                        values.sort()
                        other = lrs if key == "weight_decay" else wds
                        new += [(a, o) if key == "weight_decay" else (o, a) for a in added for o in other]
                new = [m for m in dict.fromkeys(new) if m not in members]
                if not new:
                    break
                train(new)
        best = self._best(scores_rows)
        self.edge_optimum_ = any(
            _extend(vals, scores_rows[best][key], 1) for key, vals in (("weight_decay", wds), ("lr", lrs))
        )
        self.fit_time_ = time.perf_counter() - t0
        self.coef_grid_ = np.stack(Ws)
        self.intercept_grid_ = np.stack(bs)
        self.members_ = members
        # Rank with the same tie-break as the selection (stronger weight decay first); members
        # stopped early by successive halving rank after every member trained to the end.
        order = np.lexsort((
            [-r["weight_decay"] for r in scores_rows], [-r["val_score"] for r in scores_rows],
            [-r["epochs_trained"] for r in scores_rows],
        ))
        rank = np.empty(len(order), dtype=int)
        rank[order] = np.arange(1, len(order) + 1)
        self.cv_results_ = {
            "params": [{"weight_decay": r["weight_decay"], "lr": r["lr"], "tau": r["tau"]} for r in scores_rows],
            "param_weight_decay": [r["weight_decay"] for r in scores_rows],
            "param_lr": [r["lr"] for r in scores_rows],
            "param_tau": [r["tau"] for r in scores_rows],
            "val_score": [r["val_score"] for r in scores_rows],
            "val_accuracy": [r["val_accuracy"] for r in scores_rows],
            "val_balanced_accuracy": [r["val_balanced_accuracy"] for r in scores_rows],
            "rank_val_score": rank.tolist(),
            "epochs_trained": [r["epochs_trained"] for r in scores_rows],
            "stopped_early": [r["stopped_early"] for r in scores_rows],
        }
        self.best_index_ = int(best)
        self.best_params_ = dict(self.cv_results_["params"][best])
        self.best_score_ = float(scores_rows[best]["val_score"])
        self.n_features_in_ = X.shape[1]
        if self.refit:
            t1 = time.perf_counter()
            self.best_estimator_ = self.make_probe().fit(
                np.concatenate([X_tr, X_va]), self.classes_[np.concatenate([y_tr, yv_idx])]
            )
            self.refit_time_ = time.perf_counter() - t1
        return self

    @staticmethod
    def _best(rows) -> int:
        # Only members trained to the end compete: a member stopped by successive halving was
        # scored mid-schedule. Ties go to the stronger weight decay (the simpler model).
        done = [i for i in range(len(rows)) if not rows[i]["stopped_early"]]
        return max(done, key=lambda i: (rows[i]["val_score"], rows[i]["weight_decay"]))

    def make_probe(self) -> LinearProbe:
        """An unfitted :class:`LinearProbe` with the selected parameters."""
        check_is_fitted(self, "best_params_")
        p = self.best_params_
        return LinearProbe(
            "adamw", lr=p["lr"], weight_decay=p["weight_decay"], epochs=self.epochs,
            batch_size=self.batch_size, features=self.features, balance=self.balance,
            tau=1.0 if p["tau"] is None else p["tau"], classes=self.classes_, device=self.device,
            n_threads=self.n_threads, random_state=self.random_state,
        )

    def _est(self) -> LinearProbe:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_

    def decision_function(self, X):
        """Logits of the refit best head."""
        return self._est().decision_function(X)

    def predict_proba(self, X):
        """Probabilities of the refit best head."""
        return self._est().predict_proba(X)

    def predict(self, X):
        """Names predicted by the refit best head."""
        return self._est().predict(X)


def _extend(values, best, steps: int) -> list[float]:
    """Values beyond the grid edge where ``best`` sits; [] when it is interior or the grid is 1 point."""
    vals = sorted(set(values))
    if len(vals) < 2 or steps < 1:
        return []
    if best == vals[-1]:
        ratio = vals[-1] / vals[-2] if vals[-2] > 0 else 10.0
        return [float(best * ratio**k) for k in range(1, steps + 1)]
    if best == vals[0] and best > 0:  # zero is the natural floor of a weight decay
        ratio = vals[1] / vals[0]
        return [float(best / ratio**k) for k in range(1, steps + 1)]
    return []


# --------------------------------------------------------------------------- the linear experiment
@dataclass(frozen=True)
class LinearConfig:
    """Everything that defines one linear-probe experiment (recorded in config.json)."""

    model: str
    view: str | None = None
    names: str = "all"
    min_images: int = 0
    balance: str = "none"
    features: str = "standardize"
    weight_decays: tuple[float, ...] | None = None
    lrs: tuple[float, ...] = (1e-3,)
    epochs: int = 10
    batch_size: int = 1024
    taus: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    scoring: str = "balanced_accuracy"
    extend_grid: bool = True
    permutations: int = 0
    n_boot: int = 1000
    device: str = "auto"
    n_threads: int | None = None
    save_embeddings: bool = False
    forced_choice: bool = False
    null_repeats: int = 0
    random_state: int = 0

    def sweep(self, classes) -> LinearSweep:
        """The unfitted sweep this config describes."""
        return LinearSweep(
            self.weight_decays, lrs=self.lrs, epochs=self.epochs, batch_size=self.batch_size,
            features=self.features, balance=self.balance, taus=self.taus, scoring=self.scoring,
            extend_grid=self.extend_grid, classes=np.asarray(classes), device=self.device,
            n_threads=self.n_threads, random_state=self.random_state,
        )


def default_experiment_name(config: LinearConfig) -> str:
    """``{model}[-{view}]_linear_{names}[_{balance}]``, a plain folder name."""
    from pathlib import Path

    task = Path(config.names).stem if config.names not in ("all",) and not config.names.startswith("top") else config.names
    parts = [config.model + (f"-{config.view}" if config.view else ""), "linear", task]
    if config.balance != "none":
        parts.append(config.balance)
    return "_".join(parts).replace("/", "-")


def run_linear(
    store, *, config: LinearConfig, split, out, experiment: str | None = None, seed_group: str | None = None
) -> dict:
    """Run one linear-probe experiment on one split and write its result folder.

    Protocol: the sweep (weight decay, learning rate, logit-adjust tau) is selected on the
    split's val rows, the chosen head is refit on train+val and scores the test rows once. With
    ``config.permutations`` N > 0 the whole procedure is repeated N times with names shuffled
    across train+val identities (test labels kept) to give a permutation null.
    ``seed_group`` names the multi-seed experiment this run belongs to (``probes compare``
    reports mean and spread over a group). Returns the summary (see
    :func:`probes.evaluation.finish_experiment`).
    """
    from probes import stats
    from probes.data import load_xy
    from probes.evaluation import finish_experiment
    from probes.metrics import balanced_accuracy
    from probes.names import resolve_names

    experiment = experiment or default_experiment_name(config)
    log = [f"linear probe {experiment}: store {store.path} model {config.model} split {split.name}"]
    t0 = time.perf_counter()
    task = resolve_names(store, config.names, min_images=config.min_images)
    kw = dict(view=config.view, split=split, names=task)
    tr = load_xy(store, config.model, subset="train", **kw)
    va = load_xy(store, config.model, subset="val", **kw)
    te = load_xy(store, config.model, subset="test", **kw)
    t_load = time.perf_counter() - t0
    log.append(f"rows train {len(tr)} val {len(va)} test {len(te)}, names {len(task.names)}, dim {tr.X.shape[1]}")
    names = np.asarray(task.names)
    sweep = config.sweep(names).fit(tr.X, names[tr.y], X_val=va.X, y_val=names[va.y])
    log.append(
        f"device {sweep.best_estimator_.device_}; best {sweep.best_params_} val {config.scoring} "
        f"{sweep.best_score_:.4f}; grid extensions {sweep.grid_extensions_}"
    )
    t1 = time.perf_counter()
    scores = sweep.predict_proba(te.X)
    t_pred = time.perf_counter() - t1
    trainval_y = np.concatenate([tr.y, va.y])
    permutation = None
    if config.permutations > 0:
        both_groups = None if tr.groups is None else np.concatenate([tr.groups, va.groups])
        X_tv = np.concatenate([tr.X, va.X])
        n_tr = len(tr)

        def fit_and_score(y_perm, i):
            s = config.sweep(names).fit(X_tv[:n_tr], names[y_perm[:n_tr]], X_val=X_tv[n_tr:], y_val=names[y_perm[n_tr:]])
            pred = np.argmax(s.decision_function(te.X), axis=1)
            log.append(f"permutation {i}: test balanced accuracy {balanced_accuracy(te.y, pred):.4f}")
            return balanced_accuracy(te.y, pred)

        t2 = time.perf_counter()
        null = stats.run_permutation_null(
            fit_and_score, trainval_y, both_groups, n=config.permutations, seed=config.random_state
        )
        permutation = {"null": null, "metric": "balanced_accuracy", "seconds": time.perf_counter() - t2}
    cfg = {
        "family": "linear",
        "experiment": experiment,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
        "view": te.view,
        "name_task": task.info(),
        "probe": {
            "estimator": "LinearSweep",
            "best_params": sweep.best_params_,
            "best_val_score": sweep.best_score_,
            "validation": sweep.validation_,
            "grid_extensions": sweep.grid_extensions_,
            "edge_optimum": sweep.edge_optimum_,
            "device": sweep.best_estimator_.device_,
        },
    }
    extra = {"cv_results": sweep.cv_results_, "seed_group": seed_group}
    if config.forced_choice:
        from probes.forced_choice import forced_choice_report

        extra["forced_choice"] = forced_choice_report(scores, te.y, train_labels=trainval_y, groups=te.groups,
                                                      seed=config.random_state, null_repeats=config.null_repeats)
    warnings = []
    if sweep.edge_optimum_:
        warnings.append("the best weight decay / learning rate is still on the edge of the extended grid")
    return finish_experiment(
        out,
        experiment=experiment,
        scores=scores,
        y_true=te.y,
        names=task.names,
        image_ids=te.image_ids,
        groups=te.groups,
        train_labels=trainval_y,
        config=cfg,
        split_info=split.info(),
        store_path=store.path,
        model_spec=store.model_spec(config.model),
        timings={
            "load_s": t_load, "sweep_s": sweep.fit_time_, "refit_s": sweep.refit_time_,
            "predict_s": t_pred, "permutation_s": permutation["seconds"] if permutation else 0.0,
        },
        name_task=task.spec,
        embeddings=te.X if config.save_embeddings else None,
        n_boot=config.n_boot,
        seed=config.random_state,
        permutation=permutation,
        warnings=warnings,
        extra=extra,
        log=log,
    )


def run_linear_seeds(store, *, config: LinearConfig, seeds, out, experiment: str | None = None,
                     by: str = "identity", val: float = 0.1, test: float = 0.2) -> dict:
    """:func:`run_linear` over one split per seed; per-seed folders ``track3_{experiment}-seed{k}``.

    Returns ``{"experiment", "seeds", "per_seed": [summary...], "mean", "std"}`` over the
    headline metrics and writes it to ``out/track3_{experiment}-seeds.json``.
    """
    import json
    from pathlib import Path

    from probes.splits import get_split

    experiment = experiment or default_experiment_name(config)
    per_seed = []
    for s in seeds:
        split = get_split(store, by=by, seed=int(s), val=val, test=test)
        summ = run_linear(
            store, config=config, split=split, out=out, experiment=f"{experiment}-seed{s}", seed_group=experiment
        )
        per_seed.append(summ)
    keys = ("balanced_accuracy", "accuracy", "top5_accuracy", "macro_f1", "prediction_cv")
    table = {k: np.array([p["metrics"][k] for p in per_seed]) for k in keys}
    agg = {
        "experiment": experiment,
        "seeds": [int(s) for s in seeds],
        "mean": {k: float(v.mean()) for k, v in table.items()},
        "std": {k: float(v.std(ddof=1)) if v.size > 1 else 0.0 for k, v in table.items()},
        "per_seed": [
            {"seed": int(s), "path": p["path"], "split": p["split"]["name"], **{k: p["metrics"][k] for k in keys}}
            for s, p in zip(seeds, per_seed)
        ],
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"track3_{experiment}-seeds.json").write_text(json.dumps(agg, indent=2) + "\n")
    return agg

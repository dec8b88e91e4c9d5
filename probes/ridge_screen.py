"""A fast screen over the lambda grid: closed-form ridge regression on one-hot targets.

Not logistic regression (no probabilities, no log-loss): it shows quickly where a signal is;
report :class:`probes.linear.LinearSweep`.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from probes.errors import ProbeConfigError
from probes.linear import SCORINGS, _encode_labels, _Features, default_lambdas
from probes.linear_path import metric_score as _score
from probes.solvers import resolve_device

__all__ = ["RidgeScreen"]


class RidgeScreen(ClassifierMixin, BaseEstimator):
    """A fast screen, not logistic regression: closed-form ridge regression on one-hot targets for
    every lambda from one eigendecomposition (big_vision's few-shot evaluator, ``fewshot_lsr``).

    ``fit(X, y, X_val=, y_val=)`` standardises on the fit rows (``features``), solves
    ``min ||X W + b - Y||^2 / (2n) + (lambda / 2) ||W||^2`` for every value of ``lambdas`` at the
    cost of one ``D x D`` eigendecomposition, keeps the best validation ``scoring`` (ties to the
    larger lambda: ridge scores are not probabilities, so there is no log-loss to break them) and
    refits on train+validation. ``decision_function`` gives the ridge scores (no probabilities).
    Use it to see quickly where a signal is; report :class:`LinearSweep`.

    Fitted attributes: ``classes_``, ``coef_``, ``intercept_``, ``cv_results_`` (``param_lambda``,
    ``val_score``), ``best_params_``, ``best_score_``, ``fit_time_``.
    """

    def __init__(self, lambdas=None, *, features: str = "standardize", scoring: str = "balanced_accuracy",
                 classes=None, device: str = "cpu"):
        self.lambdas = lambdas
        self.features = features
        self.scoring = scoring
        self.classes = classes
        self.device = device

    def fit(self, X, y, *, X_val, y_val):
        import torch

        from probes.solvers import ridge_path

        if self.scoring not in SCORINGS:
            raise ProbeConfigError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        grid = sorted(set(float(v) for v in (default_lambdas() if self.lambdas is None else self.lambdas)))
        if not grid or grid[0] <= 0:
            raise ProbeConfigError(f"lambdas must be > 0, got {self.lambdas!r}")
        t0 = time.perf_counter()
        self.classes_, y_idx = _encode_labels(y, self.classes)
        yv = _encode_labels(y_val, self.classes_)[1]
        C = len(self.classes_)
        dev = resolve_device(self.device)
        with torch.no_grad():
            feats = _Features(self.features)
            Xt = feats.fit_transform(torch.from_numpy(np.asarray(X, dtype=np.float32)).to(dev))
            Xv = feats.transform(torch.from_numpy(np.asarray(X_val, dtype=np.float32)).to(dev))
            Zv = ridge_path(Xt, torch.from_numpy(y_idx).to(dev), n_classes=C, lambdas=grid, X_eval=Xv).cpu().numpy()
        scores = [_score(self.scoring, yv, z.argmax(1)) for z in Zv]
        best = max(range(len(grid)), key=lambda i: (scores[i], grid[i]))
        self.cv_results_ = {"param_lambda": grid, "val_score": scores}
        self.best_params_ = {"lambda": grid[best]}
        self.best_score_ = float(scores[best])
        with torch.no_grad():
            self._features = _Features(self.features)
            Xa = self._features.fit_transform(torch.from_numpy(np.concatenate([X, X_val]).astype(np.float32)).to(dev))
            ya = torch.from_numpy(np.concatenate([y_idx, yv])).to(dev)
            W, b = ridge_path(Xa, ya, n_classes=C, lambdas=[grid[best]])
        self.coef_, self.intercept_ = W[0].cpu().numpy(), b[0].cpu().numpy()
        self.n_features_in_ = np.asarray(X).shape[1]
        self.fit_time_ = time.perf_counter() - t0
        return self

    def decision_function(self, X) -> np.ndarray:
        """Ridge scores (n, C); columns follow ``classes_``."""
        import torch

        check_is_fitted(self, "coef_")
        Xt = self._features.transform(torch.from_numpy(np.asarray(X, dtype=np.float32))).double().numpy()
        return Xt @ self.coef_ + self.intercept_

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]

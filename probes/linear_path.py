"""The regularisation path of :class:`probes.linear.LinearSweep` and its selection rule.

:func:`select` is the rule every validation choice of the probes follows (the linear probe's
lambda and tau, kNN's k and T): the best validation score, scores within one standard error of
it counted as ties (on a few hundred validation rows the score curve is noisy), ties broken by
the validation log-loss, class-balanced for balanced accuracy; never "the more regularised".

:class:`Path` walks the grid from strong to weak regularisation, warm-starting every fit from
its neighbour (solution and L-BFGS memory), stops past the optimum, refines around it and
extends the grid at an edge.
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = ["Path", "metric_score", "select", "validation_metrics"]


def metric_score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``balanced_accuracy``, ``accuracy`` or ``macro_f1`` of hard predictions."""
    from probes.metrics import accuracy, balanced_accuracy, macro_f1

    return {"balanced_accuracy": balanced_accuracy, "accuracy": accuracy, "macro_f1": macro_f1}[metric](y_true, y_pred)


def validation_metrics(z: np.ndarray, y: np.ndarray, scoring: str) -> dict:
    """Validation score, its standard error and the log-losses of one head's decision logits ``z``."""
    pred = z.argmax(1)
    present, inv = np.unique(y, return_inverse=True)
    support = np.bincount(inv, minlength=present.size).astype(np.float64)
    recall = np.bincount(inv, weights=(pred == y), minlength=present.size) / support
    acc = float(np.mean(pred == y))
    m = z.max(axis=1, keepdims=True)
    ce = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0] - z[np.arange(len(y)), y]
    value = metric_score(scoring, y, pred)
    if scoring == "accuracy":
        se = math.sqrt(max(acc * (1 - acc), 1e-12) / len(y))
    else:  # balanced accuracy (macro F1 borrows its error: both are means over names)
        se = math.sqrt(float(np.sum(recall * (1 - recall) / support))) / present.size
    return {"val_score": value, "val_score_se": se, "val_accuracy": acc,
            "val_balanced_accuracy": float(recall.mean()), "val_log_loss": float(ce.mean()),
            "val_balanced_log_loss": float(np.mean(np.bincount(inv, weights=ce) / support))}


def select(rows, scoring: str) -> int:
    """The index of the selected row: the lowest validation loss among the rows whose score is
    within one standard error of the best score (differences inside the validation noise are
    ties), so a noisy score curve cannot pick an over- or under-fitted lambda; never "the more
    regularised". The loss is the class-balanced log-loss for balanced accuracy and macro F1
    (the proper scoring rule of the balanced error), the plain log-loss for accuracy.
    """
    loss = "val_log_loss" if scoring == "accuracy" else "val_balanced_log_loss"
    top = max(range(len(rows)), key=lambda i: (rows[i]["val_score"], -rows[i][loss]))
    cut = rows[top]["val_score"] - rows[top]["val_score_se"]
    tied = [i for i in range(len(rows)) if rows[i]["val_score"] >= cut]
    return min(tied, key=lambda i: (rows[i][loss], -rows[i]["val_score"]))


class Path:
    """One walk along the regularisation path of a :class:`probes.linear.LinearSweep`: its fitted
    rows (validation metrics, convergence), heads and warm-start states."""

    def __init__(self, sweep: LinearSweep, fitter: _Fitter, Xv, yv, taus, lp, seed):
        self.s = sweep
        self.fitter = fitter
        self.Xv, self.yv, self.taus, self.lp, self.seed = Xv, yv, taus, lp.astype(np.float32), seed
        self.rows: list[dict] = []
        self.heads: list[tuple[np.ndarray, np.ndarray]] = []
        self.state: dict[float, tuple] = {}  # lambda -> (W (D,1,C), b (1,C), memory) for warm starts
        self.extensions: list[dict] = []
        self.stopped: str | None = None
        self.grid: list[float] = []

    def _fit(self, lambdas, start, stage):
        """Fit ``lambdas`` (one batch) from the warm start of the solved lambda ``start`` (or zeros)."""
        W0 = b0 = memory = None
        if start is not None:
            W, b, mem = self.state[start]
            g = len(lambdas)
            W0, b0 = W.expand(-1, g, -1).contiguous(), b.expand(g, -1).contiguous()
            if mem is not None:
                memory = mem.for_lambdas(lambdas, members=[0] * g)
        t0 = time.perf_counter()
        res = self.fitter.fit(lambdas, solver=self.s.solver, tol=self.s.tol, max_iter=self.s.max_iter, W0=W0, b0=b0,
                              memory=memory, adam_options=dict(lr=self.s.lr, max_epochs=self.s.max_epochs,
                                                               batch_size=self.s.batch_size), seed=self.seed)
        secs = (time.perf_counter() - t0) / len(lambdas)
        for g, lam in enumerate(lambdas):
            W, b = res.W[g], res.b[g]
            mem = None if res.memory is None else res.memory.for_lambdas([lam], members=[g])
            self.state[lam] = (W[:, None, :], b[None, :], mem)
            zv = (self.Xv @ W + b).cpu().numpy().astype(np.float64)
            self.rows.append({"lambda": lam, **self._score(zv), "n_iter": int(res.n_iter[g]),
                              "grad_norm": float(res.grad_norm[g]) / self.fitter.scale,
                              "converged": bool(res.converged[g]), "solver_message": res.message[g],
                              "stage": stage, "fit_seconds": secs})
            self.heads.append((W.cpu().numpy(), b.cpu().numpy()))
        self._prune(lambdas)
        return self.rows[-len(lambdas):]

    def _prune(self, latest):
        """Keep L-BFGS memory only where a later fit can start: the latest, the best, the edges."""
        lams = [r["lambda"] for r in self.rows]
        keep = set(latest) | {self._best()["lambda"], min(lams), max(lams)}
        for lam, (W, b, mem) in list(self.state.items()):
            if lam not in keep and mem is not None:
                self.state[lam] = (W, b, None)

    def _score(self, zv):
        """Validation metrics of one head, with its tau (logit adjustment) selected here."""
        cands = []
        for tau in self.taus:
            z = zv if tau is None else zv - tau * self.lp
            cands.append({"tau": tau, **validation_metrics(z, self.yv, self.s.scoring)})
        best = dict(cands[select(cands, self.s.scoring)])
        best["by_tau"] = {str(c["tau"]): c["val_score"] for c in cands if c["tau"] is not None}
        return best

    def _best(self):
        return self.rows[select(self.rows, self.s.scoring)]

    def run(self, grid):
        """The walk: ``"full"`` fits every value; ``"coarse-to-fine"`` steps two grid values at a time
        (a decade on the default grid) while the validation loss falls ever faster, one value at a
        time once its fall slows (the minimum is near), and stops past the optimum (see below)."""
        self.grid = list(grid)
        fine = self.s.search == "full" or len(grid) < 5
        stage = "path" if self.s.search == "full" else "coarse"
        loss = "val_log_loss" if self.s.scoring == "accuracy" else "val_balanced_log_loss"
        i, step, prev, gains = 0, 1 if fine else 2, None, []
        while True:
            lam = self.grid[i]
            self._fit([lam], prev, stage)
            prev = lam
            if len(self.rows) > 1:
                gains.append(self.rows[-2][loss] - self.rows[-1][loss])
            last = i == len(self.grid) - 1
            if not fine and not last:
                # Walking toward weaker regularisation past the optimum: the selection loss rose and
                # the score did not beat the best by more than its standard error, `patience` times
                # in a row, and none of those values is selected. The weaker values, the slowest to
                # fit, cannot be selected unless validation turns around.
                tail = self.rows[-(self.s.patience + 1):]
                best = self._best()
                top = max(self.rows, key=lambda r: r["val_score"])
                if (len(tail) == self.s.patience + 1 and all(r is not best for r in tail[1:])
                        and all(b[loss] > a[loss] and b["val_score"] <= top["val_score"] + top["val_score_se"]
                                for a, b in zip(tail, tail[1:]))):
                    self.stopped = (f"walk stopped after lambda {lam:.3g}: the validation loss rose "
                                    f"{self.s.patience} time(s) in a row past the selected lambda "
                                    f"{best['lambda']:.3g} without a better score")
                    break
                # The loss still falls but less than at the previous step: the minimum is near, so
                # the walk goes on one grid value at a time (the step past it is then the short one).
                if len(gains) > 1 and 0 < gains[-1] < gains[-2]:
                    step = 1
            if last:
                break
            i = min(i + step, len(self.grid) - 1)
        self._refine()
        self._extend()

    def _refine(self):
        """Fit the unfitted grid neighbours of the best lambda, both at once from its solution."""
        best = self._best()["lambda"]
        i = self.grid.index(best) if best in self.grid else None
        if i is None:
            return
        fitted = {r["lambda"] for r in self.rows}
        new = [self.grid[j] for j in (i - 1, i + 1) if 0 <= j < len(self.grid) and self.grid[j] not in fitted]
        if new:
            self._fit(new, best, "refine")

    def _extend(self):
        if not self.s.extend_grid or len(self.grid) < 2:
            return
        for _ in range(self.s.max_extensions):
            best = self._best()["lambda"]
            lams = sorted({r["lambda"] for r in self.rows} | set(self.grid), reverse=True)
            if best not in (lams[0], lams[-1]):
                return
            ratio = self.grid[0] / self.grid[1]  # the grid's spacing (strong / next)
            if best == lams[0]:
                new, edge = [best * ratio ** k for k in range(1, self.s.extend_steps + 1)], "strong"
            else:
                new, edge = [best / ratio ** k for k in range(1, self.s.extend_steps + 1)], "weak"
            self.extensions.append({"edge": edge, "added": [float(v) for v in new]})
            prev = best
            for lam in new:  # continue the path outward, one warm start after the other
                self._fit([lam], prev, "extension")
                prev = lam

    def edge_optimum(self, best: float) -> bool:
        lams = sorted({r["lambda"] for r in self.rows} | set(self.grid))
        return len(lams) > 1 and best in (lams[0], lams[-1])

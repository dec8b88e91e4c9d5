"""Solvers for L2-regularised multinomial logistic regression, many heads at once, in torch.

The objective of head ``g`` (the one :mod:`probes.linear` documents and scikit-learn minimises):

    f_g(W, b) = sum_i s_i CE(x_i W + b, y_i) / sum_i s_i  +  (lambda_g / 2) ||W||_F^2

with sample weights ``s_i`` (1 unless class-balanced), the intercept ``b`` not penalised and
``lambda_g > 0``. scikit-learn's ``LogisticRegression(C)`` minimises the same function with
``lambda = 1 / (C * sum_i s_i)``.

:func:`lbfgs` minimises G such objectives (one per lambda) that share the rows ``X``: the heads
are one ``(D, G*C)`` matrix, so each iteration costs one GEMM ``X @ d`` (the search direction;
every line-search trial is then ``Z + alpha * X d`` without another product) and one GEMM
``X^T R`` (the gradient), for all members together. Each member has its own L-BFGS memory, its own
step and its own convergence test; a member that converged stops and leaves the product.
Convergence is scikit-learn's ``gtol``: the largest absolute entry of the gradient (of ``W`` and
``b``) is at most ``tol``. Products run in the data's dtype (float32 by default); reductions that
decide a step (losses, dot products of the two-loop recursion) accumulate in float64.

Warm starts along a regularisation path: :class:`LBFGSMemory` carries the curvature pairs of a
fit to the next lambda. A pair ``(s, y)`` measured at ``lambda_old`` is exact at ``lambda_new``
after ``y += (lambda_new - lambda_old) * s_W`` (the penalty's curvature is ``lambda * I``), so the
next fit starts with a good inverse-Hessian model as well as a good point.

:func:`adam` is the mini-batch alternative for an explicit choice (never the default): Adam on the
same objective's gradient (so it targets the same optimum) with a full-gradient convergence test
after every epoch. :func:`ridge_path` is the closed-form ridge screen (big_vision's few-shot
evaluator): every lambda from one eigendecomposition; a screening tool, not logistic regression.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

from probes.errors import ProbeConfigError

__all__ = [
    "LBFGSMemory",
    "SolverResult",
    "adam",
    "lbfgs",
    "lipschitz_bound",
    "resolve_device",
    "ridge_path",
    "threads",
]


def resolve_device(device: str):
    """``"auto"`` -> CUDA when torch sees a GPU, else CPU; an unavailable CUDA is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ProbeConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeConfigError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


@contextlib.contextmanager
def threads(n_threads: int | None):
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


@dataclass
class SolverResult:
    """Per-member outcome of a fit: heads ``W`` (G, D, C), ``b`` (G, C) and the convergence record."""

    W: object
    b: object
    n_iter: list[int]
    grad_norm: list[float]
    loss: list[float]
    converged: list[bool]
    message: list[str]
    memory: LBFGSMemory | None = None


@dataclass
class LBFGSMemory:
    """Curvature pairs of G members: ``s`` and ``y`` lists of ``(W (D, G, C), b (G, C))`` tensors.

    ``y`` is stored as measured at ``lambdas`` (one per member); :meth:`for_lambdas` re-targets the
    pairs to other lambdas exactly. ``rho`` (k, G) float64 is ``1 / s.y``; 0 marks an empty slot.
    """

    s: list = field(default_factory=list)
    y: list = field(default_factory=list)
    rho: list = field(default_factory=list)
    lambdas: object = None  # (G,) float64 tensor

    def for_lambdas(self, lambdas, members=None) -> LBFGSMemory:
        """The pairs re-targeted to ``lambdas`` (G',): member ``j`` of the result takes the pairs of
        member ``members[j]`` of this memory (default: the same member; repeats allowed, so one
        solved path point can seed several new lambdas)."""
        import torch

        lam = torch.as_tensor(np.asarray(lambdas, dtype=np.float64), device=self.lambdas.device)
        idx = torch.arange(lam.numel(), device=lam.device) if members is None else torch.as_tensor(
            list(members), dtype=torch.long, device=lam.device)
        if idx.numel() != lam.numel():
            raise ProbeConfigError(f"{lam.numel()} lambdas but {idx.numel()} source members")
        delta = lam - self.lambdas.index_select(0, idx)
        out = LBFGSMemory(lambdas=lam.clone())
        for (sW, sb), (yW, yb), r in zip(self.s, self.y, self.rho):
            sW, sb, yW, yb, r = (sW.index_select(1, idx), sb.index_select(0, idx), yW.index_select(1, idx),
                                 yb.index_select(0, idx), r.index_select(0, idx))
            yW = yW + delta.to(yW.dtype).view(1, -1, 1) * sW
            sy = _dot(sW, yW) + _dot(sb, yb)
            out.s.append((sW.contiguous(), sb.contiguous()))
            out.y.append((yW.contiguous(), yb.contiguous()))
            # rho = 1 / s.y at the new lambdas; an empty slot (rho 0) stays empty.
            out.rho.append(torch.where((r > 0) & (sy > 0), 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy)))
        return out


def _dot(a, b):
    """Per-member dot products ``(G,)`` in float64 of ``(D, G, C)`` or ``(G, C)`` tensors."""
    import torch

    return (a * b).sum(dim=(0, 2) if a.ndim == 3 else 1, dtype=torch.float64)


def _amax(a):
    """Per-member largest absolute entry ``(G,)`` of ``(D, G, C)`` or ``(G, C)``."""
    return a.abs().amax(dim=(0, 2)) if a.ndim == 3 else a.abs().amax(dim=1)


def lipschitz_bound(X, sample_weight=None, *, n_power: int = 30, seed: int = 0) -> float:
    """An estimate of the gradient's Lipschitz constant for the data term: ``lambda_max(A^T S A) / (2 sum s)``.

    ``A = [X, 1]`` (the intercept's column), ``S`` the sample weights; softmax cross-entropy has
    Hessian at most ``1/2`` per row in every class direction, so ``1/(L + lambda)`` is a safe first
    step. Power iteration (float64), inflated 10% against under-estimation.
    """
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(X.shape[1] + 1, generator=g, dtype=torch.float64).to(X.device)
    w = None if sample_weight is None else sample_weight.double()
    total = float(X.shape[0] if w is None else w.sum())
    est = 1.0
    for _ in range(n_power):
        v = v / v.norm()
        u = X @ v[:-1].to(X.dtype) + v[-1].to(X.dtype)
        u = u.double() if w is None else u.double() * w
        new = torch.cat([(X.t() @ u.to(X.dtype)).double(), u.sum().view(1)])
        est = float(new.norm()) / total
        v = new
    return 0.55 * est


class _Problem:
    """The rows, one-hot structure and sample weights shared by every member."""

    def __init__(self, X, y, *, n_classes, sample_weight=None):
        import torch

        self.X = X.contiguous()
        self.y = y
        self.n, self.d = X.shape
        self.c = int(n_classes)
        self.rows = torch.arange(self.n, device=X.device)
        self._X2 = None
        self._m2 = None
        if sample_weight is None:
            self.w = None
            self.total = float(self.n)
        else:
            sw = torch.as_tensor(sample_weight, device=X.device)
            self.total = float(sw.double().sum())
            self.w = (sw / self.total).to(X.dtype)  # normalised: the data term is a weighted mean

    def logits(self, W, b):
        """``(n, G, C)`` from ``W`` (D, G, C), ``b`` (G, C): one GEMM."""
        import torch

        g = W.shape[1]
        return torch.addmm(b.reshape(1, g * self.c), self.X, W.reshape(self.d, g * self.c)).view(self.n, g, self.c)

    def data_loss(self, Z):
        """Per-member weighted mean cross-entropy ``(G,)`` in float64, with ``exp(Z - rowmax)`` and its
        row sums kept (one exponential pass serves the loss and, once accepted, the gradient)."""
        import torch

        m = Z.amax(dim=2, keepdim=True)
        E = torch.sub(Z, m).exp_()
        s = E.sum(dim=2)
        ce = (m[:, :, 0] + s.log()) - Z[self.rows, :, self.y]
        if self.w is None:
            loss = ce.sum(0, dtype=torch.float64) / self.n
        else:
            loss = (ce * self.w[:, None]).sum(0, dtype=torch.float64)
        return loss, E, s

    def diag_curvature(self, Pm, *, exact: bool):
        """The data Hessian's diagonal ``(hW (D, G, C), hb (G, C))``: sum_i s_i x_ij^2 p_ic (1 - p_ic) / sum s.

        ``exact`` costs one GEMM (with the squared features); otherwise the product is separated
        into the feature second moments times the per-class mean of p (1 - p), which is free.
        """
        import torch

        g = Pm.shape[1]
        V = Pm * (1 - Pm)
        V.mul_(self.w[:, None, None] if self.w is not None else 1.0 / self.n)
        hb = V.sum(0)
        if exact:
            if self._X2 is None:
                self._X2 = self.X * self.X
            hW = torch.mm(self._X2.t(), V.view(self.n, g * self.c)).view(self.d, g, self.c)
        else:
            if self._m2 is None:
                X2 = self.X * self.X
                self._m2 = X2.mean(0) if self.w is None else (X2 * self.w[:, None]).sum(0)
            hW = self._m2.view(-1, 1, 1) * hb.view(1, g, self.c)
        return hW, hb

    def data_grad(self, Pm):
        """``(gW (D, G, C), gb (G, C))`` of the data term from the softmax ``Pm`` (overwritten)."""
        import torch

        g = Pm.shape[1]
        R = Pm
        R[self.rows, :, self.y] -= 1.0
        if self.w is None:
            scale = 1.0 / self.n
        else:
            R.mul_(self.w[:, None, None])
            scale = 1.0
        Rm = R.view(self.n, g * self.c)
        gW = torch.mm(self.X.t(), Rm).mul_(scale).view(self.d, g, self.c)
        gb = Rm.sum(0).mul_(scale).view(g, self.c)
        return gW, gb


def lbfgs(
    X,
    y,
    *,
    n_classes: int,
    lambdas,
    sample_weight=None,
    W0=None,
    b0=None,
    memory: LBFGSMemory | None = None,
    tol: float = 1e-4,
    max_iter: int = 500,
    history: int = 10,
    lipschitz: float | None = None,
    precondition: str = "diag",
    refresh: int = 10,
) -> SolverResult:
    """Minimise G objectives (one per ``lambdas[g]``) over shared rows by batched L-BFGS.

    Args:
        X: (n, D) torch tensor (already preprocessed); y: (n,) int64 class indices.
        lambdas: (G,) L2 strengths, all > 0.
        sample_weight: (n,) or None.
        W0, b0: warm start ``(D, G, C)`` and ``(G, C)`` (zeros when None).
        memory: curvature pairs to start from (:meth:`LBFGSMemory.for_lambdas` of a neighbour).
        tol: convergence when max |gradient entry| <= tol (scikit-learn's ``gtol``).
        max_iter: iterations per member.
        history: L-BFGS memory length.
        lipschitz: :func:`lipschitz_bound` of the data (computed when None).
        precondition: the initial inverse Hessian of the two-loop recursion: ``"diag"`` (the
            inverse of the exact Hessian diagonal, one GEMM every ``refresh`` iterations),
            ``"separable"`` (feature second moments x per-class p(1-p), free) or ``"none"``
            (a scalar). The unpenalised intercept and rare classes have far smaller curvature
            than the penalised weights; without a diagonal model L-BFGS spends its memory on that.

    Returns a :class:`SolverResult` whose ``memory`` can warm-start a neighbouring lambda.
    """
    import torch

    lam_list = [float(v) for v in np.atleast_1d(np.asarray(lambdas, dtype=np.float64))]
    if not lam_list or min(lam_list) <= 0 or not all(math.isfinite(v) for v in lam_list):
        raise ProbeConfigError(f"every lambda must be a finite number > 0, got {lam_list}")
    if tol <= 0 or max_iter < 1 or history < 1:
        raise ProbeConfigError(f"tol must be > 0, max_iter and history >= 1; got {tol}, {max_iter}, {history}")
    P = _Problem(X, y, n_classes=n_classes, sample_weight=sample_weight)
    dev, dt = X.device, X.dtype
    G, D, C = len(lam_list), P.d, P.c
    lam = torch.tensor(lam_list, dtype=torch.float64, device=dev)
    W = torch.zeros(D, G, C, device=dev, dtype=dt) if W0 is None else W0.to(dev, dt).clone().contiguous()
    b = torch.zeros(G, C, device=dev, dtype=dt) if b0 is None else b0.to(dev, dt).clone().contiguous()
    if tuple(W.shape) != (D, G, C) or tuple(b.shape) != (G, C):
        raise ProbeConfigError(f"warm start must be W (D, G, C) = {(D, G, C)} and b (G, C); got {tuple(W.shape)}")
    L = lipschitz_bound(X, P.w) if lipschitz is None else float(lipschitz)
    mem = LBFGSMemory(lambdas=lam.clone()) if memory is None else memory
    if mem.lambdas.numel() != G or not torch.allclose(mem.lambdas, lam, rtol=1e-12, atol=0):
        raise ProbeConfigError("memory must be re-targeted to these lambdas first (LBFGSMemory.for_lambdas)")
    mem = LBFGSMemory(s=list(mem.s), y=list(mem.y), rho=[r.clone() for r in mem.rho], lambdas=lam.clone())

    out_W = torch.empty(G, D, C, device=dev, dtype=dt)
    out_b = torch.empty(G, C, device=dev, dtype=dt)
    n_iter, gnorm, losses = [0] * G, [float("nan")] * G, [float("nan")] * G
    conv, msg, fails = [False] * G, [""] * G, [0] * G
    final_pairs: dict[int, list] = {}
    active = list(range(G))
    c1 = 1e-4
    eps = float(torch.finfo(dt).eps)
    # The loss is a float64 sum of per-row losses computed in the data's dtype: differences below
    # this level are round-off, so the Armijo test does not reject a good step for them.
    noise_scale = 10 * eps / math.sqrt(P.n)

    if precondition not in ("diag", "separable", "none"):
        raise ProbeConfigError(f"precondition must be 'diag', 'separable' or 'none', got {precondition!r}")
    lam_dt = lam.to(dt)
    def inverse_diagonal(Pm):
        if precondition == "none":
            return ((1.0 / (L + lam)).to(dt).view(1, -1, 1).expand(D, -1, C).contiguous(),
                    (1.0 / (L + lam)).to(dt).view(-1, 1).expand(-1, C).contiguous())
        hW, hb = P.diag_curvature(Pm, exact=precondition == "diag")
        # Floors keep a class that the current point already fits perfectly from an infinite step.
        floor = 1e-3 * float(hb.mean()) + 1e-12
        return 1.0 / (hW + lam_dt.view(1, -1, 1) + floor), 1.0 / (hb + floor)

    Z = P.logits(W, b)
    data_f, E, ssum = P.data_loss(Z)
    f = data_f + 0.5 * lam * _dot(W, W)
    Pm = E.div_(ssum[:, :, None])
    MW, Mb = inverse_diagonal(Pm)
    gW, gb = P.data_grad(Pm)
    gW.add_(lam_dt.view(1, -1, 1) * W)
    del E, Pm
    since_refresh = 0

    def finish(positions, reason):
        for p in positions:
            m = active[p]
            out_W[m], out_b[m] = W[:, p], b[p]
            losses[m] = float(f[p])
            msg[m] = reason(p)
            final_pairs[m] = [((sW[:, p], sb[p]), (yW[:, p], yb[p]), r[p])
                              for (sW, sb), (yW, yb), r in zip(mem.s, mem.y, mem.rho)]

    def keep(positions):
        nonlocal W, b, Z, f, data_f, gW, gb, lam, lam_dt, active, MW, Mb
        idx = torch.as_tensor(positions, dtype=torch.long, device=dev)
        MW, Mb = MW.index_select(1, idx), Mb.index_select(0, idx)
        W, gW = W.index_select(1, idx), gW.index_select(1, idx)
        b, gb = b.index_select(0, idx), gb.index_select(0, idx)
        Z = Z.index_select(1, idx)
        f, data_f, lam, lam_dt = f[idx], data_f[idx], lam[idx], lam_dt[idx]
        mem.s = [(sW.index_select(1, idx), sb.index_select(0, idx)) for sW, sb in mem.s]
        mem.y = [(yW.index_select(1, idx), yb.index_select(0, idx)) for yW, yb in mem.y]
        mem.rho = [r[idx] for r in mem.rho]
        active = [active[p] for p in positions]

    while active:
        g_inf = torch.maximum(_amax(gW), _amax(gb)).double().tolist()
        stop = {}
        for p, m in enumerate(active):
            gnorm[m] = g_inf[p]
            if g_inf[p] <= tol:
                conv[m] = True
                stop[p] = f"converged in {n_iter[m]} iterations: max |gradient| {g_inf[p]:.2e} <= tol {tol:g}"
            elif fails[m] >= 2:
                stop[p] = (f"line search made no progress at max |gradient| {g_inf[p]:.2e} > tol {tol:g} "
                           f"(the round-off floor of {str(dt).replace('torch.', '')} on this data; try tol larger "
                           "or float64)")
            elif n_iter[m] >= max_iter:
                stop[p] = f"max_iter={max_iter} reached with max |gradient| {g_inf[p]:.2e} > tol {tol:g}"
        if stop:
            finish(list(stop), lambda p: stop[p])
            keep([p for p in range(len(active)) if p not in stop])
            if not active:
                break
        g = len(active)
        col = (lambda v: v.to(dt).view(1, g, 1))
        row = (lambda v: v.to(dt).view(g, 1))
        # Two-loop recursion, every member at once: d = -H_k g.
        qW, qb = gW.clone(), gb.clone()
        alphas = []
        for (sW, sb), (yW, yb), r in zip(reversed(mem.s), reversed(mem.y), reversed(mem.rho)):
            a = r * (_dot(sW, qW) + _dot(sb, qb))
            alphas.append(a)
            qW.sub_(col(a) * yW)
            qb.sub_(row(a) * yb)
        # H0 = gamma * diag(M^-1), gamma = s.y / (y M^-1 y) of the newest pair (1 without one).
        gamma = torch.ones(g, dtype=torch.float64, device=dev)
        for (sW, sb), (yW, yb), r in zip(reversed(mem.s), reversed(mem.y), reversed(mem.rho)):
            yMy = _dot(yW * MW, yW) + _dot(yb * Mb, yb)
            gamma = torch.where((r > 0) & (yMy > 0), 1.0 / (r.clamp_min(1e-300) * yMy.clamp_min(1e-300)), gamma)
            break
        qW.mul_(col(gamma) * MW)
        qb.mul_(row(gamma) * Mb)
        for ((sW, sb), (yW, yb), r), a in zip(zip(mem.s, mem.y, mem.rho), reversed(alphas)):
            beta = r * (_dot(yW, qW) + _dot(yb, qb))
            qW.add_(col(a - beta) * sW)
            qb.add_(row(a - beta) * sb)
        dW, db = qW.neg_(), qb.neg_()
        gd = _dot(gW, dW) + _dot(gb, db)
        if not bool((gd < 0).all()):  # round-off made the direction useless: steepest descent there
            steep = (gd >= 0)
            dW = torch.where(col(steep) > 0, -MW * gW, dW)
            db = torch.where(row(steep) > 0, -Mb * gb, db)
            gd = _dot(gW, dW) + _dot(gb, db)
        XD = P.logits(dW, db)  # the one forward GEMM of the iteration: every trial is Z + alpha XD
        WW, Wd, dd = _dot(W, W), _dot(W, dW), _dot(dW, dW)
        alpha = torch.ones(g, dtype=torch.float64, device=dev)
        accepted = torch.zeros(g, dtype=torch.bool, device=dev)
        Z_new = E_new = s_new = None
        f_new = f.clone()
        noise = noise_scale * (data_f.abs() + 1.0)
        for trial in range(30):
            todo = (~accepted).nonzero().flatten()
            if todo.numel() == 0:
                break
            a = alpha[todo]
            whole = todo.numel() == g
            Zt = torch.addcmul(Z if whole else Z[:, todo], XD if whole else XD[:, todo], a.to(dt).view(1, -1, 1))
            dft, Et, st = P.data_loss(Zt)
            ft = dft + 0.5 * lam[todo] * (WW[todo] + 2 * a * Wd[todo] + a * a * dd[todo])
            ok = ft <= f[todo] + c1 * a * gd[todo] + noise[todo]
            if bool(ok.all()) and trial == 0:  # the usual case: every member takes its first step
                Z_new, E_new, s_new, f_new = Zt, Et, st, ft
                accepted[:] = True
                break
            if Z_new is None:
                Z_new, E_new, s_new = Z.clone(), torch.exp(Z - Z.amax(dim=2, keepdim=True)), None
                s_new = E_new.sum(dim=2)
            if bool(ok.any()):
                acc = todo[ok]
                Z_new[:, acc], E_new[:, acc], s_new[:, acc], f_new[acc] = Zt[:, ok], Et[:, ok], st[:, ok], ft[ok]
                accepted[acc] = True
            if bool((~ok).any()):
                rej, a_r = todo[~ok], a[~ok]
                # Safeguarded quadratic backtrack from the rejected trial's value.
                curv = (ft[~ok] - f[rej] - a_r * gd[rej]) / (a_r * a_r)
                alpha[rej] = torch.clamp(-gd[rej] / (2 * curv.clamp_min(1e-300)), 0.1 * a_r, 0.5 * a_r)
        alpha = torch.where(accepted, alpha, torch.zeros_like(alpha))
        sW_new, sb_new = col(alpha) * dW, row(alpha) * db
        W, b = W + sW_new, b + sb_new
        Z, f = Z_new, f_new
        del XD
        data_f = f - 0.5 * lam * _dot(W, W)
        Pm = E_new.div_(s_new[:, :, None])
        del E_new, s_new
        since_refresh += 1
        if since_refresh >= refresh and precondition == "diag":
            MW, Mb = inverse_diagonal(Pm)
            since_refresh = 0
        gW_new, gb_new = P.data_grad(Pm)  # the one backward GEMM of the iteration
        del Pm
        gW_new.add_(lam_dt.view(1, -1, 1) * W)
        yW_new, yb_new = gW_new - gW, gb_new - gb
        gW, gb = gW_new, gb_new
        sy = _dot(sW_new, yW_new) + _dot(sb_new, yb_new)
        ss, yy = _dot(sW_new, sW_new) + _dot(sb_new, sb_new), _dot(yW_new, yW_new) + _dot(yb_new, yb_new)
        rho_new = torch.where(sy > 1e-10 * torch.sqrt(ss * yy), 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        mem.s.append((sW_new, sb_new))
        mem.y.append((yW_new, yb_new))
        mem.rho.append(rho_new)
        if len(mem.s) > history:
            del mem.s[0], mem.y[0], mem.rho[0]
        acc_list = accepted.tolist()
        for p, m in enumerate(active):
            n_iter[m] += 1
            if acc_list[p]:
                fails[m] = 0
            else:
                # No decrease even at tiny steps: the memory misleads (or round-off rules). Clear this
                # member's pairs so the next direction is the gradient's; two failures in a row end it.
                fails[m] += 1
                for r in mem.rho:
                    r[p] = 0.0

    # The memory that warm-starts the next lambda: every member's final pairs, aligned by slot.
    final_mem = LBFGSMemory(lambdas=torch.tensor(lam_list, dtype=torch.float64, device=dev))
    k = max((len(v) for v in final_pairs.values()), default=0)
    zero_W, zero_b = torch.zeros(D, C, device=dev, dtype=dt), torch.zeros(C, device=dev, dtype=dt)
    zero_r = torch.zeros((), dtype=torch.float64, device=dev)
    for slot in range(k):
        cols = []
        for m in range(G):
            j = slot - (k - len(final_pairs[m]))
            cols.append(final_pairs[m][j] if j >= 0 else ((zero_W, zero_b), (zero_W, zero_b), zero_r))
        final_mem.s.append((torch.stack([c[0][0] for c in cols], 1), torch.stack([c[0][1] for c in cols], 0)))
        final_mem.y.append((torch.stack([c[1][0] for c in cols], 1), torch.stack([c[1][1] for c in cols], 0)))
        final_mem.rho.append(torch.stack([c[2] for c in cols]))
    return SolverResult(W=out_W, b=out_b, n_iter=n_iter, grad_norm=gnorm, loss=losses, converged=conv,
                        message=msg, memory=final_mem)


def adam(
    X,
    y,
    *,
    n_classes: int,
    lambdas,
    sample_weight=None,
    lr: float = 1e-3,
    max_epochs: int = 100,
    batch_size: int = 1024,
    tol: float = 1e-4,
    seed: int = 0,
    W0=None,
    b0=None,
) -> SolverResult:
    """Mini-batch Adam on the same objective (coupled L2 gradient), G heads sharing the batches.

    After every epoch the full-batch gradient is computed; a member whose max |gradient| is at
    most ``tol`` stops there (``converged``). Members that reach ``max_epochs`` are reported as not
    converged. Adam's noise floor at a fixed learning rate often sits above ``tol``: this solver is
    an explicit option (for example on data streamed in batches), never the default.
    """
    import torch

    lam_list = [float(v) for v in np.atleast_1d(np.asarray(lambdas, dtype=np.float64))]
    if not lam_list or min(lam_list) <= 0:
        raise ProbeConfigError(f"every lambda must be > 0, got {lam_list}")
    if lr <= 0 or max_epochs < 1 or batch_size < 1:
        raise ProbeConfigError(f"lr must be > 0, max_epochs and batch_size >= 1; got {lr}, {max_epochs}, {batch_size}")
    Pr = _Problem(X, y, n_classes=n_classes, sample_weight=sample_weight)
    dev, dt = X.device, X.dtype
    G, D, C, n = len(lam_list), Pr.d, Pr.c, Pr.n
    lam = torch.tensor(lam_list, dtype=dt, device=dev)
    W = torch.zeros(D, G, C, device=dev, dtype=dt) if W0 is None else W0.to(dev, dt).clone()
    b = torch.zeros(G, C, device=dev, dtype=dt) if b0 is None else b0.to(dev, dt).clone()
    mW, vW, mb, vb = torch.zeros_like(W), torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(b)
    b1, b2, eps = 0.9, 0.999, 1e-8
    gen = torch.Generator().manual_seed(int(seed))
    w_all = None if Pr.w is None else Pr.w * n  # per-row weights with mean 1
    step = 0
    done = torch.zeros(G, dtype=torch.bool, device=dev)
    n_iter, gnorm, losses, conv, msg = [0] * G, [float("nan")] * G, [float("nan")] * G, [False] * G, [""] * G
    for epoch in range(1, max_epochs + 1):
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            xb, yb = Pr.X[idx], Pr.y[idx]
            nb = idx.numel()
            rows = torch.arange(nb, device=dev)
            z = torch.addmm(b.reshape(1, G * C), xb, W.reshape(D, G * C)).view(nb, G, C)
            p = torch.softmax(z, dim=2)
            p[rows, :, yb] -= 1.0
            if w_all is not None:
                p.mul_(w_all[idx].view(nb, 1, 1))
            gW = (xb.t() @ p.view(nb, G * C)).view(D, G, C) / nb + lam.view(1, G, 1) * W
            gb = p.sum(0) / nb
            step += 1
            c1, c2 = 1 - b1 ** step, 1 - b2 ** step
            live = (~done).to(dt)
            mW.lerp_(gW, 1 - b1), vW.mul_(b2).addcmul_(gW, gW, value=1 - b2)
            mb.lerp_(gb, 1 - b1), vb.mul_(b2).addcmul_(gb, gb, value=1 - b2)
            W -= (lr * live).view(1, G, 1) * (mW / c1) / ((vW / c2).sqrt() + eps)
            b -= (lr * live).view(G, 1) * (mb / c1) / ((vb / c2).sqrt() + eps)
        Z = Pr.logits(W, b)
        data_f, E, ssum = Pr.data_loss(Z)
        fW, fb = Pr.data_grad(E.div_(ssum[:, :, None]))
        fW.add_(lam.view(1, G, 1) * W)
        g_inf = torch.maximum(_amax(fW), _amax(fb)).double()
        f = data_f + 0.5 * lam.double() * _dot(W, W)
        for m in range(G):
            if done[m]:
                continue
            n_iter[m], gnorm[m], losses[m] = epoch, float(g_inf[m]), float(f[m])
            if gnorm[m] <= tol:
                done[m], conv[m] = True, True
                msg[m] = f"converged after {epoch} epochs: max |gradient| {gnorm[m]:.2e} <= tol {tol:g}"
        if bool(done.all()):
            break
    for m in range(G):
        if not conv[m]:
            msg[m] = f"max_epochs={max_epochs} reached with max |gradient| {gnorm[m]:.2e} > tol {tol:g}"
    return SolverResult(W=W.permute(1, 0, 2).contiguous(), b=b.clone(), n_iter=n_iter, grad_norm=gnorm, loss=losses,
                        converged=conv, message=msg)


def ridge_path(X, y, *, n_classes: int, lambdas, X_eval=None):
    """Closed-form ridge regression on centred one-hot targets for every lambda, one eigendecomposition.

    Minimises ``||X W + b - Y||^2 / (2n) + (lambda / 2) ||W||^2`` with ``Y`` one-hot in {0, 1}
    (big_vision ``fewshot_lsr`` uses {-1, 1}: the same argmax), via ``X_c^T X_c / n = V E V^T``:
    ``W(lambda) = V diag(1 / (E + lambda)) V^T X_c^T Y_c / n``. Returns ``(W (G, D, C), b (G, C))``
    in float64, or the ``X_eval`` decision values ``(G, n_eval, C)`` when given.
    """
    import torch

    Xd = X.double()
    n = Xd.shape[0]
    mu = Xd.mean(0)
    Xc = Xd - mu
    Y = torch.zeros(n, n_classes, dtype=torch.float64, device=X.device)
    Y[torch.arange(n, device=X.device), y] = 1.0
    ybar = Y.mean(0)
    evals, V = torch.linalg.eigh(Xc.t() @ Xc / n)
    B = V.t() @ (Xc.t() @ (Y - ybar)) / n  # (D, C) in the eigenbasis
    Ws, bs = [], []
    for lam in np.atleast_1d(np.asarray(lambdas, dtype=np.float64)):
        W = V @ (B / (evals.clamp_min(0) + float(lam))[:, None])
        Ws.append(W)
        bs.append(ybar - mu @ W)
    W, b = torch.stack(Ws), torch.stack(bs)
    if X_eval is None:
        return W, b
    return torch.einsum("nd,gdc->gnc", X_eval.double(), W) + b[:, None, :]

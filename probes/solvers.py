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
    """Curvature pairs of G members: lists of ``s`` and ``y`` tensors ``(D + 1, G, C)`` (the last row
    is the intercept's) and of ``rho`` ``(G,)`` float64 = ``1 / s.y`` (0 marks an empty slot).

    ``y`` is as measured at ``lambdas`` (one per member); :meth:`for_lambdas` re-targets the
    pairs to other lambdas exactly.
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
        for s, y, r in zip(self.s, self.y, self.rho):
            s, y, r = s.index_select(1, idx), y.index_select(1, idx), r.index_select(0, idx)
            pen = _penalty_mask(s)
            y = y + delta.to(y.dtype).view(1, -1, 1) * (s * pen)
            sy = _dot(s, y)
            out.s.append(s.contiguous())
            out.y.append(y.contiguous())
            out.rho.append(torch.where((r > 0) & (sy > 0), 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy)))
        return out


def _penalty_mask(theta):
    """``(D + 1, 1, 1)``: 1 on the weight rows, 0 on the intercept row (not penalised)."""
    pen = theta.new_ones(theta.shape[0], 1, 1)
    pen[-1] = 0
    return pen


def _dot(a, b):
    """Per-member dot products ``(G,)`` in float64 of ``(D + 1, G, C)`` tensors."""
    import torch

    return (a * b).sum(dim=(0, 2), dtype=torch.float64)


def lipschitz_bound(X, sample_weight=None, *, n_power: int = 30, seed: int = 0) -> float:
    """An estimate of the gradient's Lipschitz constant for the data term: ``lambda_max(A^T S A) / (2 sum s)``.

    ``A = [X, 1]`` (the intercept's column), ``S`` the sample weights; softmax cross-entropy has
    Hessian at most ``1/2`` per row in every class direction. Power iteration (float64), inflated
    10% against under-estimation.
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
    """The rows (with a column of ones for the intercept), labels and sample weights every member shares."""

    def __init__(self, X, y, *, n_classes, sample_weight=None):
        import torch

        self.n, self.d = X.shape
        self.X = torch.cat([X, X.new_ones(self.n, 1)], dim=1).contiguous()  # (n, D + 1)
        self.y = y
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

    def logits(self, T, rows=None):
        """``(n, G, C)`` from ``T`` (D + 1, G, C): one GEMM."""
        import torch

        g = T.shape[1]
        X = self.X if rows is None else self.X[rows]
        return torch.mm(X, T.reshape(self.d + 1, g * self.c)).view(X.shape[0], g, self.c)

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
        """The data Hessian's diagonal ``(D + 1, G, C)``: sum_i s_i x_ij^2 p_ic (1 - p_ic) / sum s.

        ``exact`` costs one GEMM (with the squared features); otherwise the product is separated
        into the feature second moments times the per-class mean of p (1 - p), which is free.
        """
        import torch

        g = Pm.shape[1]
        V = Pm * (1 - Pm)
        V.mul_(self.w[:, None, None] if self.w is not None else 1.0 / self.n)
        if exact:
            if self._X2 is None:
                self._X2 = self.X * self.X
            return torch.mm(self._X2.t(), V.view(self.n, g * self.c)).view(self.d + 1, g, self.c)
        if self._m2 is None:
            X2 = self.X * self.X
            self._m2 = X2.mean(0) if self.w is None else (X2 * self.w[:, None]).sum(0)
        return self._m2.view(-1, 1, 1) * V.sum(0).view(1, g, self.c)

    def data_grad(self, Pm, rows=None, scale=None):
        """``(D + 1, G, C)`` gradient of the data term from the softmax ``Pm`` (overwritten)."""
        import torch

        g = Pm.shape[1]
        n = Pm.shape[0]
        y = self.y if rows is None else self.y[rows]
        X = self.X if rows is None else self.X[rows]
        Pm[torch.arange(n, device=Pm.device), :, y] -= 1.0
        if self.w is not None:
            w = self.w if rows is None else self.w[rows] * (self.n / n)
            Pm.mul_(w[:, None, None])
            factor = 1.0
        else:
            factor = 1.0 / n
        return torch.mm(X.t(), Pm.view(n, g * self.c)).mul_(factor).view(self.d + 1, g, self.c)


def _pack(W0, b0, D, G, C, dev, dt):
    import torch

    W = torch.zeros(D, G, C, device=dev, dtype=dt) if W0 is None else W0.to(dev, dt)
    b = torch.zeros(G, C, device=dev, dtype=dt) if b0 is None else b0.to(dev, dt)
    if tuple(W.shape) != (D, G, C) or tuple(b.shape) != (G, C):
        raise ProbeConfigError(f"warm start must be W (D, G, C) = {(D, G, C)} and b (G, C); got {tuple(W.shape)}")
    return torch.cat([W, b[None]], dim=0).contiguous()


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
    precondition: str = "separable",
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
        lipschitz: :func:`lipschitz_bound` of the data (computed when None; only ``"none"``
            preconditioning uses it).
        precondition: the initial inverse Hessian of the two-loop recursion: ``"separable"``
            (default: the Hessian diagonal approximated by feature second moments x per-class
            p(1-p), refreshed every ``refresh`` iterations at no GEMM's cost), ``"diag"`` (the exact
            diagonal, one more GEMM per refresh; no fewer iterations in our measurements) or
            ``"none"`` (a scalar). The unpenalised intercept and rare classes have far smaller curvature
            than the penalised weights; without a diagonal model L-BFGS spends its memory on that.

    Returns a :class:`SolverResult` whose ``memory`` can warm-start a neighbouring lambda.
    """
    import torch

    lam_list = [float(v) for v in np.atleast_1d(np.asarray(lambdas, dtype=np.float64))]
    if not lam_list or min(lam_list) <= 0 or not all(math.isfinite(v) for v in lam_list):
        raise ProbeConfigError(f"every lambda must be a finite number > 0, got {lam_list}")
    if tol <= 0 or max_iter < 1 or history < 1:
        raise ProbeConfigError(f"tol must be > 0, max_iter and history >= 1; got {tol}, {max_iter}, {history}")
    if precondition not in ("diag", "separable", "none"):
        raise ProbeConfigError(f"precondition must be 'diag', 'separable' or 'none', got {precondition!r}")
    P = _Problem(X, y, n_classes=n_classes, sample_weight=sample_weight)
    dev, dt = X.device, X.dtype
    G, D, C = len(lam_list), P.d, P.c
    lam = torch.tensor(lam_list, dtype=torch.float64, device=dev)
    T = _pack(W0, b0, D, G, C, dev, dt)
    pen = _penalty_mask(T)
    mem = LBFGSMemory(lambdas=lam.clone()) if memory is None else memory
    if mem.lambdas.numel() != G or not torch.allclose(mem.lambdas, lam, rtol=1e-12, atol=0):
        raise ProbeConfigError("memory must be re-targeted to these lambdas first (LBFGSMemory.for_lambdas)")
    mem = LBFGSMemory(s=list(mem.s), y=list(mem.y), rho=[r.clone() for r in mem.rho], lambdas=lam.clone())

    out = torch.empty(G, D + 1, C, device=dev, dtype=dt)
    n_iter, gnorm, losses = [0] * G, [float("nan")] * G, [float("nan")] * G
    conv, msg, fails = [False] * G, [""] * G, [0] * G
    final_pairs: dict[int, list] = {}
    active = list(range(G))
    c1 = 1e-4
    eps = float(torch.finfo(dt).eps)
    # The loss is a float64 sum of per-row losses computed in the data's dtype: differences below
    # this level are round-off, so the Armijo test does not reject a good step for them.
    noise_scale = 10 * eps / math.sqrt(P.n)
    col = (lambda v: v.to(dt).view(1, -1, 1))

    def inverse_diagonal(Pm):
        if precondition == "none":
            L = lipschitz_bound(X, P.w) if lipschitz is None else float(lipschitz)
            return (1.0 / (L + lam)).to(dt).view(1, -1, 1).expand(D + 1, -1, C).contiguous()
        h = P.diag_curvature(Pm, exact=precondition == "diag")
        # A floor keeps a class the current point already fits perfectly from an infinite step.
        floor = 1e-3 * float(h[-1].mean()) + 1e-12
        return 1.0 / (h + col(lam) * pen + floor)

    Z = P.logits(T)
    data_f, E, ssum = P.data_loss(Z)
    f = data_f + 0.5 * lam * _dot(T * pen, T)
    Pm = E.div_(ssum[:, :, None])
    M = inverse_diagonal(Pm)
    grad = P.data_grad(Pm).add_(col(lam) * pen * T)
    del E, Pm
    since_refresh = 0

    def finish(positions, reason):
        for p in positions:
            m = active[p]
            out[m] = T[:, p]
            losses[m] = float(f[p])
            msg[m] = reason(p)
            final_pairs[m] = [(s_[:, p], y_[:, p], r_[p]) for s_, y_, r_ in zip(mem.s, mem.y, mem.rho)]

    def keep(positions):
        nonlocal T, Z, f, data_f, grad, lam, active, M
        idx = torch.as_tensor(positions, dtype=torch.long, device=dev)
        T, grad, M, Z = (t.index_select(1, idx) for t in (T, grad, M, Z))
        f, data_f, lam = f[idx], data_f[idx], lam[idx]
        mem.s = [t.index_select(1, idx) for t in mem.s]
        mem.y = [t.index_select(1, idx) for t in mem.y]
        mem.rho = [r[idx] for r in mem.rho]
        active = [active[p] for p in positions]

    while active:
        g_inf = grad.abs().amax(dim=(0, 2)).double().tolist()
        stop = {}
        for p, m in enumerate(active):
            gnorm[m] = g_inf[p]
            if g_inf[p] <= tol:
                conv[m] = True
                stop[p] = f"converged in {n_iter[m]} iterations: max |gradient| {g_inf[p]:.2e} <= tol {tol:g}"
            elif fails[m] >= 2:
                stop[p] = (f"line search made no progress at max |gradient| {g_inf[p]:.2e} > tol {tol:g} "
                           f"(the round-off floor of {str(dt).replace('torch.', '')} on this data; try a larger "
                           "tol or float64)")
            elif n_iter[m] >= max_iter:
                stop[p] = f"max_iter={max_iter} reached with max |gradient| {g_inf[p]:.2e} > tol {tol:g}"
        if stop:
            finish(list(stop), lambda p: stop[p])
            keep([p for p in range(len(active)) if p not in stop])
            if not active:
                break
        g = len(active)
        # Two-loop recursion, every member at once: d = -H_k grad, H_0 = gamma * diag(M).
        q = grad.clone()
        alphas = []
        for s_, y_, r_ in zip(reversed(mem.s), reversed(mem.y), reversed(mem.rho)):
            a = r_ * _dot(s_, q)
            alphas.append(a)
            q.sub_(col(a) * y_)
        gamma = torch.ones(g, dtype=torch.float64, device=dev)
        if mem.s:  # gamma = s.y / (y M y) of the newest pair (1 without one)
            y_, r_ = mem.y[-1], mem.rho[-1]
            yMy = _dot(y_ * M, y_)
            gamma = torch.where((r_ > 0) & (yMy > 0), 1.0 / (r_.clamp_min(1e-300) * yMy.clamp_min(1e-300)), gamma)
        q.mul_(col(gamma) * M)
        for (s_, y_, r_), a in zip(zip(mem.s, mem.y, mem.rho), reversed(alphas)):
            q.add_(col(a - r_ * _dot(y_, q)) * s_)
        d = q.neg_()
        gd = _dot(grad, d)
        if not bool((gd < 0).all()):  # round-off made the direction useless: the preconditioned gradient
            d = torch.where(col(gd >= 0) > 0, -M * grad, d)
            gd = _dot(grad, d)
        XD = P.logits(d)  # the one forward GEMM of the iteration: every trial is Z + alpha XD
        pT = T * pen
        TT, Td, dd = _dot(pT, T), _dot(pT, d), _dot(d * pen, d)
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
            ft = dft + 0.5 * lam[todo] * (TT[todo] + 2 * a * Td[todo] + a * a * dd[todo])
            ok = ft <= f[todo] + c1 * a * gd[todo] + noise[todo]
            if trial == 0 and bool(ok.all()):  # the usual case: every member takes its first step
                Z_new, E_new, s_new, f_new = Zt, Et, st, ft
                accepted[:] = True
                break
            if Z_new is None:
                Z_new = Z.clone()
                E_new = torch.exp(Z - Z.amax(dim=2, keepdim=True))
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
        step = col(alpha) * d
        T = T + step
        Z, f = Z_new, f_new
        del XD, d
        data_f = f - 0.5 * lam * _dot(T * pen, T)
        Pm = E_new.div_(s_new[:, :, None])
        del E_new, s_new
        since_refresh += 1
        if since_refresh >= refresh and precondition != "none":
            M = inverse_diagonal(Pm)
            since_refresh = 0
        grad_new = P.data_grad(Pm).add_(col(lam) * pen * T)  # the one backward GEMM of the iteration
        del Pm
        y_new = grad_new - grad
        grad = grad_new
        sy, ss, yy = _dot(step, y_new), _dot(step, step), _dot(y_new, y_new)
        rho_new = torch.where(sy > 1e-10 * torch.sqrt(ss * yy), 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        mem.s.append(step)
        mem.y.append(y_new)
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
                # member's pairs so the next direction is the preconditioned gradient; two failures
                # in a row end it.
                fails[m] += 1
                for r_ in mem.rho:
                    r_[p] = 0.0

    # The memory that warm-starts the next lambda: every member's final pairs, aligned by slot.
    final_mem = LBFGSMemory(lambdas=torch.tensor(lam_list, dtype=torch.float64, device=dev))
    k = max((len(v) for v in final_pairs.values()), default=0)
    zero = torch.zeros(D + 1, C, device=dev, dtype=dt)
    zero_r = torch.zeros((), dtype=torch.float64, device=dev)
    for slot in range(k):
        cols = []
        for m in range(G):
            j = slot - (k - len(final_pairs[m]))
            cols.append(final_pairs[m][j] if j >= 0 else (zero, zero, zero_r))
        final_mem.s.append(torch.stack([c[0] for c in cols], 1))
        final_mem.y.append(torch.stack([c[1] for c in cols], 1))
        final_mem.rho.append(torch.stack([c[2] for c in cols]))
    return SolverResult(W=out[:, :D].contiguous(), b=out[:, D].contiguous(), n_iter=n_iter, grad_norm=gnorm,
                        loss=losses, converged=conv, message=msg, memory=final_mem)


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
    P = _Problem(X, y, n_classes=n_classes, sample_weight=sample_weight)
    dev, dt = X.device, X.dtype
    G, D, C, n = len(lam_list), P.d, P.c, P.n
    lam = torch.tensor(lam_list, dtype=dt, device=dev).view(1, G, 1)
    T = _pack(W0, b0, D, G, C, dev, dt)
    pen = _penalty_mask(T)
    m1, m2 = torch.zeros_like(T), torch.zeros_like(T)
    b1, b2, eps = 0.9, 0.999, 1e-8
    gen = torch.Generator().manual_seed(int(seed))
    step = 0
    done = torch.zeros(G, dtype=torch.bool, device=dev)
    n_iter, gnorm, losses, conv, msg = [0] * G, [float("nan")] * G, [float("nan")] * G, [False] * G, [""] * G
    for epoch in range(1, max_epochs + 1):
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            grad = P.data_grad(torch.softmax(P.logits(T, idx), dim=2), rows=idx).add_(lam * pen * T)
            step += 1
            c1, c2 = 1 - b1 ** step, 1 - b2 ** step
            m1.lerp_(grad, 1 - b1)
            m2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            live = (~done).to(dt).view(1, G, 1)
            T -= lr * live * (m1 / c1) / ((m2 / c2).sqrt() + eps)
        Z = P.logits(T)
        data_f, E, ssum = P.data_loss(Z)
        full = P.data_grad(E.div_(ssum[:, :, None])).add_(lam * pen * T)
        g_inf = full.abs().amax(dim=(0, 2)).double().tolist()
        f = data_f + 0.5 * lam.view(-1).double() * _dot(T * pen, T)
        for m in range(G):
            if done[m]:
                continue
            n_iter[m], gnorm[m], losses[m] = epoch, g_inf[m], float(f[m])
            if gnorm[m] <= tol:
                done[m], conv[m] = True, True
                msg[m] = f"converged after {epoch} epochs: max |gradient| {gnorm[m]:.2e} <= tol {tol:g}"
        if bool(done.all()):
            break
    for m in range(G):
        if not conv[m]:
            msg[m] = f"max_epochs={max_epochs} reached with max |gradient| {gnorm[m]:.2e} > tol {tol:g}"
    out = T.permute(1, 0, 2)
    return SolverResult(W=out[:, :D].contiguous(), b=out[:, D].contiguous(), n_iter=n_iter, grad_norm=gnorm,
                        loss=losses, converged=conv, message=msg)


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

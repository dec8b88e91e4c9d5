"""Confidence intervals, p-values, multiplicity control, permutation nulls and paired comparisons.

Images of one person are not independent: with an identity-disjoint split a Wilson interval
over images is too narrow. When identities (``groups``) are known every interval here is a
**cluster bootstrap**: whole identities are resampled with replacement, and each replicate's
metrics are recomputed from the images of the drawn identities. Without identities the
bootstrap resamples images (and top-1 also gets a Wilson interval); such intervals are marked
unreliable, since they are too narrow when errors cluster by person.

Balanced accuracy is resampled as what it is on the full test set: a weighted mean of per-image
correctness, each image weighing 1 / (K n_c) (K names in the test set, n_c test images of its
name). A resample that draws no identity of some name then simply carries less of that name's
weight, the same functional in every replicate; averaging recall over "the names present in
the resample" instead silently changes what is averaged (on a tiny test set most resamples miss
a name), which put point estimates at the bottom of their intervals. A test set where some name
has fewer than :data:`MIN_IDENTITIES_PER_NAME` identities gives an interval that rests on too
few people per name: it is flagged ``reliable: false``.

Intervals are **BCa** (bias-corrected and accelerated; Efron 1987, Efron & Tibshirani 1993
ch. 14): the percentile levels are shifted by the bias ``z0`` (share of replicates below the
point estimate, ties counted half) and the acceleration ``a`` (skewness of the leave-one-
identity-out jackknife). The one-sided p-value against a fixed
baseline inverts the same BCa mapping, so a 95% CI that excludes the baseline and a one-sided
p below 0.025 are the same statement (exactly, for ``n_boot >= 41``; p never goes below
``1 / n_boot``).

Replicates are computed as weighted sums: a replicate is a vector of per-identity draw counts,
and every metric (accuracy, balanced accuracy, macro F1, top-5, prediction CV) is a ratio of
weighted class counts, so one sparse matrix product evaluates a block of replicates at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "CORRECTIONS",
    "MIN_BOOT",
    "MIN_IDENTITIES_PER_NAME",
    "adjust_p_values",
    "bca_interval",
    "bca_p_value",
    "benjamini_hochberg",
    "bootstrap_metrics",
    "combine_paired",
    "group_codes",
    "holm",
    "paired_bootstrap",
    "permutation_p_value",
    "run_permutation_null",
    "shuffle_names_across_identities",
    "wilson_interval",
]

_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "prediction_cv", "top5_accuracy", "cv_excess")
# Below this many test identities for some name, that name's share of the estimate rests on a
# handful of people and the bootstrap interval understates the uncertainty.
MIN_IDENTITIES_PER_NAME = 5
# Below this many replicates p cannot reach 0.025 (its floor is 1 / n_boot), so CI and p
# could disagree.
MIN_BOOT = 41
CORRECTIONS = ("holm", "bh")


def group_codes(groups, n: int) -> np.ndarray:
    """Integer codes 0..G-1 of ``groups`` (identities); each row its own group when None."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
    return np.unique(groups, return_inverse=True)[1].astype(np.int64)


def wilson_interval(successes: int, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (valid only for independent rows)."""
    from scipy.stats import norm

    if n == 0:
        return (0.0, 1.0)
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# --------------------------------------------------------------------------- resampling


def _replicate_weights(codes: np.ndarray, n_boot: int, rng: np.random.Generator, block: int):
    """Yield (b, n) per-row weights: per-group draw counts of a cluster bootstrap, in blocks."""
    n_groups = int(codes.max()) + 1
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        counts = np.zeros((b, n_groups), dtype=np.float64)
        np.add.at(counts, (np.arange(b)[:, None], draws), 1.0)
        yield counts[:, codes]
        done += b


def _onehot(labels: np.ndarray, n_classes: int, values=None):
    from scipy.sparse import csr_matrix

    n = labels.size
    data = np.ones(n) if values is None else np.asarray(values, dtype=np.float64)
    return csr_matrix((data, (np.arange(n), labels)), shape=(n, n_classes))


def _from_counts(support, tp, predicted, total, correct, top5, ba_num, ba_den) -> dict[str, np.ndarray]:
    """Metrics from (b, C) weighted class counts and (b,) totals (one row per replicate)."""
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.where(present, support, 1), 0.0)
        f1 = np.where(present, 2 * tp / np.where(present, support + predicted, 1), 0.0)
        n_present = present.sum(axis=1)
        pred_cv = predicted.std(axis=1) / predicted.mean(axis=1)
        label_cv = support.std(axis=1) / support.mean(axis=1)
        out = {
            "accuracy": correct / total,
            "balanced_accuracy": ba_num / ba_den,
            "recall_mean_present": recall.sum(axis=1) / n_present,
            "macro_f1": f1.sum(axis=1) / n_present,
            "prediction_cv": pred_cv,
            "label_cv": label_cv,
            "cv_excess": pred_cv - label_cv,
            "balanced_constant": 1.0 / n_present,
        }
        if top5 is not None:
            out["top5_accuracy"] = top5 / total
    return out


class _Counts:
    """Sparse per-row indicators, so that weighted class counts are one product per replicate block."""

    def __init__(self, y_true, y_pred, n_classes, top5_hit):
        correct = (y_true == y_pred).astype(np.float64)
        self.support = _onehot(y_true, n_classes)
        self.tp = _onehot(y_true, n_classes, correct)
        self.predicted = _onehot(y_pred, n_classes)
        self.correct = correct
        self.top5_hit = top5_hit
        # Balanced accuracy's fixed design weights: 1 / (K n_c) per image of name c.
        n_c = np.bincount(y_true, minlength=n_classes).astype(np.float64)
        self.ba_weight = 1.0 / (np.count_nonzero(n_c) * n_c[y_true])
        self.ba_hit = self.ba_weight * correct

    def metrics(self, w: np.ndarray) -> dict[str, np.ndarray]:
        top5 = None if self.top5_hit is None else w @ self.top5_hit
        return _from_counts((self.support.T @ w.T).T, (self.tp.T @ w.T).T, (self.predicted.T @ w.T).T,
                            w.sum(axis=1), w @ self.correct, top5, w @ self.ba_hit, w @ self.ba_weight)

    def jackknife(self, codes: np.ndarray, keep_groups: np.ndarray, block: int = 1024) -> dict[str, np.ndarray]:
        """Metrics with each group of ``keep_groups`` left out in turn (totals minus that group's counts)."""
        from scipy.sparse import csr_matrix

        n_groups = int(codes.max()) + 1
        G = csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size))
        per = {k: (G @ getattr(self, k)).tocsr() for k in ("support", "tp", "predicted")}
        tot = {k: np.asarray(v.sum(axis=0)).ravel() for k, v in per.items()}
        n_g = np.asarray(G.sum(axis=1)).ravel()
        c_g = G @ self.correct
        t_g = None if self.top5_hit is None else G @ self.top5_hit
        bh_g, bw_g = G @ self.ba_hit, G @ self.ba_weight
        out: dict[str, list[np.ndarray]] = {}
        for s in range(0, keep_groups.size, block):
            gs = keep_groups[s:s + block]
            parts = {k: tot[k][None, :] - per[k][gs].toarray() for k in per}
            top5 = None if t_g is None else t_g.sum() - t_g[gs]
            m = _from_counts(parts["support"], parts["tp"], parts["predicted"], n_g.sum() - n_g[gs],
                             c_g.sum() - c_g[gs], top5, bh_g.sum() - bh_g[gs], bw_g.sum() - bw_g[gs])
            for k, v in m.items():
                out.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in out.items()}


# --------------------------------------------------------------------------- BCa


def _norm_ppf(q):
    from scipy.stats import norm

    return norm.ppf(q)


def _norm_cdf(z):
    from scipy.stats import norm

    return norm.cdf(z)


def _bca_params(theta_hat: float, boot: np.ndarray, jack: np.ndarray | None) -> tuple[float, float]:
    """Bias correction ``z0`` and acceleration ``a`` of a BCa interval."""
    B = boot.size
    share = (np.sum(boot < theta_hat) + 0.5 * np.sum(boot == theta_hat)) / B
    z0 = float(_norm_ppf(np.clip(share, 0.5 / B, 1 - 0.5 / B)))
    a = 0.0
    if jack is not None and jack.size > 1:
        d = jack.mean() - jack
        ss = float(np.sum(d * d))
        if ss > 0:
            a = float(np.sum(d**3) / (6.0 * ss**1.5))
    return z0, a


def _bca_level(alpha: float, z0: float, a: float) -> float:
    """The percentile level BCa uses for the nominal level ``alpha`` (NaN outside BCa's valid
    range, |a| too large for this level: the caller uses the extreme replicate and flags it)."""
    u = z0 + float(_norm_ppf(alpha))
    denom = 1.0 - a * u
    if denom <= 0:
        return float("nan")
    return float(_norm_cdf(z0 + u / denom))


def _lower_quantile(sorted_boot: np.ndarray, level: float) -> float:
    """Inverted-CDF quantile: the smallest replicate x with #{<= x} / B >= level."""
    B = sorted_boot.size
    k = min(max(int(math.ceil(level * B - 1e-12)), 1), B)
    return float(sorted_boot[k - 1])


def _upper_quantile(sorted_boot: np.ndarray, level: float) -> float:
    """The mirror rule: the largest replicate x with #{>= x} / B >= 1 - level."""
    B = sorted_boot.size
    k = min(max(int(math.ceil((1 - level) * B - 1e-12)), 1), B)
    return float(sorted_boot[B - k])


def bca_interval(theta_hat: float, boot, jack=None, *, alpha: float = 0.05) -> dict:
    """Two-sided BCa interval of ``theta_hat`` from bootstrap replicates ``boot`` and jackknife
    values ``jack`` (None: no acceleration, i.e. the bias-corrected percentile interval).

    Returns ``{"ci": [lo, hi], "z0", "a", "levels": [l1, l2]}``.
    """
    boot = np.sort(np.asarray(boot, dtype=np.float64))
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return {"ci": [float("nan"), float("nan")], "z0": float("nan"), "a": float("nan"), "levels": [None, None]}
    z0, a = _bca_params(theta_hat, boot, None if jack is None else np.asarray(jack, dtype=np.float64))
    l1, l2 = _bca_level(alpha / 2, z0, a), _bca_level(1 - alpha / 2, z0, a)
    valid = bool(np.isfinite(l1) and np.isfinite(l2))
    lo = _lower_quantile(boot, l1) if np.isfinite(l1) else float(boot[0])
    hi = _upper_quantile(boot, l2) if np.isfinite(l2) else float(boot[-1])
    return {"ci": [lo, hi], "z0": z0, "a": a, "levels": [l1 if valid else None, l2 if valid else None],
            "valid": valid}


def bca_p_value(boot, baseline: float, *, z0: float, a: float) -> float:
    """One-sided p-value that the statistic exceeds ``baseline``, inverting the BCa mapping.

    With ``q`` the share of replicates at or below the baseline, p is the nominal level whose
    BCa lower bound sits at ``q``: so the BCa lower bound at level alpha exceeds the baseline
    exactly when p < alpha. Floored at ``1 / B`` (the bootstrap's resolution).
    """
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    B = boot.size
    q = float(np.sum(boot <= baseline)) / B
    if q <= 0.0:
        u = (1.0 / a) if a < 0 else -math.inf
    elif q >= 1.0:
        return 1.0
    else:
        w = float(_norm_ppf(q)) - z0
        denom = 1.0 + a * w
        if denom <= 0:
            return 1.0 / B if a > 0 else 1.0
        u = w / denom
    p = float(_norm_cdf(u - z0)) if np.isfinite(u) else 0.0
    return float(min(1.0, max(p, 1.0 / B)))


# --------------------------------------------------------------------------- multiplicity


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error; Holm 1979)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (false discovery rate; BH 1995)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """``holm`` (family-wise error rate) or ``bh`` (Benjamini-Hochberg false discovery rate)."""
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")


# --------------------------------------------------------------------------- per-experiment


def _identities_per_name(codes: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Test identities of each name present in the test set (an identity counts for every name it has)."""
    n_names = int(y_true.max()) + 1
    pairs = np.unique(codes * n_names + y_true)
    return np.bincount(pairs % n_names, minlength=n_names)[np.unique(y_true)]


def bootstrap_metrics(
    y_true,
    y_pred,
    *,
    n_classes: int,
    groups=None,
    top5=None,
    train_labels=None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    block: int = 64,
    return_replicates: bool = False,
) -> dict:
    """BCa confidence intervals and one-sided p-values of the headline metrics.

    Cluster bootstrap with BCa intervals (see the module docstring). Returns ``{"method",
    "interval", "n_boot", "n_clusters", "alpha", "ci": {metric: [lo, hi]},
    "p_value": {...}, "baseline": {...}, "bca": {metric: {"z0", "a"}}, "ci_flags": {metric:
    reason} (the bias check: intervals that do not cover their estimate), "reliable",
    "reliability": [reasons], "identities_per_name": {"min", "median", "n_below"}}``.

    The p-values are one-sided tests that the probe beats a FIXED no-information baseline,
    recorded in ``baseline``: balanced accuracy against max(1/C, 1/names in the test set) and
    top-1 against max(1/C, majority, prior-matched), with the majority name and the prior taken
    from ``train_labels`` and the test frequencies. A probe that always answers one name sits
    at its baseline, so its p-value is large. Each p-value inverts its metric's BCa interval, so
    ``ci[metric][0] > baseline[metric]`` exactly when ``p_value[metric] < alpha / 2``.
    ``cv_excess`` is prediction CV minus the CV of the true test labels (> 0: predictions more
    concentrated on few names than the names themselves are). ``return_replicates`` adds
    ``"replicates": {metric: (n_boot,) array}``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    codes = group_codes(groups, y_true.size)
    top5_hit = None
    if top5 is not None:
        top5_hit = (np.asarray(top5) == y_true[:, None]).any(axis=1).astype(np.float64)
    counts = _Counts(y_true, y_pred, n_classes, top5_hit)
    point = {k: float(v[0]) for k, v in counts.metrics(np.ones((1, y_true.size))).items()}
    rng = np.random.default_rng(seed)
    reps: dict[str, list[np.ndarray]] = {}
    for w in _replicate_weights(codes, n_boot, rng, block):
        for k, v in counts.metrics(w).items():
            reps.setdefault(k, []).append(v)
    arrays = {k: np.concatenate(v) for k, v in reps.items()}
    n_groups = int(codes.max()) + 1
    jack = counts.jackknife(codes, np.arange(n_groups)) if n_groups > 2 else None

    baseline = {"balanced_accuracy": max(1.0 / n_classes, point["balanced_constant"])}
    if train_labels is not None:
        tl = np.asarray(train_labels, dtype=np.int64)
        p_train = np.bincount(tl, minlength=n_classes) / max(tl.size, 1)
        p_test = np.bincount(y_true, minlength=n_classes) / y_true.size
        baseline["accuracy"] = float(max(1.0 / n_classes, p_test[int(np.argmax(p_train))], p_test @ p_train))
    ci, bca, p_value, ci_flags = {}, {}, {}, {}
    invalid = []
    for k in _METRICS:
        if k not in arrays:
            continue
        res = bca_interval(point[k], arrays[k], None if jack is None else jack[k], alpha=alpha)
        ci[k] = res["ci"]
        bca[k] = {"z0": res["z0"], "a": res["a"]}
        if not res["valid"] and k in ("balanced_accuracy", "accuracy"):
            invalid.append(k)
        # Bias check: when (nearly) every replicate lies on one side of the estimate, as a
        # dispersion statistic such as the prediction CV does under resampling on a small test
        # set, no bootstrap interval (BCa included) is credible: flag it instead of trusting it.
        below = float(np.mean(arrays[k] < point[k]) + 0.5 * np.mean(arrays[k] == point[k]))
        if min(below, 1 - below) < 0.5 / n_boot or not (ci[k][0] <= point[k] <= ci[k][1]):
            ci_flags[k] = (f"the bootstrap replicates of {k} lie on one side of the estimate ({below:.1%} below "
                           "it): biased under resampling, interval not credible")
        if k in baseline:
            p_value[k] = bca_p_value(arrays[k], baseline[k], z0=res["z0"], a=res["a"])
    ids = _identities_per_name(codes, y_true)
    reasons = []
    if groups is None:
        reasons.append("no identities: images are resampled independently, so the interval is too narrow "
                       "when errors cluster by person")
    n_below = int(np.sum(ids < MIN_IDENTITIES_PER_NAME))
    if groups is not None and n_below:
        reasons.append(f"{n_below} of {ids.size} names have fewer than {MIN_IDENTITIES_PER_NAME} test identities "
                       f"(fewest: {int(ids.min())}); their recall barely varies under resampling, so the CI is "
                       "unreliable")
    for k in ("balanced_accuracy", "accuracy"):
        if k in ci_flags:
            reasons.append(ci_flags[k])
    if invalid:
        reasons.append(f"the BCa acceleration is too large for a 95% interval of {', '.join(invalid)} (too few "
                       "identities); the interval falls back to the extreme replicate")
    if n_boot < MIN_BOOT:
        reasons.append(f"n_boot={n_boot} < {MIN_BOOT}: p cannot go below 1/n_boot, so CI and p may disagree")
    out = {
        "method": "cluster bootstrap over identities" if groups is not None else "image bootstrap",
        "interval": "BCa",
        "balanced_accuracy_resampling": "fixed weights 1/(K n_c) per image (names missing from a resample "
                                        "carry no weight; never re-averaged over the names drawn)",
        "n_boot": int(n_boot),
        "n_clusters": int(codes.max()) + 1,
        "alpha": alpha,
        "ci": ci,
        "p_value": p_value,
        "baseline": baseline,
        "bca": bca,
        "ci_flags": ci_flags,
        "reliable": not reasons,
        "reliability": reasons,
        "identities_per_name": {"min": int(ids.min()), "median": float(np.median(ids)), "n_below": n_below,
                                "threshold": MIN_IDENTITIES_PER_NAME},
    }
    if groups is None:
        k = int((y_true == y_pred).sum())
        out["ci"]["accuracy_wilson"] = list(wilson_interval(k, y_true.size, alpha=alpha))
    if return_replicates:
        out["replicates"] = {k: arrays[k] for k in _METRICS if k in arrays}
    return out


# --------------------------------------------------------------------------- paired


def _two_sided(d: np.ndarray, alpha: float) -> tuple[list[float], float]:
    """Percentile CI of the replicates ``d`` and the two-sided p-value of 0 from the same
    replicates: the CI excludes 0 exactly when p < alpha (p floored at 2 / B)."""
    d = np.sort(d)
    B = d.size
    lo, hi = _lower_quantile(d, alpha / 2), _upper_quantile(d, 1 - alpha / 2)
    tail = min(np.sum(d <= 0), np.sum(d >= 0)) / B
    p = float(min(1.0, max(2 * tail, 2.0 / B)))
    return [lo, hi], p


def paired_bootstrap(
    y_true,
    pred_a,
    pred_b,
    *,
    n_classes: int,
    groups=None,
    metric: str = "balanced_accuracy",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    return_replicates: bool = False,
) -> dict:
    """Compare two experiments on the SAME test images (rows aligned by the caller).

    Each replicate resamples identities (as :func:`bootstrap_metrics`, balanced accuracy with
    its fixed per-image weights) once and scores both experiments on that same resample, so the variance shared by the test
    set cancels. Returns the observed difference ``a - b``, its percentile CI and the two-sided
    p-value read from the same replicates (CI excludes 0 <=> p < alpha); with
    ``return_replicates`` also the replicate differences (``"replicates"``), which
    :func:`combine_paired` averages over seeds.
    """
    if metric not in ("balanced_accuracy", "accuracy", "macro_f1"):
        raise ValueError(f"metric must be balanced_accuracy, accuracy or macro_f1, got {metric!r}")
    y_true = np.asarray(y_true, dtype=np.int64)
    pred_a = np.asarray(pred_a, dtype=np.int64)
    pred_b = np.asarray(pred_b, dtype=np.int64)
    if not (y_true.shape == pred_a.shape == pred_b.shape):
        raise ValueError("y_true, pred_a and pred_b must be aligned on the same test images")
    codes = group_codes(groups, y_true.size)
    ca = _Counts(y_true, pred_a, n_classes, None)
    cb = _Counts(y_true, pred_b, n_classes, None)
    ones = np.ones((1, y_true.size))
    obs = float(ca.metrics(ones)[metric][0] - cb.metrics(ones)[metric][0])
    rng = np.random.default_rng(seed)
    d = np.concatenate([ca.metrics(w)[metric] - cb.metrics(w)[metric]
                        for w in _replicate_weights(codes, n_boot, rng, 64)])
    ci, p = _two_sided(d, alpha)
    out = {
        "metric": metric,
        "difference": obs,
        "ci": ci,
        "p_value": p,
        "n_boot": int(n_boot),
        "interval": "percentile",
        "method": "paired cluster bootstrap" if groups is not None else "paired image bootstrap",
    }
    if return_replicates:
        out["replicates"] = d
    return out


def combine_paired(results: Sequence[dict], *, alpha: float = 0.05) -> dict:
    """The mean over seeds of per-seed paired differences (results of :func:`paired_bootstrap`
    with ``return_replicates``, same ``n_boot``), with the CI and two-sided p of the mean of
    the per-seed replicates (each seed's test identities resampled independently)."""
    if not results:
        raise ValueError("combine_paired needs at least one paired result")
    reps = np.vstack([np.asarray(r["replicates"], dtype=np.float64) for r in results])
    d = reps.mean(axis=0)
    ci, p = _two_sided(d, alpha)
    return {
        "metric": results[0]["metric"],
        "difference": float(np.mean([r["difference"] for r in results])),
        "ci": ci,
        "p_value": p,
        "n_boot": int(d.size),
        "n_seeds": len(results),
        "per_seed": [r["difference"] for r in results],
        "interval": "percentile",
        "method": results[0]["method"] + (f", mean over {len(results)} seeds" if len(results) > 1 else ""),
    }


def shuffle_names_across_identities(labels, groups, *, seed: int) -> np.ndarray:
    """Permute names across identities, not images: every person keeps all their images and
    gets another person's name, so the number of people (and of images) per name is kept
    (exactly for people; approximately for images when people have different image counts).

    Without identities (``groups`` None) each image is its own person.
    """
    labels = np.asarray(labels)
    codes = group_codes(groups, labels.size)
    n_groups = int(codes.max()) + 1
    # One name per person: the first image's name (identities carry one name each).
    first = np.full(n_groups, -1, dtype=np.int64)
    order = np.arange(labels.size)[::-1]
    first[codes[order]] = order
    person_name = labels[first]
    rng = np.random.default_rng(seed)
    return person_name[rng.permutation(n_groups)][codes]


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value (1 + #null >= observed) / (1 + N)."""
    null = np.asarray(null, dtype=float)
    return float((1 + np.sum(null >= observed)) / (1 + null.size))


def run_permutation_null(
    fit_and_score: Callable[[np.ndarray, int], float], labels, groups, *, n: int, seed: int = 0
) -> np.ndarray:
    """Repeat a whole fit ``n`` times with names shuffled across identities.

    ``fit_and_score(shuffled_labels, i)`` retrains everything (selection included) on the
    shuffled training labels and returns the test metric on the TRUE test labels.
    """
    return np.array(
        [
            fit_and_score(shuffle_names_across_identities(labels, groups, seed=seed + i), i)
            for i in range(n)
        ]
    )

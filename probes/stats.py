"""Confidence intervals, p-values, permutation nulls and paired comparisons.

Images of one person are not independent: with an identity-disjoint split a Wilson interval
over images is too narrow. When identities (``groups``) are known every interval here is a
cluster bootstrap: whole identities are resampled with replacement, and each replicate's
metrics are recomputed from the images of the drawn identities. Without identities the
bootstrap resamples images (and top-1 also gets a Wilson interval).

Replicates are computed as weighted sums: a replicate is a vector of per-identity draw counts,
and every metric (accuracy, balanced accuracy, macro F1, top-5, prediction CV) is a ratio of
weighted class counts, so one sparse matrix product evaluates a block of replicates at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "bootstrap_metrics",
    "group_codes",
    "paired_bootstrap",
    "permutation_p_value",
    "run_permutation_null",
    "shuffle_names_across_identities",
    "wilson_interval",
]

_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "prediction_cv", "top5_accuracy")


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


def _weighted_metrics(w, y_true, y_pred, n_classes, top5_hit) -> dict[str, np.ndarray]:
    """Metrics of each replicate (rows of w) from weighted class counts."""
    correct = (y_true == y_pred).astype(np.float64)
    support = (_onehot(y_true, n_classes).T @ w.T).T  # (b, C)
    tp = (_onehot(y_true, n_classes, correct).T @ w.T).T
    predicted = (_onehot(y_pred, n_classes).T @ w.T).T
    total = w.sum(axis=1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.where(present, support, 1), 0.0)
        f1 = np.where(present, 2 * tp / np.where(present, support + predicted, 1), 0.0)
    n_present = present.sum(axis=1)
    out = {
        "accuracy": (w @ correct) / total,
        "balanced_accuracy": recall.sum(axis=1) / n_present,
        "macro_f1": f1.sum(axis=1) / n_present,
        "prediction_cv": predicted.std(axis=1) / predicted.mean(axis=1),
        "balanced_constant": 1.0 / n_present,
    }
    if top5_hit is not None:
        out["top5_accuracy"] = (w @ top5_hit) / total
    return out


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
) -> dict:
    """Percentile confidence intervals and one-sided p-values of the headline metrics.

    Returns ``{"method", "n_boot", "n_clusters", "alpha", "ci": {metric: [lo, hi]},
    "p_value": {...}}``. The p-values are one-sided bootstrap tests that the probe beats the
    best no-information baseline, recomputed inside each replicate: balanced accuracy against
    max(1/C, 1/names-present) and top-1 against max(1/C, majority, prior-matched), where the
    majority name and the prior come from ``train_labels``. A probe that always answers one
    name ties its baseline in every replicate and gets p = 1.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    codes = group_codes(groups, y_true.size)
    top5_hit = None
    if top5 is not None:
        top5_hit = (np.asarray(top5) == y_true[:, None]).any(axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    reps: dict[str, list[np.ndarray]] = {}
    top1_base: list[np.ndarray] = []
    p_train = None
    if train_labels is not None:
        tl = np.asarray(train_labels, dtype=np.int64)
        p_train = np.bincount(tl, minlength=n_classes) / max(tl.size, 1)
    for w in _replicate_weights(codes, n_boot, rng, block):
        m = _weighted_metrics(w, y_true, y_pred, n_classes, top5_hit)
        for k, v in m.items():
            reps.setdefault(k, []).append(v)
        if p_train is not None:
            p_test = (_onehot(y_true, n_classes).T @ w.T).T / w.sum(axis=1, keepdims=True)
            majority = p_test[:, int(np.argmax(p_train))]
            prior = p_test @ p_train
            top1_base.append(np.maximum(np.maximum(majority, prior), 1.0 / n_classes))
    arrays = {k: np.concatenate(v) for k, v in reps.items()}
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    ci = {
        k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
        for k, v in arrays.items()
        if k in _METRICS
    }
    balanced_base = np.maximum(arrays["balanced_constant"], 1.0 / n_classes)
    diff_bal = arrays["balanced_accuracy"] - balanced_base
    p_value = {"balanced_accuracy": float((1 + np.sum(diff_bal <= 0)) / (n_boot + 1))}
    if top1_base:
        diff_top1 = arrays["accuracy"] - np.concatenate(top1_base)
        p_value["accuracy"] = float((1 + np.sum(diff_top1 <= 0)) / (n_boot + 1))
    out = {
        "method": "cluster bootstrap over identities" if groups is not None else "image bootstrap",
        "n_boot": int(n_boot),
        "n_clusters": int(codes.max()) + 1,
        "alpha": alpha,
        "ci": ci,
        "p_value": p_value,
    }
    if groups is None:
        k = int((y_true == y_pred).sum())
        out["ci"]["accuracy_wilson"] = list(wilson_interval(k, y_true.size, alpha=alpha))
    return out


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
) -> dict:
    """Compare two experiments on the SAME test images (rows aligned by the caller).

    Each replicate resamples identities (or images) once and scores both experiments on that
    same resample, so the variance shared by the test set cancels. Returns the observed
    difference ``a - b``, its percentile CI and a two-sided bootstrap p-value.
    """
    if metric not in ("balanced_accuracy", "accuracy", "macro_f1"):
        raise ValueError(f"metric must be balanced_accuracy, accuracy or macro_f1, got {metric!r}")
    y_true = np.asarray(y_true, dtype=np.int64)
    pred_a = np.asarray(pred_a, dtype=np.int64)
    pred_b = np.asarray(pred_b, dtype=np.int64)
    if not (y_true.shape == pred_a.shape == pred_b.shape):
        raise ValueError("y_true, pred_a and pred_b must be aligned on the same test images")
    codes = group_codes(groups, y_true.size)
    ones = np.ones((1, y_true.size))
    obs = (
        _weighted_metrics(ones, y_true, pred_a, n_classes, None)[metric][0]
        - _weighted_metrics(ones, y_true, pred_b, n_classes, None)[metric][0]
    )
    rng = np.random.default_rng(seed)
    diffs = []
    for w in _replicate_weights(codes, n_boot, rng, 64):
        diffs.append(
            _weighted_metrics(w, y_true, pred_a, n_classes, None)[metric]
            - _weighted_metrics(w, y_true, pred_b, n_classes, None)[metric]
        )
    d = np.concatenate(diffs)
    p = min(1.0, 2 * min((1 + np.sum(d <= 0)) / (n_boot + 1), (1 + np.sum(d >= 0)) / (n_boot + 1)))
    return {
        "metric": metric,
        "difference": float(obs),
        "ci": [float(np.percentile(d, 100 * alpha / 2)), float(np.percentile(d, 100 * (1 - alpha / 2)))],
        "p_value": float(p),
        "n_boot": int(n_boot),
        "method": "paired cluster bootstrap" if groups is not None else "paired image bootstrap",
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

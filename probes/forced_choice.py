"""Forced-choice tests (Zwebner et al. 2017, "We look like our names", JPSP) from any probe's probabilities.

For each test image the true name is shown among ``n_way - 1`` foil names and the probe "picks"
the candidate with the highest score; chance is ``1 / n_way``. Their machine result: 54-64% in
2-way choice.

Name frequency alone wins forced choices: on real faces (LFW, 30 names) the raw 2-way score was
0.636 while a face-blind rule knowing only name frequencies scored 0.631 under the same foils.
So every result reports three scores under **the same foils**, side by side:

- ``raw``: pick the largest ``p(name | face)``;
- ``prior_corrected``: pick the largest ``p(name | face) / p_train(name)`` (the face evidence);
- ``prior_only``: pick the largest ``p_train(name)`` (face-blind).

Foils are ``"uniform"`` (any other name) or ``"popularity"``-matched (drawn from the
``popularity_pool`` names closest in training frequency). Ties split the credit
(``1 / number tied at the top``), so a constant scorer sits exactly at chance. Each score has
a 95% CI by a cluster bootstrap over identities when ``groups`` are given (images of one person
are not independent), over images otherwise. ``null_repeats > 0`` adds the shuffled-name null:
names permuted across identities, foils redrawn, the prior-corrected score recomputed.
Foil sampling is seeded and the seed recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from probes.errors import ProbeConfigError

FOIL_KINDS = ("uniform", "popularity")


@dataclass(frozen=True)
class Score:
    """One forced-choice accuracy with its 95% CI."""

    accuracy: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ForcedChoiceResult:
    """Raw, prior-corrected and prior-only scores of one protocol (n_way x foil kind), same foils."""

    n_way: int
    foils: str
    chance: float
    raw: Score
    prior_corrected: Score
    prior_only: Score
    n_trials: int
    seed: int
    ci_method: str
    popularity_pool: int | None
    null: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def train_prior(train_labels: np.ndarray, *, n_classes: int, smoothing: float = 1.0) -> np.ndarray:
    """``p_train(name)`` from training label indices, add-``smoothing`` so no name has prior 0."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    if len(counts) > n_classes:
        raise ProbeConfigError(f"train labels contain index {len(counts) - 1} but there are only {n_classes} classes")
    return (counts + smoothing) / (counts.sum() + smoothing * n_classes)


def sample_foils(y_true: np.ndarray, *, n_classes: int, n_way: int, kind: str, prior: np.ndarray,
                 rng: np.random.Generator, popularity_pool: int = 10) -> np.ndarray:
    """``(n, n_way - 1)`` distinct foil indices per trial, never the true name."""
    if kind not in FOIL_KINDS:
        raise ProbeConfigError(f"foils must be one of {FOIL_KINDS}, got {kind!r}")
    if n_way < 2 or n_way > n_classes:
        raise ProbeConfigError(f"n_way must be between 2 and the number of names ({n_classes}), got {n_way}")
    n = len(y_true)
    k = n_way - 1
    if kind == "uniform":
        # Sort random keys and drop the true class: a uniform draw without replacement, vectorised.
        keys = rng.random((n, n_classes))
        keys[np.arange(n), y_true] = np.inf
        return np.argsort(keys, axis=1)[:, :k]
    pool = max(int(popularity_pool), k)
    if pool > n_classes - 1:
        raise ProbeConfigError(f"popularity_pool={popularity_pool} exceeds the {n_classes - 1} other names")
    # Nearest names in log training frequency (stable order breaks ties by index).
    logp = np.log(prior)
    dist = np.abs(logp[:, None] - logp[None, :])
    np.fill_diagonal(dist, np.inf)
    neighbours = np.argsort(dist, axis=1, kind="stable")[:, :pool]  # (C, pool)
    keys = rng.random((n, pool))
    pick = np.argsort(keys, axis=1)[:, :k]
    return np.take_along_axis(neighbours[y_true], pick, axis=1)


def choice_outcomes(scores: np.ndarray, y_true: np.ndarray, foils: np.ndarray) -> np.ndarray:
    """Per-trial credit: 1 if the true name's score beats every foil, ``1/(t+1)`` for a t-way tie."""
    true_s = scores[np.arange(len(y_true)), y_true]
    foil_s = np.take_along_axis(scores, foils, axis=1)
    best_foil = foil_s.max(axis=1)
    ties = (foil_s == true_s[:, None]).sum(axis=1)
    return np.where(true_s > best_foil, 1.0, np.where(true_s == best_foil, 1.0 / (ties + 1), 0.0))


def bootstrap_ci(values: np.ndarray, *, groups: np.ndarray | None, n_boot: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean of ``values``, resampling whole groups (clusters) when given."""
    values = np.asarray(values, dtype=np.float64)
    if groups is None:
        groups = np.arange(len(values))
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(g, weights=values)
    counts = np.bincount(g).astype(np.float64)
    n_groups = len(sums)
    rng = np.random.default_rng([seed, 7])
    stats = np.empty(n_boot)
    # Multinomial group weights equal resampling groups with replacement; chunked to bound memory.
    chunk = max(1, 2_000_000 // max(n_groups, 1))
    for s in range(0, n_boot, chunk):
        w = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=min(chunk, n_boot - s))
        stats[s:s + len(w)] = (w @ sums) / np.maximum(w @ counts, 1e-12)
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def _score(outcomes, groups, n_boot, seed) -> Score:
    lo, hi = bootstrap_ci(outcomes, groups=groups, n_boot=n_boot, seed=seed)
    return Score(accuracy=float(np.mean(outcomes)), ci_low=lo, ci_high=hi)


def _shuffle_labels(y_true: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Names permuted across identities (each identity keeps one name), or across images without groups."""
    if groups is None:
        return rng.permutation(y_true)
    _, first, g = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    group_names = y_true[first]
    return rng.permutation(group_names)[g]


def forced_choice(proba, y_true, *, prior: np.ndarray, n_way: int = 2, foils: str = "uniform",
                  groups=None, seed: int = 0, n_boot: int = 1000, popularity_pool: int = 10,
                  null_repeats: int = 0) -> ForcedChoiceResult:
    """Forced-choice accuracy of ``proba`` (n, C) against labels ``y_true`` (indices into the columns).

    ``prior`` is ``p_train(name)`` (:func:`train_prior`), ``groups`` the identity of each image.
    """
    P = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    prior = np.asarray(prior, dtype=np.float64)
    if P.ndim != 2 or len(P) != len(y):
        raise ProbeConfigError(f"proba must be (n, C) with one row per label; got {P.shape} for {len(y)} labels")
    if prior.shape != (P.shape[1],) or np.any(prior <= 0):
        raise ProbeConfigError(f"prior must be ({P.shape[1]},) and positive (use train_prior with smoothing)")
    if groups is not None and len(groups) != len(y):
        raise ProbeConfigError(f"groups has {len(groups)} entries for {len(y)} images")
    C = P.shape[1]
    rng = np.random.default_rng([seed, n_way, FOIL_KINDS.index(foils) if foils in FOIL_KINDS else 99])
    foil_idx = sample_foils(y, n_classes=C, n_way=n_way, kind=foils, prior=prior, rng=rng,
                            popularity_pool=popularity_pool)
    corrected = P / prior[None, :]
    prior_scores = np.broadcast_to(prior[None, :], P.shape)
    raw = choice_outcomes(P, y, foil_idx)
    corr = choice_outcomes(corrected, y, foil_idx)
    blind = choice_outcomes(prior_scores, y, foil_idx)
    null = None
    if null_repeats > 0:
        accs = []
        for _ in range(null_repeats):
            y_null = _shuffle_labels(y, groups, rng)
            f_null = sample_foils(y_null, n_classes=C, n_way=n_way, kind=foils, prior=prior, rng=rng,
                                  popularity_pool=popularity_pool)
            accs.append(float(np.mean(choice_outcomes(corrected, y_null, f_null))))
        accs = np.asarray(accs)
        null = {"score": "prior_corrected", "repeats": int(null_repeats),
                "shuffled_across": "identities" if groups is not None else "images",
                "mean": float(accs.mean()), "q025": float(np.quantile(accs, 0.025)),
                "q975": float(np.quantile(accs, 0.975)),
                "p_value": float((1 + np.sum(accs >= corr.mean())) / (1 + len(accs)))}
    return ForcedChoiceResult(
        n_way=n_way, foils=foils, chance=1.0 / n_way,
        raw=_score(raw, groups, n_boot, seed), prior_corrected=_score(corr, groups, n_boot, seed),
        prior_only=_score(blind, groups, n_boot, seed), n_trials=len(y), seed=seed,
        ci_method="cluster bootstrap over identities" if groups is not None else "bootstrap over images",
        popularity_pool=popularity_pool if foils == "popularity" else None, null=null)


def forced_choice_report(proba, y_true, *, train_labels, groups=None, n_ways=(2, 4), foil_kinds=FOIL_KINDS,
                         seed: int = 0, n_boot: int = 1000, popularity_pool: int = 10,
                         null_repeats: int = 0) -> list[dict]:
    """Every protocol (``n_ways`` x ``foil_kinds``) as JSON-able dicts, ready for summary.json."""
    P = np.asarray(proba)
    prior = train_prior(train_labels, n_classes=P.shape[1])
    out = []
    for n_way in n_ways:
        if n_way > P.shape[1]:
            continue
        for kind in foil_kinds:
            pool = min(popularity_pool, P.shape[1] - 1)
            out.append(forced_choice(P, y_true, prior=prior, n_way=n_way, foils=kind, groups=groups, seed=seed,
                                     n_boot=n_boot, popularity_pool=pool, null_repeats=null_repeats).to_dict())
    return out

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

Foils (both by default) are ``"uniform"`` (any other name) or ``"popularity"``-matched (drawn from the
``popularity_pool`` names closest in training frequency); ``"same-COVARIATE"`` (e.g.
``same-gender``, Zwebner et al.'s design) draws them among the names with the true name's value
of that covariate (:func:`probes.controls.same_covariate_foils`; ``name_values`` gives each name
its value). Trials whose value has fewer than ``n_way`` names cannot have such foils; they are
left out of that protocol and counted (``n_trials_left_out``). Ties split the credit
(``1 / number tied at the top``), so a constant scorer sits exactly at chance. Each score has
a 95% CI by a cluster bootstrap over identities when ``groups`` are given (images of one person
are not independent), over images otherwise. Foil sampling is seeded and the seed recorded.

The null (``null_probas``) is the same three scores of probes **refit** on names shuffled across
identities (the permutation null a probe family already runs: each person keeps their images and
gets another person's name), scored against the true test names under the same foils. Such a
probe learns the name frequencies and nothing of the face, so its prior-corrected score centres
on chance (0.5 in 2-way choice) and its raw score on the prior-only score: each score is shown
beside its own null. Shuffling test labels over one fixed set of probabilities is not that null
(a trained probe's probabilities carry the face's real name, and dividing them by the prior
does not undo how they track it); it remains available as ``null_repeats`` only for classifiers
that never saw a training name (zero-shot), where it is the exact permutation null.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from probes.errors import ProbeConfigError

FOIL_KINDS = ("uniform", "popularity")


@dataclass(frozen=True)
class Score:
    """One forced-choice accuracy with its 95% CI and, when a null was run, the null beside it."""

    accuracy: float
    ci_low: float
    ci_high: float
    null_mean: float | None = None
    null_q025: float | None = None
    null_q975: float | None = None
    null_p_value: float | None = None


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


SAME_PREFIX = "same-"


def is_same_covariate(kind: str) -> bool:
    """``same-COVARIATE`` foils (drawn among the names sharing the true name's value)."""
    return str(kind).startswith(SAME_PREFIX) and len(str(kind)) > len(SAME_PREFIX)


def check_foil_kind(kind: str) -> str:
    """``kind`` if it is a foil kind (uniform, popularity, same-COVARIATE), else a clear error."""
    if kind in FOIL_KINDS or is_same_covariate(kind):
        return kind
    raise ProbeConfigError(f"foils must be one of {', '.join(FOIL_KINDS)} or same-COVARIATE (e.g. same-gender), "
                           f"got {kind!r}")


def sample_foils(y_true: np.ndarray, *, n_classes: int, n_way: int, kind: str, prior: np.ndarray,
                 rng: np.random.Generator, popularity_pool: int = 10, name_values=None) -> np.ndarray:
    """``(n, n_way - 1)`` distinct foil indices per trial, never the true name.

    ``kind="same-COVARIATE"`` needs ``name_values`` (C,), each name's value: the foils are
    :func:`probes.controls.same_covariate_foils` (never crossing values).
    """
    check_foil_kind(kind)
    if n_way < 2 or n_way > n_classes:
        raise ProbeConfigError(f"n_way must be between 2 and the number of names ({n_classes}), got {n_way}")
    if is_same_covariate(kind):
        from probes.controls import same_covariate_foils

        if name_values is None or len(name_values) != n_classes:
            raise ProbeConfigError(f"{kind} foils need name_values: one covariate value per name ({n_classes})")
        return same_covariate_foils(np.asarray(y_true, dtype=np.int64), name_values=name_values, n_way=n_way, rng=rng)
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


def _shuffle_labels(y_true: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Names permuted across identities (each identity keeps one name), or across images without groups."""
    if groups is None:
        return rng.permutation(y_true)
    _, first, g = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    group_names = y_true[first]
    return rng.permutation(group_names)[g]


def _null_stats(values: np.ndarray, observed: float) -> dict:
    return {"mean": float(values.mean()), "q025": float(np.quantile(values, 0.025)),
            "q975": float(np.quantile(values, 0.975)),
            "p_value": float((1 + np.sum(values >= observed)) / (1 + len(values)))}


def forced_choice(proba, y_true, *, prior: np.ndarray, n_way: int = 2, foils: str = "uniform",
                  groups=None, seed: int = 0, n_boot: int = 1000, popularity_pool: int = 10,
                  null_probas=None, null_priors=None, null_repeats: int = 0, name_values=None) -> ForcedChoiceResult:
    """Forced-choice accuracy of ``proba`` (n, C) against labels ``y_true`` (indices into the columns).

    ``proba`` must be the model's own (unadjusted) probabilities. ``prior`` is ``p_train(name)``
    (:func:`train_prior`), ``groups`` the identity of each image. ``null_probas``: test
    probabilities of probes refit on shuffled names (one (n, C) array per refit), with
    ``null_priors`` their training priors (default ``prior``); ``null_repeats`` > 0 instead
    shuffles the test names across identities over the fixed ``proba`` (only for a classifier
    that saw no training names, see the module docstring). Foils are the same for the observed
    scores and every null repeat (a paired comparison). ``name_values`` (C,): each name's
    covariate value, for ``foils="same-COVARIATE"``.
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
    if null_probas is not None and null_repeats:
        raise ProbeConfigError("give null_probas (refit null) or null_repeats (label-shuffle null), not both")
    C = P.shape[1]
    rng = np.random.default_rng([seed, n_way, FOIL_KINDS.index(foils) if foils in FOIL_KINDS else 99])
    foil_idx = sample_foils(y, n_classes=C, n_way=n_way, kind=foils, prior=prior, rng=rng,
                            popularity_pool=popularity_pool, name_values=name_values)

    def three(P_, prior_, y_, f_):
        return (choice_outcomes(P_, y_, f_), choice_outcomes(P_ / prior_[None, :], y_, f_),
                choice_outcomes(np.broadcast_to(prior_[None, :], P_.shape), y_, f_))

    raw, corr, blind = three(P, prior, y, foil_idx)
    observed = {"raw": raw, "prior_corrected": corr, "prior_only": blind}
    nulls = None
    null = None
    if null_probas is not None:
        null_probas = list(null_probas)
        priors = list(null_priors) if null_priors is not None else [prior] * len(null_probas)
        if len(priors) != len(null_probas) or not null_probas:
            raise ProbeConfigError(f"{len(null_probas)} null probabilities but {len(priors)} null priors")
        vals = {k: [] for k in observed}
        for Pn, pn in zip(null_probas, priors):
            Pn = np.asarray(Pn, dtype=np.float64)
            if Pn.shape != P.shape:
                raise ProbeConfigError(f"null probabilities must be {P.shape} like proba, got {Pn.shape}")
            for k, o in zip(observed, three(Pn, np.asarray(pn, dtype=np.float64), y, foil_idx)):
                vals[k].append(float(o.mean()))
        nulls = {k: _null_stats(np.asarray(v), float(observed[k].mean())) for k, v in vals.items()}
        null = {"method": "probe refit on names shuffled across identities (whole fit repeated)",
                "shuffled_across": "identities" if groups is not None else "images",
                "repeats": len(null_probas), "score": "prior_corrected", **nulls["prior_corrected"],
                "by_score": nulls}
    elif null_repeats > 0:
        accs = []
        for _ in range(null_repeats):
            y_null = _shuffle_labels(y, groups, rng)
            accs.append(float(np.mean(choice_outcomes(P / prior[None, :], y_null, foil_idx))))
        nulls = {"prior_corrected": _null_stats(np.asarray(accs), float(corr.mean()))}
        null = {"method": "test names shuffled across identities over fixed scores (valid for a classifier "
                          "that saw no training names)",
                "shuffled_across": "identities" if groups is not None else "images",
                "repeats": int(null_repeats), "score": "prior_corrected", **nulls["prior_corrected"],
                "by_score": nulls}

    def scored(k):
        lo, hi = bootstrap_ci(observed[k], groups=groups, n_boot=n_boot, seed=seed)
        nk = (nulls or {}).get(k)
        return Score(accuracy=float(np.mean(observed[k])), ci_low=lo, ci_high=hi,
                     **({} if nk is None else {"null_mean": nk["mean"], "null_q025": nk["q025"],
                                               "null_q975": nk["q975"], "null_p_value": nk["p_value"]}))

    return ForcedChoiceResult(
        n_way=n_way, foils=foils, chance=1.0 / n_way, raw=scored("raw"), prior_corrected=scored("prior_corrected"),
        prior_only=scored("prior_only"), n_trials=len(y), seed=seed,
        ci_method="cluster bootstrap over identities" if groups is not None else "bootstrap over images",
        popularity_pool=popularity_pool if foils == "popularity" else None, null=null)


def _trials_with_foils(y: np.ndarray, name_values, n_way: int) -> np.ndarray:
    """Trials whose true name's value has at least ``n_way`` names (same-covariate foils exist)."""
    nv = np.asarray(name_values).astype(str)
    _, inverse, per_value = np.unique(nv, return_inverse=True, return_counts=True)
    return per_value[inverse[np.asarray(y, dtype=np.int64)]] >= n_way


def forced_choice_report(proba, y_true, *, train_labels, groups=None, n_ways=(2, 4), foil_kinds=("uniform", "popularity"),
                         seed: int = 0, n_boot: int = 1000, popularity_pool: int = 10, null_probas=None,
                         null_train_labels=None, null_repeats: int = 0, name_values=None) -> list[dict]:
    """Every protocol (``n_ways`` x ``foil_kinds``) as JSON-able dicts, ready for summary.json.

    ``proba``: the model's own test probabilities (never logit-adjusted). ``null_probas``: the
    test probabilities of the refits on shuffled names, ``null_train_labels`` the shuffled
    training labels of each (their priors); ``null_repeats``: the label-shuffle null for a
    classifier that saw no training names (see :func:`forced_choice`). ``name_values``:
    ``{covariate: (C,) values}`` for ``same-COVARIATE`` foil kinds. A same-covariate protocol
    keeps the trials whose value has ``n_way`` names (the rest are counted in
    ``n_trials_left_out``); when none has, its entry holds only ``skipped`` (the reason).
    """
    P = np.asarray(proba)
    y_true = np.asarray(y_true, dtype=np.int64)
    prior = train_prior(train_labels, n_classes=P.shape[1])
    priors = None
    if null_probas is not None and null_train_labels is not None:
        priors = [train_prior(t, n_classes=P.shape[1]) for t in null_train_labels]
    out = []
    for n_way in n_ways:
        if n_way > P.shape[1]:
            continue
        for kind in foil_kinds:
            check_foil_kind(kind)
            pool = min(popularity_pool, P.shape[1] - 1)
            keep, nv = None, None
            if is_same_covariate(kind):
                cov = kind[len(SAME_PREFIX):]
                if not name_values or cov not in name_values:
                    raise ProbeConfigError(f"{kind} foils need the values of covariate {cov!r} per name (name_values)")
                nv = np.asarray(name_values[cov]).astype(str)
                keep = _trials_with_foils(y_true, nv, n_way)
                if not keep.any():
                    out.append({"n_way": n_way, "foils": kind, "chance": 1.0 / n_way, "n_trials": 0,
                                "n_trials_left_out": int(y_true.size),
                                "skipped": f"no test name's {cov} value has {n_way} names, so no {n_way}-way "
                                           f"{kind} foils exist"})
                    continue
            sel = slice(None) if keep is None or keep.all() else keep
            res = forced_choice(P[sel], y_true[sel], prior=prior, n_way=n_way, foils=kind,
                                groups=None if groups is None else np.asarray(groups)[sel], seed=seed, n_boot=n_boot,
                                popularity_pool=pool,
                                null_probas=None if null_probas is None else [np.asarray(q)[sel] for q in null_probas],
                                null_priors=priors, null_repeats=null_repeats, name_values=nv).to_dict()
            if keep is not None:
                res["n_trials_left_out"] = int((~keep).sum())
                if not keep.all():
                    res["left_out"] = (f"{int((~keep).sum())} test images whose name's value has fewer than {n_way} "
                                       "names (no same-value foils)")
            out.append(res)
    return out

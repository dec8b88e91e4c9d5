"""Is the name signal more than a covariate? Baselines, a within-stratum null and within-value tasks.

Names carry gender (and age, ethnicity), and faces carry them too: zero-shot CLIP reads gender
at > 96% on FairFace. A probe that learned only "female face -> a female name" beats 1/C
without any face-name link. Kramer & Jones (2015) found the face-name effect vanished once
sex, age and ethnicity were controlled; Zwebner et al. (2017) used same-gender foils for this
reason. Every function here answers one part of "is it more than the covariate?":

- :func:`oracle_baseline`: what a **face-blind** rule that knows each test image's true
  covariate value scores (uniform guessing among the names of that value; answering the most
  frequent training name of that value). A probe near it may have learned nothing else.
- :func:`from_face`: how well the same embedding predicts the covariate, and what the rule
  "predict the covariate from the face, then guess a name within the predicted value" scores.
- :func:`beyond_covariate`: the probe's balanced accuracy against a **within-stratum
  permutation null**: names shuffled across identities that share the covariate value (the
  covariate signal survives, the within-value name signal does not), the whole fit and
  selection repeated per permutation. This is the headline answer.
- :func:`within_groups` / :func:`within_group_scores`: the names task split by value (the
  female names among female-labelled images, ...), each with its own chance level.
- :func:`same_covariate_foils`: forced-choice foils with the same value as the true name.
- :func:`covariate_controls`: oracle, from-face and beyond together, the ``controls.{covariate}``
  block of a summary.

Data layout (every function): one row per image, aligned arrays ``X`` (n, D), ``names`` (n,),
``covariate`` (n,) categorical values (strings or ints; bin numeric covariates first),
``groups`` (n,) identities or None (each image its own identity), and ``subset`` (n,) the
split's assignment codes: 0 train, 1 validation, 2 test, -1 unused (``Split.assignment``).
"Training" images are train + validation, the rows the final probe is fitted on (as in
:func:`probes.metrics.chance_levels`).

**A name's covariate value** (used for the oracle, the within-value tasks and the foils): the
covariate is per image, and a name can have images of several values, so each name gets the
**majority value among its training images**; ties go to the value that sorts first; a name
with no training image gets the majority over all its images. :func:`name_covariate_values`
is that map. **An identity's value** (the strata of the permutation null) is likewise the
majority value over its training images.

**The probe factory**: ``factory(classes)`` returns an unfitted estimator with
``fit(X, y, X_val=..., y_val=...)`` (selection on the validation rows, then its own refit) and
``predict_proba(X)`` whose columns follow ``classes`` (or its ``classes_``). ``LinearConfig.sweep``
is one; :func:`linear_factory` builds one from :class:`probes.linear.LinearSweep` arguments.

Every score has a 95% CI by the cluster bootstrap over identities: hard predictions through
:func:`probes.stats.bootstrap_metrics` (so they match the rest of the summary); the exact
expected score of uniform guessing (a per-image credit in [0, 1], which ``bootstrap_metrics``
does not take) through the same scheme here (identities resampled within each name), with
percentile intervals. Each block says which (``ci_method``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from probes import stats
from probes.errors import NotEnoughDataError, ProbeConfigError

__all__ = [
    "WithinGroup",
    "WithinSplit",
    "beyond_covariate",
    "beyond_fixed_predictions",
    "covariate_controls",
    "from_face",
    "linear_factory",
    "name_covariate_values",
    "oracle_baseline",
    "same_covariate_foils",
    "shuffle_names_within_strata",
    "within_group_scores",
    "within_groups",
]

_log = logging.getLogger(__name__)
TRAIN, VAL, TEST = 0, 1, 2
DEFAULT_PERMUTATIONS = 99  # p can reach 1/100 = 0.01
# Besag & Clifford's (1991) sequential Monte Carlo test: stop once this many null scores reach
# the observed one. p = h / L is then a valid p-value; with N <= 99 planned it is at least 10/98 >
# 0.1, so stopping never changes a verdict at alpha <= 0.1, and it saves most of the refits of a
# clearly null result.
DEFAULT_STOP_AFTER = 10
DEFAULT_MIN_NAMES = 2
DEFAULT_MIN_IDENTITIES = 4


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True, eq=False)
class _Rows:
    """Validated, aligned inputs: names as strings, covariate as strings, identity codes."""

    names: np.ndarray
    values: np.ndarray
    codes: np.ndarray
    subset: np.ndarray
    classes: np.ndarray
    y: np.ndarray  # index of each row's name in classes (-1 for unused rows)

    def mask(self, *which: int) -> np.ndarray:
        return np.isin(self.subset, which)


def _as_values(covariate, n: int) -> np.ndarray:
    cov = np.asarray(covariate)
    if cov.shape != (n,):
        raise ProbeConfigError(f"covariate must have one value per image, shape ({n},); got {cov.shape}")
    if cov.dtype.kind == "f":
        raise ProbeConfigError(
            "the covariate is numeric (float); controls need categories: bin it first "
            "(e.g. np.digitize(age, [30, 50]) or strings like 'under30'), or pass integer codes"
        )
    if cov.dtype.kind == "O" and any(v is None for v in cov.tolist()):
        raise ProbeConfigError("the covariate has missing values (None); give them a value such as 'unknown'")
    return cov.astype(str)


def _rows(names, covariate, groups, subset, classes=None) -> _Rows:
    names = np.asarray(names)
    if names.ndim != 1 or names.size == 0:
        raise ProbeConfigError(f"names must be a non-empty 1-D array (one name per image); got shape {names.shape}")
    n = names.size
    names = names.astype(str)
    values = _as_values(covariate, n)
    sub = np.asarray(subset)
    if sub.shape != (n,) or sub.dtype.kind not in "iu":
        raise ProbeConfigError(
            f"subset must be ({n},) integer split codes (0 train, 1 validation, 2 test, -1 unused); "
            f"got shape {sub.shape} dtype {sub.dtype}"
        )
    bad = np.setdiff1d(np.unique(sub), [-1, TRAIN, VAL, TEST])
    if bad.size:
        raise ProbeConfigError(f"subset codes must be -1, 0, 1 or 2; found {bad.tolist()}")
    for code, label in ((TRAIN, "train"), (VAL, "validation"), (TEST, "test")):
        if not np.any(sub == code):
            raise NotEnoughDataError(f"no {label} rows (subset code {code}); controls need train, validation and test")
    try:
        codes = stats.group_codes(groups, n)
    except ValueError as e:
        raise ProbeConfigError(f"{e} (one identity per image, or None)") from None
    used = sub >= 0
    if classes is None:
        classes = np.unique(names[used])
    else:
        classes = np.asarray(classes).astype(str)
        if np.unique(classes).size != classes.size:
            raise ProbeConfigError("classes must be unique")
        missing = np.setdiff1d(np.unique(names[used]), classes)
        if missing.size:
            raise ProbeConfigError(f"names {missing[:5].tolist()} are not among the {classes.size} given classes")
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    y = np.array([lookup.get(s, -1) if u else -1 for s, u in zip(names.tolist(), used.tolist())], dtype=np.int64)
    return _Rows(names=names, values=values, codes=codes, subset=sub.astype(np.int64), classes=classes, y=y)


def _majority(keys: np.ndarray, values: np.ndarray) -> dict[str, str]:
    """For each key, its most frequent value; ties to the value that sorts first."""
    out: dict[str, str] = {}
    if keys.size == 0:
        return out
    pairs, counts = np.unique(np.stack([keys.astype(str), values.astype(str)]), axis=1, return_counts=True)
    # np.unique sorts by key then value, so the first maximum of each key is the sorted-first tie.
    for (k, v), c in zip(pairs.T.tolist(), counts.tolist()):
        if k not in out or c > out[k][1]:
            out[k] = (v, c)
    return {k: v for k, (v, _) in out.items()}


def name_covariate_values(names, covariate, *, subset=None) -> dict[str, str]:
    """Each name's covariate value: the majority value among its training (train + validation)
    images, ties to the value that sorts first; a name without training images gets the
    majority over all its images. ``subset`` None treats every row as training."""
    names = np.asarray(names).astype(str)
    values = _as_values(covariate, names.size)
    fit = np.ones(names.size, bool) if subset is None else np.isin(np.asarray(subset), (TRAIN, VAL))
    out = _majority(names[fit], values[fit])
    rest = _majority(names, values)
    return {n: out.get(n, rest[n]) for n in sorted(rest)}


def _identity_values(r: _Rows) -> np.ndarray:
    """The value of each identity code: majority over its training images (all images if none)."""
    fit = r.mask(TRAIN, VAL)
    m = _majority(r.codes[fit].astype(str), r.values[fit])
    rest = _majority(r.codes.astype(str), r.values)
    n_groups = int(r.codes.max()) + 1
    return np.array([m.get(str(g), rest.get(str(g), "")) for g in range(n_groups)])


# --------------------------------------------------------------------------- bootstrap of per-image credit
def _credit_bootstrap(credit, y, *, n_classes: int, codes, n_boot: int, alpha: float, seed: int) -> dict:
    """Balanced accuracy and accuracy of a per-image credit (an expected P(correct) in [0, 1]),
    with percentile CIs from a cluster bootstrap stratified by name: each name's test identities
    are resampled with replacement among themselves (the scheme of :mod:`probes.stats`, which
    takes hard predictions only), so every replicate averages over the same names."""
    from scipy.sparse import csr_matrix

    credit = np.asarray(credit, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    codes = np.unique(np.asarray(codes), return_inverse=True)[1].astype(np.int64)
    n, n_groups = y.size, int(codes.max()) + 1
    onehot = csr_matrix((np.ones(n), (np.arange(n), y)), shape=(n, n_classes))
    weighted = csr_matrix((credit, (np.arange(n), y)), shape=(n, n_classes))

    def metrics(w):
        support = np.asarray((onehot.T @ w.T).T)
        tp = np.asarray((weighted.T @ w.T).T)
        present = support > 0
        recall = np.where(present, tp / np.where(present, support, 1), 0.0)
        return recall.sum(axis=1) / present.sum(axis=1), (w @ credit) / w.sum(axis=1)

    # The name of each identity (identities carry one name; the most frequent if not).
    pair, pair_count = np.unique(codes * n_classes + y, return_counts=True)
    by_count = np.lexsort((-pair_count, pair // n_classes))  # per identity, its most frequent name first
    lead = np.r_[True, np.diff(pair[by_count] // n_classes) != 0]
    group_name = np.empty(n_groups, dtype=np.int64)
    group_name[pair[by_count][lead] // n_classes] = pair[by_count][lead] % n_classes
    order = np.argsort(group_name, kind="stable")
    sorted_names = group_name[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_names)) + 1]
    sizes = np.diff(np.r_[starts, n_groups])
    first, size = np.repeat(starts, sizes), np.repeat(sizes, sizes)
    rng = np.random.default_rng(seed)
    bal, acc = metrics(np.ones((1, n)))
    reps_bal, reps_acc = [], []
    for done in range(0, n_boot, 64):
        b = min(64, n_boot - done)
        drawn = order[first + np.floor(rng.random((b, n_groups)) * size).astype(np.int64)]
        counts = np.zeros((b, n_groups))
        np.add.at(counts, (np.arange(b)[:, None], drawn), 1.0)
        rb, ra = metrics(counts[:, codes])
        reps_bal.append(rb)
        reps_acc.append(ra)
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    rb, ra = np.concatenate(reps_bal), np.concatenate(reps_acc)
    return {
        "balanced_accuracy": float(bal[0]),
        "accuracy": float(acc[0]),
        "ci": {
            "balanced_accuracy": [float(np.percentile(rb, lo)), float(np.percentile(rb, hi))],
            "accuracy": [float(np.percentile(ra, lo)), float(np.percentile(ra, hi))],
        },
        "ci_method": "percentile, cluster bootstrap over identities stratified by name",
    }


def _hard_scores(y, pred, *, n_classes: int, groups, train_labels, n_boot: int, alpha: float, seed: int) -> dict:
    """Balanced accuracy and top-1 of hard predictions with :func:`probes.stats.bootstrap_metrics` CIs."""
    from probes.metrics import accuracy, balanced_accuracy

    boot = stats.bootstrap_metrics(y, pred, n_classes=n_classes, groups=groups, train_labels=train_labels,
                                   n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "balanced_accuracy": balanced_accuracy(y, pred),
        "accuracy": accuracy(y, pred),
        "ci": {"balanced_accuracy": boot["ci"]["balanced_accuracy"], "accuracy": boot["ci"]["accuracy"]},
        "p_value": boot["p_value"],
        "ci_method": f"{boot['method']} ({boot.get('interval', 'percentile')})",
    }


def _ci_method(groups) -> str:
    return "cluster bootstrap over identities" if groups is not None else "image bootstrap"


# --------------------------------------------------------------------------- rules that know a value
def _value_rules(r: _Rows, test_values: np.ndarray, *, has_groups: bool, n_boot: int, alpha: float, seed: int) -> dict:
    """Scores of the two face-blind name rules given one covariate value per test image."""
    name_value = name_covariate_values(r.names[r.subset >= 0], r.values[r.subset >= 0], subset=r.subset[r.subset >= 0])
    by_value: dict[str, list[str]] = {}
    for name in r.classes.tolist():
        if name in name_value:
            by_value.setdefault(name_value[name], []).append(name)
    fit = r.mask(TRAIN, VAL)
    train_counts = np.bincount(r.y[fit], minlength=r.classes.size)
    index = {c: i for i, c in enumerate(r.classes.tolist())}
    # The most frequent training name of each value; ties to the name that sorts first.
    mode = {v: max(ns, key=lambda s: (train_counts[index[s]], -index[s])) for v, ns in by_value.items()}
    overall_mode = int(np.argmax(train_counts))
    test = r.subset == TEST
    y_test = r.y[test]
    names_test = r.names[test]
    c = r.classes.size
    credit_uniform = np.empty(y_test.size)
    pred_mode = np.empty(y_test.size, dtype=np.int64)
    fallback = 0
    for i, (name, v) in enumerate(zip(names_test.tolist(), np.asarray(test_values).astype(str).tolist())):
        cands = by_value.get(v)
        if not cands:  # a value no training name has: guess among all names
            fallback += 1
            credit_uniform[i] = 1.0 / c
            pred_mode[i] = overall_mode
            continue
        credit_uniform[i] = (1.0 / len(cands)) if name_value.get(name) == v else 0.0
        pred_mode[i] = index[mode[v]]
    uniform = _credit_bootstrap(credit_uniform, y_test, n_classes=c, codes=r.codes[test], n_boot=n_boot,
                                alpha=alpha, seed=seed)
    mode_scores = _hard_scores(y_test, pred_mode, n_classes=c, groups=r.codes[test] if has_groups else None,
                               train_labels=r.y[fit], n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "uniform": {"rule": "guess uniformly among the names of the value (expected score, exact)", **uniform},
        "mode": {"rule": "answer the most frequent training name of the value", "answer": dict(sorted(mode.items())),
                 **mode_scores},
        "names_by_value": {v: ns for v, ns in sorted(by_value.items())},
        "test_images_of_unseen_values": int(fallback),
    }


def oracle_baseline(names, *, covariate, subset, groups=None, classes=None, n_boot: int = 1000,
                    alpha: float = 0.05, seed: int = 0) -> dict:
    """What a face-blind rule that knows each test image's TRUE covariate value scores.

    Balanced accuracy (the headline ``balanced_accuracy``): guess uniformly among the names of
    that value; an image of name n and value v scores exactly 1/|names(v)| when n's value is v
    and 0 otherwise (no simulation), and the balanced accuracy is the mean over names of their
    mean score. Top-1 (the headline ``accuracy``): answer the most frequent training name of
    that value. Both rules are reported with both metrics and cluster-bootstrap CIs.
    """
    r = _rows(names, covariate, groups, subset, classes)
    test = r.subset == TEST
    rules = _value_rules(r, r.values[test], has_groups=groups is not None, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "balanced_accuracy": rules["uniform"]["balanced_accuracy"],
        "balanced_accuracy_ci": rules["uniform"]["ci"]["balanced_accuracy"],
        "accuracy": rules["mode"]["accuracy"],
        "accuracy_ci": rules["mode"]["ci"]["accuracy"],
        "chance": 1.0 / r.classes.size,
        "knows": "the true covariate value of each test image",
        **rules,
        "n_test": int(test.sum()),
        "n_classes": int(r.classes.size),
        "ci_method": _ci_method(groups),
        "n_boot": int(n_boot),
    }


# --------------------------------------------------------------------------- fitting through a factory
def linear_factory(**sweep_kwargs) -> Callable[[np.ndarray], object]:
    """``classes -> LinearSweep(classes=classes, **sweep_kwargs)``: the library's linear probe as a factory."""
    from probes.linear import LinearSweep

    def factory(classes):
        return LinearSweep(classes=np.asarray(classes), **sweep_kwargs)

    return factory


def _fit_predict(factory, classes: np.ndarray, X, labels: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Fit on train rows (selection on validation rows), predict the test rows: class indices."""
    tr, va, te = (subset == TRAIN), (subset == VAL), (subset == TEST)
    est = factory(classes)
    est.fit(X[tr], labels[tr], X_val=X[va], y_val=labels[va])
    proba = np.asarray(est.predict_proba(X[te]))
    cols = np.asarray(getattr(est, "classes_", classes)).astype(str)
    if proba.shape != (int(te.sum()), cols.size):
        raise ProbeConfigError(
            f"the factory's predict_proba returned {proba.shape}, expected ({int(te.sum())}, {cols.size}): "
            "one row per test image, one column per class"
        )
    lookup = {c: i for i, c in enumerate(np.asarray(classes).astype(str).tolist())}
    try:
        col_index = np.array([lookup[c] for c in cols.tolist()], dtype=np.int64)
    except KeyError as e:
        raise ProbeConfigError(
            f"the factory's estimator has class {e.args[0]!r}, which is not among the task's classes; "
            "the factory must build its estimator with the classes it is given"
        ) from None
    return col_index[np.argmax(proba, axis=1)]


def _as_X(X, n: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] != n:
        raise ProbeConfigError(f"X must be (n, D) with one row per name; got {X.shape} for {n} names")
    return X


def from_face(factory, *, X, names, covariate, subset, groups=None, classes=None, n_boot: int = 1000,
              alpha: float = 0.05, seed: int = 0, predicted=None) -> dict:
    """How well the embedding predicts the covariate, and what "predict the covariate from the face,
    then guess a name within the predicted value" scores.

    The covariate probe is ``factory(values)`` fitted on the train rows' covariate (selection on
    validation), scored on test: ``covariate.balanced_accuracy`` with CI and p-value against
    chance (1 / number of values). The name rules then use the PREDICTED value of each test
    image: ``uniform`` guesses uniformly among the names of that value (expected score, exact;
    the headline ``balanced_accuracy``), ``mode`` answers the most frequent training name of
    that value (the headline ``accuracy``). Compare with :func:`oracle_baseline`, the same
    rules with the true value.

    ``predicted`` (one value per test row) replaces the fit for a family that trains nothing
    (zero-shot: the value of the name it predicts); ``factory`` is then unused (None).
    """
    r = _rows(names, covariate, groups, subset, classes)
    X = _as_X(X, r.names.size)
    fit = r.mask(TRAIN, VAL)
    value_classes = np.unique(r.values[fit])
    if value_classes.size < 2:
        raise NotEnoughDataError(
            f"the covariate has a single value {value_classes.tolist()} among the training images; nothing to predict"
        )
    t0 = time.perf_counter()
    used = r.subset >= 0
    test = r.subset == TEST
    if predicted is None:
        pred_values = value_classes[_fit_predict(factory, value_classes, X[used], r.values[used], r.subset[used])]
        how = "the same probe family fitted to the covariate (train, selection on validation)"
    else:
        pred_values = np.asarray(predicted).astype(str)
        if pred_values.shape != (int(test.sum()),):
            raise ProbeConfigError(f"predicted must hold one value per test row ({int(test.sum())}), got "
                                   f"shape {pred_values.shape}")
        how = "given (e.g. the value of the name a zero-shot classifier predicts)"
    true_values = r.values[test]
    all_values = np.unique(np.concatenate([value_classes, true_values, pred_values]))
    vi = {v: i for i, v in enumerate(all_values.tolist())}
    y_val = np.array([vi[v] for v in true_values.tolist()], dtype=np.int64)
    p_val = np.array([vi[v] for v in pred_values.tolist()], dtype=np.int64)
    boot = stats.bootstrap_metrics(y_val, p_val, n_classes=all_values.size,
                                   groups=r.codes[test] if groups is not None else None,
                                   n_boot=n_boot, alpha=alpha, seed=seed)
    from probes.metrics import accuracy, balanced_accuracy

    cov = {
        "balanced_accuracy": balanced_accuracy(y_val, p_val),
        "ci": boot["ci"]["balanced_accuracy"],
        "accuracy": accuracy(y_val, p_val),
        "accuracy_ci": boot["ci"]["accuracy"],
        "chance": 1.0 / value_classes.size,
        "p_value": boot["p_value"]["balanced_accuracy"],
        "values": value_classes.tolist(),
        "predicted_by": how,
        "seconds": time.perf_counter() - t0,
    }
    rules = _value_rules(r, pred_values, has_groups=groups is not None, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "covariate": cov,
        "balanced_accuracy": rules["uniform"]["balanced_accuracy"],
        "balanced_accuracy_ci": rules["uniform"]["ci"]["balanced_accuracy"],
        "accuracy": rules["mode"]["accuracy"],
        "accuracy_ci": rules["mode"]["ci"]["accuracy"],
        "chance": 1.0 / r.classes.size,
        "knows": "the covariate value predicted from the face by the same probe family",
        **rules,
        "n_test": int(test.sum()),
        "ci_method": _ci_method(groups),
        "n_boot": int(n_boot),
    }


# --------------------------------------------------------------------------- the within-stratum null
def shuffle_names_within_strata(names, *, groups, strata, rng: np.random.Generator) -> np.ndarray:
    """Names permuted across identities of the SAME stratum: every person keeps their images and
    gets the name of another person with the same covariate value, so the number of people per
    name within each value is kept and the covariate-name association is untouched.

    ``strata`` (n,) is the value of each image's identity (constant per identity); ``groups``
    None makes each image its own identity.
    """
    names = np.asarray(names)
    strata = np.asarray(strata).astype(str)
    codes = stats.group_codes(groups, names.size)
    n_groups = int(codes.max()) + 1
    first = np.full(n_groups, -1, dtype=np.int64)
    order = np.arange(names.size)[::-1]
    first[codes[order]] = order  # the first image of each identity
    person_name = names[first]
    person_stratum = strata[first]
    new = person_name.copy()
    for s in np.unique(person_stratum):
        idx = np.flatnonzero(person_stratum == s)
        new[idx] = person_name[idx[rng.permutation(idx.size)]]
    return new[codes]


def _null_record(observed: float, null: np.ndarray, p: float, *, ci, p_chance, chance: float, alpha: float,
                 planned: int, stopped: bool, stop_after: int | None, null_method: str, n_strata: int, seed: int,
                 t0: float) -> dict:
    """The ``beyond`` block of both within-stratum nulls (refit or fixed predictions)."""
    out = {
        "balanced_accuracy": float(observed),
        "ci": ci,
        "p_value_vs_chance": p_chance,
        "chance": chance,
        "null_mean": float(null.mean()),
        "null_ci": [float(np.percentile(null, 100 * alpha / 2)), float(np.percentile(null, 100 * (1 - alpha / 2)))],
        "p_value": p,
        "significant": bool(p < alpha),
        "alpha": alpha,
        "n_permutations": int(null.size),
        "n_permutations_planned": int(planned),
        "stopped_early": bool(stopped),
        "stop_after": None if stop_after is None else int(stop_after),
        "p_value_method": ("Besag-Clifford sequential: h / L at the h-th null score >= observed" if stopped else
                           "(1 + #null >= observed) / (1 + N)"),
        "min_p_value": 1.0 / (int(planned) + 1),
        "null": null.tolist(),
        "null_method": null_method,
        "n_strata": int(n_strata),
        "seed": int(seed),
        "seconds": time.perf_counter() - t0,
    }
    if out["min_p_value"] >= alpha:
        out["warning"] = (f"{planned} permutations cannot give p < {alpha} (smallest p is "
                          f"{out['min_p_value']:.3f}); use at least {int(np.ceil(1 / alpha))}")
    return out


def beyond_covariate(factory, *, X, names, covariate, subset, groups=None, classes=None,
                     n_permutations: int = DEFAULT_PERMUTATIONS, alpha: float = 0.05, seed: int = 0,
                     observed: float | None = None, n_boot: int = 1000, stop_after: int | None = DEFAULT_STOP_AFTER,
                     log: Callable[[str], None] | None = None) -> dict:
    """The probe's test balanced accuracy against the within-stratum permutation null.

    The observed score is ``factory(classes)`` fitted on the true names (train rows, selection
    on validation rows), scored on the test rows; pass ``observed`` to reuse a fit already made
    with the same factory and data. Each of ``n_permutations`` null runs shuffles the names of
    the training identities (train + validation) **within their covariate value**
    (:func:`shuffle_names_within_strata`; an identity's value is the majority over its
    training images), refits and reselects everything, and scores the TRUE test names.
    p = (1 + #{null >= observed}) / (1 + N); ``significant`` is p < ``alpha``. With N < 99 p
    cannot reach 0.01 (and with N < 1/alpha - 1 it cannot reach alpha: ``warning`` says so).
    Runs are sequential; ``log`` (default the module logger) gets one line per permutation.

    ``stop_after`` (h, default 10; None runs all N): Besag & Clifford's sequential test. Once h
    null scores are >= the observed one after L < N permutations, the run stops with the valid
    p-value h / L (Besag & Clifford 1991, Biometrika 78:301). That p is >= h / N, above 0.1 for
    h = 10 and N <= 99, so a result that stops early would not have been significant after all N
    either: the verdict is the same, most refits of a clearly null result are saved. The null
    drawn is then the first L of the N the full run would draw (same seed). ``n_permutations``
    is the number run, ``n_permutations_planned`` N, ``stopped_early`` says which.
    """
    if int(n_permutations) < 1:
        raise ProbeConfigError(f"n_permutations must be >= 1 (99 lets p reach 0.01), got {n_permutations}")
    if stop_after is not None and int(stop_after) < 1:
        raise ProbeConfigError(f"stop_after must be >= 1 or None (run every permutation), got {stop_after}")
    r = _rows(names, covariate, groups, subset, classes)
    X = _as_X(X, r.names.size)
    say = log or _log.info
    from probes.metrics import balanced_accuracy

    used = r.subset >= 0
    Xu, sub_u, names_u = X[used], r.subset[used], r.names[used]
    test_u = sub_u == TEST
    y_test = r.y[used][test_u]
    t0 = time.perf_counter()
    if observed is None:
        pred = _fit_predict(factory, r.classes, Xu, names_u, sub_u)
        observed = balanced_accuracy(y_test, pred)
        boot = stats.bootstrap_metrics(y_test, pred, n_classes=r.classes.size,
                                       groups=r.codes[used][test_u] if groups is not None else None,
                                       n_boot=n_boot, alpha=alpha, seed=seed)
        ci, p_chance = boot["ci"]["balanced_accuracy"], boot["p_value"]["balanced_accuracy"]
    else:
        ci, p_chance = None, None
    observed = float(observed)
    strata = _identity_values(r)[r.codes]
    fit_u = np.isin(sub_u, (TRAIN, VAL))
    fit_groups = r.codes[used][fit_u]
    n_strata = int(np.unique(strata[used][fit_u]).size)
    say(f"beyond covariate: observed test balanced accuracy {observed:.4f}; {n_permutations} within-stratum "
        f"permutations over {int(np.unique(fit_groups).size)} training identities in {n_strata} strata")
    rng = np.random.default_rng(seed)
    planned = int(n_permutations)
    null = np.empty(planned)
    t_null = time.perf_counter()
    at_or_above, stopped = 0, False
    for i in range(planned):
        shuffled = names_u.copy()
        shuffled[fit_u] = shuffle_names_within_strata(names_u[fit_u], groups=fit_groups,
                                                     strata=strata[used][fit_u], rng=rng)
        pred = _fit_predict(factory, r.classes, Xu, shuffled, sub_u)
        null[i] = balanced_accuracy(y_test, pred)
        at_or_above += int(null[i] >= observed)
        elapsed = time.perf_counter() - t_null
        left = elapsed / (i + 1) * (planned - i - 1)
        say(f"permutation {i + 1}/{planned}: balanced accuracy {null[i]:.4f} "
            f"(observed {observed:.4f}); {elapsed:.1f} s, about {left:.0f} s left")
        if stop_after is not None and at_or_above >= int(stop_after) and i + 1 < planned:
            stopped = True
            null = null[: i + 1]
            say(f"beyond covariate: stopped after {i + 1} of {planned} permutations: {at_or_above} null scores "
                f"reach the observed one (Besag-Clifford; p = {at_or_above}/{i + 1})")
            break
    p = at_or_above / null.size if stopped else stats.permutation_p_value(observed, null)
    out = _null_record(observed, null, p, ci=ci, p_chance=p_chance, chance=1.0 / r.classes.size, alpha=alpha,
                       planned=planned, stopped=stopped, stop_after=stop_after,
                       null_method="names shuffled across training identities within each covariate value; "
                                   "fit and selection repeated; scored on the true test names",
                       n_strata=n_strata, seed=seed, t0=t0)
    say(f"beyond covariate: p = {p:.4f} (null mean {out['null_mean']:.4f}), {out['seconds']:.1f} s")
    return out


def beyond_fixed_predictions(predictions, *, names, covariate, subset, groups=None, classes=None,
                             n_permutations: int = DEFAULT_PERMUTATIONS, alpha: float = 0.05, seed: int = 0,
                             n_boot: int = 1000, log: Callable[[str], None] | None = None) -> dict:
    """:func:`beyond_covariate` for a classifier that saw no training name (zero-shot).

    ``predictions`` (test rows, in row order) are name indices into ``classes``. Nothing was
    trained, so there is nothing to refit: each null run shuffles the TEST names across test
    identities within their covariate value (an identity's value is the majority over its
    images) and scores the fixed predictions against them. That is the exact within-stratum
    null of a fixed classifier: the covariate-name association and the people per name within
    each value stay, only which person of a value carries which name goes. Same output as
    :func:`beyond_covariate`.
    """
    if int(n_permutations) < 1:
        raise ProbeConfigError(f"n_permutations must be >= 1 (99 lets p reach 0.01), got {n_permutations}")
    r = _rows(names, covariate, groups, subset, classes)
    say = log or _log.info
    from probes.metrics import balanced_accuracy

    test = r.subset == TEST
    pred = np.asarray(predictions, dtype=np.int64)
    if pred.shape != (int(test.sum()),):
        raise ProbeConfigError(f"predictions must hold one name index per test row ({int(test.sum())}), got {pred.shape}")
    t0 = time.perf_counter()
    y_test = r.y[test]
    observed = balanced_accuracy(y_test, pred)
    boot = stats.bootstrap_metrics(y_test, pred, n_classes=r.classes.size,
                                   groups=r.codes[test] if groups is not None else None, n_boot=n_boot, alpha=alpha,
                                   seed=seed)
    strata = _identity_values(r)[r.codes][test]
    test_groups = r.codes[test]
    rng = np.random.default_rng(seed)
    null = np.empty(int(n_permutations))
    for i in range(int(n_permutations)):
        # The name indices are shuffled directly (the same draws as shuffling the names).
        shuffled = shuffle_names_within_strata(y_test, groups=test_groups, strata=strata, rng=rng)
        null[i] = balanced_accuracy(shuffled, pred)
    p = stats.permutation_p_value(observed, null)
    out = _null_record(observed, null, p, ci=boot["ci"]["balanced_accuracy"],
                       p_chance=boot["p_value"]["balanced_accuracy"], chance=1.0 / r.classes.size, alpha=alpha,
                       planned=int(n_permutations), stopped=False, stop_after=None,
                       null_method="test names shuffled across test identities within each covariate value over "
                                   "the fixed predictions (nothing was trained)",
                       n_strata=int(np.unique(strata).size), seed=seed, t0=t0)
    say(f"beyond covariate (fixed predictions): p = {p:.4f} (null mean {out['null_mean']:.4f}), {out['seconds']:.1f} s")
    return out


# --------------------------------------------------------------------------- within-value tasks
@dataclass(frozen=True, eq=False)
class WithinGroup:
    """The names task inside one covariate value: its names and the rows (indices into the
    arrays given to :func:`within_groups`) of images with that value and one of those names."""

    value: str
    names: tuple[str, ...]
    rows: np.ndarray
    n_identities: int
    n_images: dict

    def to_dict(self) -> dict:
        return {"value": self.value, "names": list(self.names), "n_names": len(self.names),
                "n_identities": self.n_identities, "n_images": dict(self.n_images)}


@dataclass(frozen=True, eq=False)
class WithinSplit:
    """Every covariate value's task (``groups``) and the values skipped, each with its reason."""

    groups: tuple[WithinGroup, ...]
    skipped: tuple[dict, ...]
    name_values: dict
    min_names: int
    min_identities: int

    def to_dict(self) -> dict:
        return {"groups": [g.to_dict() for g in self.groups], "skipped": list(self.skipped),
                "min_names": self.min_names, "min_identities": self.min_identities,
                "name_values": dict(self.name_values),
                "rule": "a value's task: the names whose majority training value it is, on the images labelled with it"}


def within_groups(names, *, covariate, subset, groups=None, min_names: int = DEFAULT_MIN_NAMES,
                  min_identities: int = DEFAULT_MIN_IDENTITIES) -> WithinSplit:
    """Split a names task by covariate value.

    The task of value v: the names whose value (:func:`name_covariate_values`) is v, restricted
    to the images labelled v. A value is skipped, with its reason, when it has fewer than
    ``min_names`` names (default 2) with training rows, fewer than ``min_identities``
    identities (default 4), or no identity in one of train / validation / test; the runner
    then runs a whole probe experiment on each kept group's rows.
    """
    if min_names < 2:
        raise ProbeConfigError(f"min_names must be >= 2 (a one-name task has nothing to predict), got {min_names}")
    r = _rows(names, covariate, groups, subset)
    used = r.subset >= 0
    name_value = name_covariate_values(r.names[used], r.values[used], subset=r.subset[used])
    kept, skipped = [], []
    for v in np.unique(r.values[used]).tolist():
        own = sorted(n for n, nv in name_value.items() if nv == v)
        rows = np.flatnonzero(used & (r.values == v) & np.isin(r.names, own))
        in_train = sorted(set(r.names[rows[r.subset[rows] == TRAIN]].tolist()))
        ids = int(np.unique(r.codes[rows]).size)
        parts = (("train", TRAIN), ("val", VAL), ("test", TEST))
        counts = {s: int(np.sum(r.subset[rows] == c)) for s, c in parts}
        ids_per = {s: int(np.unique(r.codes[rows[r.subset[rows] == c]]).size) for s, c in parts}
        reasons = []
        if len(in_train) < min_names:
            reasons.append(f"{len(in_train)} name(s) with training images (at least {min_names} needed)")
        if ids < min_identities:
            reasons.append(f"{ids} identities (at least {min_identities} needed)")
        empty = [s for s, k in ids_per.items() if k == 0]
        if empty:
            reasons.append(f"no identity in {' / '.join(empty)}")
        if reasons:
            skipped.append({"value": v, "reason": "; ".join(reasons), "names": own, "n_identities": ids})
            continue
        # Names of v with no training image of value v cannot be learned; they leave the task.
        kept.append(WithinGroup(value=v, names=tuple(in_train), rows=rows[np.isin(r.names[rows], in_train)],
                                n_identities=ids, n_images=counts))
    return WithinSplit(groups=tuple(kept), skipped=tuple(skipped), name_values=name_value,
                       min_names=int(min_names), min_identities=int(min_identities))


def within_group_scores(factory, *, X, names, covariate, subset, groups=None, min_names: int = DEFAULT_MIN_NAMES,
                        min_identities: int = DEFAULT_MIN_IDENTITIES, n_boot: int = 1000, alpha: float = 0.05,
                        seed: int = 0) -> dict:
    """:func:`within_groups`, then one probe per value through ``factory``: test balanced accuracy
    with CI, its own chance levels and p-value (the :func:`probes.stats.bootstrap_metrics` block).
    The notebook's counterpart of running a probe command once per value."""
    from probes.metrics import accuracy, balanced_accuracy, chance_levels

    names_arr = np.asarray(names).astype(str)
    X = _as_X(X, names_arr.size)
    sub = np.asarray(subset)
    split = within_groups(names_arr, covariate=covariate, subset=sub, groups=groups, min_names=min_names,
                          min_identities=min_identities)
    grp = None if groups is None else np.asarray(groups)
    values = {}
    for g in split.groups:
        t0 = time.perf_counter()
        rows = g.rows
        classes = np.asarray(g.names)
        idx = {c: i for i, c in enumerate(g.names)}
        y = np.array([idx[s] for s in names_arr[rows].tolist()], dtype=np.int64)
        pred = _fit_predict(factory, classes, X[rows], names_arr[rows], sub[rows])
        te = sub[rows] == TEST
        fit = np.isin(sub[rows], (TRAIN, VAL))
        boot = stats.bootstrap_metrics(y[te], pred, n_classes=classes.size,
                                       groups=None if grp is None else grp[rows][te], train_labels=y[fit],
                                       n_boot=n_boot, alpha=alpha, seed=seed)
        p = boot["p_value"]["balanced_accuracy"]
        values[g.value] = {
            **g.to_dict(),
            "balanced_accuracy": balanced_accuracy(y[te], pred),
            "accuracy": accuracy(y[te], pred),
            "ci": boot["ci"],
            "chance": chance_levels(y[te], train_labels=y[fit], n_classes=classes.size),
            "p_value": p,
            "significant": bool(p < alpha),
            "ci_method": boot["method"],
            "seconds": time.perf_counter() - t0,
        }
    return {"values": values, "skipped": list(split.skipped), "min_names": split.min_names,
            "min_identities": split.min_identities}


# --------------------------------------------------------------------------- forced-choice foils
def same_covariate_foils(y_true, *, name_values, n_way: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, n_way - 1)`` distinct foil name indices per trial, each with the SAME covariate
    value as the true name (Zwebner et al. 2017's same-gender foils), never the true name;
    drawn uniformly without replacement among the true name's same-value names.

    ``name_values`` (C,) is the value of each name index (e.g. from
    :func:`name_covariate_values`, in the task's name order). The output has the shape of
    :func:`probes.forced_choice.sample_foils`, so it drops into :func:`~probes.forced_choice.choice_outcomes`.
    """
    y = np.asarray(y_true, dtype=np.int64)
    nv = np.asarray(name_values).astype(str)
    if nv.ndim != 1 or nv.size < 2:
        raise ProbeConfigError(f"name_values must be one value per name (C,), C >= 2; got shape {nv.shape}")
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= nv.size)):
        raise ProbeConfigError(f"y_true must be 1-D name indices in 0..{nv.size - 1}")
    if n_way < 2:
        raise ProbeConfigError(f"n_way must be >= 2, got {n_way}")
    k = n_way - 1
    values, inverse, per_value = np.unique(nv, return_inverse=True, return_counts=True)
    short = {str(values[i]): int(per_value[i]) for i in np.unique(inverse[y]) if per_value[i] - 1 < k}
    if short:
        detail = ", ".join(f"{v!r} has {c} name(s)" for v, c in sorted(short.items()))
        raise ProbeConfigError(
            f"same-covariate {n_way}-way foils need at least {n_way} names per value of the test names; {detail}. "
            f"Use a smaller n_way or uniform foils"
        )
    # Sort random keys, with other-value names and the true name pushed to the end: a uniform
    # draw without replacement inside the value, vectorised as in sample_foils.
    keys = rng.random((y.size, nv.size))
    keys[inverse[None, :] != inverse[y][:, None]] = np.inf
    keys[np.arange(y.size), y] = np.inf
    return np.argsort(keys, axis=1, kind="stable")[:, :k].astype(np.int64)


# --------------------------------------------------------------------------- all three at once
def covariate_controls(factory, *, X, names, covariate, subset, groups=None, classes=None,
                       n_permutations: int = DEFAULT_PERMUTATIONS, n_boot: int = 1000, alpha: float = 0.05,
                       seed: int = 0, observed: float | None = None,
                       log: Callable[[str], None] | None = None) -> dict:
    """``{"oracle", "from_face", "beyond"}`` for one covariate: the ``controls.{covariate}`` block."""
    kw = dict(subset=subset, groups=groups, classes=classes, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "oracle": oracle_baseline(names, covariate=covariate, **kw),
        "from_face": from_face(factory, X=X, names=names, covariate=covariate, **kw),
        "beyond": beyond_covariate(factory, X=X, names=names, covariate=covariate, n_permutations=n_permutations,
                                   observed=observed, log=log, **kw),
    }

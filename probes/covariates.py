"""Store covariates wired into the probe runners: ``--control``, ``--within`` and same-covariate foils.

:mod:`probes.controls` holds the statistics on aligned arrays; this module connects them to a
store and a split:

- :func:`covariate_values` reads one covariate for some store rows as categories, with a clear
  error for a covariate the store lacks (listing the store's covariates and the two commands
  that add one) or one that is not categorical.
- :func:`run_controls` runs :func:`probes.controls.covariate_controls` for every ``--control``
  covariate of one experiment, given the family's probe factory, and returns the
  ``controls`` block of ``summary.json``.
- :func:`within_tasks` splits a names task by a covariate's values for ``--within``: one
  :class:`~probes.names.NameTask` per value (its ``within`` filter is applied by
  :func:`probes.data.load_xy`) and the values skipped with their reasons; :func:`run_within`
  runs a family's runner on each.
- :func:`foil_name_values` gives each task name its covariate value for same-covariate foils.

**Missing values.** An image whose covariate is missing (``""`` in a string covariate, NaN in a
numeric one) reads as ``"(missing)"``; the lexicon's ``"unknown"`` (a name it cannot place)
stays ``"unknown"``. Both are **kept as a value of their own** by the controls: the
within-stratum null shuffles names among the identities of each value, which stays a valid null
for any partition of the identities, and keeping the rows leaves the test set the control
qualifies equal to the headline result's (dropping them would also drop whole names, since the
lexicon's value is per name). Their counts are recorded (``controls.{cov}.missing``). A
within-value task is never made of them: ``--within`` skips those values with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from probes.errors import CovariateError

__all__ = [
    "MISSING_LABEL",
    "ProtocolOptions",
    "UNPLACED_VALUES",
    "WithinPlan",
    "control_permutations",
    "covariate_fingerprint",
    "covariate_values",
    "foil_name_values",
    "run_controls",
    "run_within",
    "within_experiment",
    "within_tasks",
]

MISSING_LABEL = "(missing)"
# Values that say the covariate does not place an image: kept as their own stratum by the
# controls, never made into a within-value task.
UNPLACED_VALUES = (MISSING_LABEL, "unknown")
DEFAULT_CONTROL_PERMUTATIONS = 99  # p can reach 1/100 = 0.01
# The controls' lines (start, each permutation with its ETA, the stop) also go here while they
# run: the result's run.log is written only when the folder is complete, and 99 refits can take
# many times the experiment's own fit. The CLI prints this logger on stderr (probes.cli_common).
progress_log = logging.getLogger("probes.progress")


@dataclass(frozen=True, kw_only=True)
class ProtocolOptions:
    """The protocol fields every probe family's config shares (recorded in its config.json).

    ``forced_choice`` / ``null_repeats``: the forced-choice scores and their shuffled-name refits;
    ``foils``: its protocols (``same-COV`` is added for every control); ``controls``: covariates
    whose controls (:mod:`probes.controls`) go into summary.json, with ``control_permutations``
    within-stratum refits; ``allow_incomplete``: proceed on a model with rows still pending,
    recording it. Keyword-only, so each family's own fields keep their positions.
    """

    forced_choice: bool = False
    null_repeats: int = 0
    foils: tuple[str, ...] = ("uniform", "popularity")
    controls: tuple[str, ...] = ()
    control_permutations: int = DEFAULT_CONTROL_PERMUTATIONS
    allow_incomplete: bool = False


def control_permutations(permutations: int | None) -> int:
    """The rule for the within-stratum null's size: ``--permutations N`` when given with N >= 1,
    else 99 (so p can reach 0.01). ``--permutations 0`` turns off only the plain permutation null."""
    return int(permutations) if permutations is not None and int(permutations) >= 1 else DEFAULT_CONTROL_PERMUTATIONS


def _how_to_add(store) -> str:
    return (f"add one with `facestore covariates {store.path} --name-gender` (each name's gender from a lexicon) or "
            f"`facestore covariates {store.path} --from FILE.csv` (an image_id or path column, one column per "
            "covariate); manifest columns other than path, name, identity and image_id are covariates too")


def store_covariate(store, name: str) -> np.ndarray:
    """The raw per-image values of covariate ``name`` (index order), or a :class:`CovariateError`
    that lists the store's covariates and how to add one."""
    covs = store.index.covariates
    if name not in covs:
        have = ", ".join(sorted(covs)) or "none"
        raise CovariateError(f"the store {store.path} has no covariate {name!r} (it has: {have}); "
                             + _how_to_add(store))
    return np.asarray(covs[name])


def _categories(name: str, values: np.ndarray) -> np.ndarray:
    """Raw covariate values as category strings, missing ones as :data:`MISSING_LABEL`."""
    if values.dtype.kind in "iub":
        return values.astype(np.int64).astype(str)
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        if finite.size and not np.all(finite == np.round(finite)):
            raise CovariateError(
                f"covariate {name!r} holds non-integer numbers (e.g. {finite[~(finite == np.round(finite))][0]:g}); "
                "controls need categories: add a binned copy (e.g. an age band) with `facestore covariates STORE "
                "--from FILE.csv` and control for that")
        out = np.where(np.isfinite(values), np.nan_to_num(values).astype(np.int64).astype(str), MISSING_LABEL)
        return out.astype(str)
    out = np.asarray(values).astype(str)
    return np.where(out == "", MISSING_LABEL, out)


def covariate_values(store, name: str, rows) -> np.ndarray:
    """Covariate ``name`` of the store ``rows`` as categories (strings; see the module docstring)."""
    return _categories(name, store_covariate(store, name)[np.asarray(rows, dtype=np.int64)])


def covariate_fingerprint(store, name: str) -> dict:
    """A hash of the covariate's values and its attrs: what a result that used it depends on."""
    values = _categories(name, store_covariate(store, name))
    h = hashlib.sha256("\x00".join(values.tolist()).encode())
    try:
        attrs = store.covariate_attrs(name)
    except KeyError:
        attrs = {}
    attrs = {k: v for k, v in attrs.items() if k not in ("created", "complete")}
    return {"sha256": h.hexdigest(), "attrs": json.loads(json.dumps(attrs, default=str))}


def _missing_record(values: np.ndarray, subset: np.ndarray) -> dict:
    unplaced = np.isin(values, UNPLACED_VALUES)
    return {
        "policy": "kept as a value of its own (a stratum of the null, a value the oracle knows); see docs/probes.md",
        "labels": sorted(set(values[unplaced].tolist())),
        "n_images": int(unplaced.sum()),
        "n_test_images": int((unplaced & (subset == 2)).sum()),
    }


def run_controls(store, *, covariates: Sequence[str], factory, X, y, names: Sequence[str], rows, subset, groups,
                 observed: float, n_permutations: int, n_boot: int, seed: int, refits: str,
                 fixed_predictions=None, log: Callable[[str], None] | None = None) -> tuple[dict, float]:
    """``({covariate: {"oracle", "from_face", "beyond", ...}}, seconds)`` for one experiment.

    ``X`` (n, D), ``y`` (n,) label indices into ``names`` (the task's names), ``rows`` (n,) the
    store rows, ``subset`` (n,) their split codes (0 train, 1 validation, 2 test), ``groups``
    their identities or None; ``observed`` is the experiment's own test balanced accuracy (the
    fit is not repeated). ``factory`` is the family's probe factory (``classes -> estimator``),
    ``refits`` says in words what its null refits. ``fixed_predictions`` (test rows, name
    indices) is for a family that trains nothing (zero-shot): the predicted covariate is the
    predicted name's value and the null shuffles the TEST names within strata over the fixed
    predictions (:func:`probes.controls.beyond_fixed_predictions`).
    """
    from probes import controls

    def say(line: str) -> None:
        if log is not None:
            log(line)
        progress_log.info(line)

    classes = np.asarray(names)
    row_names = classes[np.asarray(y, dtype=np.int64)]
    subset = np.asarray(subset, dtype=np.int64)
    out, t0 = {}, time.perf_counter()
    for cov in covariates:
        values = covariate_values(store, cov, rows)
        used = values[subset >= 0]
        if np.unique(used).size < 2:
            raise CovariateError(f"covariate {cov!r} has a single value ({used[0]!r}) on this experiment's images: "
                                 "there is nothing to control for")
        t1 = time.perf_counter()
        say(f"control {cov}: {n_permutations} within-stratum permutations ({refits})")
        kw = dict(names=row_names, covariate=values, subset=subset, groups=groups, classes=classes, n_boot=n_boot,
                  seed=seed)
        if fixed_predictions is None:
            block = controls.covariate_controls(factory, X=X, n_permutations=n_permutations, observed=observed,
                                                log=say, **kw)
        else:
            pred = np.asarray(fixed_predictions, dtype=np.int64)
            name_value = controls.name_covariate_values(row_names, values, subset=subset)
            predicted_values = np.array([name_value.get(n, MISSING_LABEL) for n in classes[pred].tolist()])
            block = {"oracle": controls.oracle_baseline(row_names, **{k: v for k, v in kw.items() if k != "names"}),
                     "from_face": controls.from_face(None, X=X, predicted=predicted_values, **kw),
                     "beyond": controls.beyond_fixed_predictions(pred, n_permutations=n_permutations, log=say, **kw)}
        attrs = covariate_fingerprint(store, cov)["attrs"]
        vals, counts = np.unique(used, return_counts=True)
        block.update({
            "covariate": cov, "attrs": attrs, "values": dict(zip(vals.tolist(), counts.astype(int).tolist())),
            "missing": _missing_record(values, subset), "refits": refits, "n_permutations": int(n_permutations),
            "seconds": time.perf_counter() - t1,
        })
        b = block["beyond"]
        say(f"control {cov}: oracle {block['oracle']['balanced_accuracy']:.4f}, from the face "
            f"{block['from_face']['balanced_accuracy']:.4f} (covariate {block['from_face']['covariate']['balanced_accuracy']:.4f}), "
            f"probe {b['balanced_accuracy']:.4f} vs within-stratum null {b['null_mean']:.4f}, p {b['p_value']:.4g}; "
            f"{block['seconds']:.1f} s")
        out[cov] = block
    return out, time.perf_counter() - t0


def foil_name_values(store, covariate: str, *, names: Sequence[str], y, rows, subset) -> np.ndarray:
    """``(C,)`` the covariate value of each task name (majority over its training images, as
    :func:`probes.controls.name_covariate_values`); a name without images here gets a value of
    its own, so it is never a foil."""
    from probes import controls

    values = covariate_values(store, covariate, rows)
    row_names = np.asarray(names)[np.asarray(y, dtype=np.int64)]
    nv = controls.name_covariate_values(row_names, values, subset=np.asarray(subset))
    return np.array([nv.get(n, f"(no images of {n})") for n in names])


# --------------------------------------------------------------------------- within-value tasks
@dataclass(frozen=True)
class WithinPlan:
    """The within-value tasks of one names task on one split: ``tasks`` (value, NameTask) and
    ``skipped`` (``{"value", "reason", ...}``)."""

    covariate: str
    base: str
    tasks: tuple
    skipped: tuple

    def to_dict(self) -> dict:
        return {"covariate": self.covariate, "base": self.base,
                "values": [{"value": v, "names": list(t.names)} for v, t in self.tasks],
                "skipped": [dict(s) for s in self.skipped]}


def value_slug(value: str) -> str:
    """A folder-safe form of a covariate value."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("._") or "value"


def within_experiment(experiment: str, covariate: str, value: str) -> str:
    """``{experiment}_within-{covariate}-{value}``: the folder name of one value's task (``track3_`` added)."""
    return f"{experiment}_within-{value_slug(covariate)}-{value_slug(value)}"


def within_tasks(store, *, names, split, covariate: str, models: Sequence[str] = (), min_images: int = 0,
                 min_names: int | None = None, min_identities: int | None = None) -> WithinPlan:
    """One :class:`~probes.names.NameTask` per value of ``covariate`` for the names task ``names``
    on ``split`` (:func:`probes.controls.within_groups`' rules: a name belongs to the value of
    the majority of its training images; the task holds that value's names on the images labelled
    with it). Only rows every one of ``models`` has embedded count; values with too few names or
    identities, or unplaced values (missing, ``unknown``), are skipped with the reason."""
    from probes import controls
    from probes.data import _groups_for
    from probes.names import NameTask, resolve_names

    base = resolve_names(store, names, min_images=min_images)
    if base.within is not None:
        raise CovariateError(f"names task {base.spec!r} is already a within-value task")
    index = store.index
    name_pos = {n: i for i, n in enumerate(index.names)}
    in_task = np.zeros(len(index.names), bool)
    in_task[[name_pos[n] for n in base.names]] = True
    labels = np.asarray(index.labels, dtype=np.int64)
    rows = split.rows("all")
    rows = rows[in_task[labels[rows]]]
    for m in models:  # rows a model failed or has not written yet cannot be in its task
        rows = rows[store.status(m)[rows] == 1]
    values = covariate_values(store, covariate, rows)
    groups = _groups_for(store, split)
    row_names = np.asarray(index.names)[labels[rows]]
    kw = {}
    if min_names is not None:
        kw["min_names"] = min_names
    if min_identities is not None:
        kw["min_identities"] = min_identities
    ws = controls.within_groups(row_names, covariate=values, subset=split.assignment[rows].astype(np.int64),
                                groups=None if groups is None else np.asarray(groups)[rows], **kw)
    skipped = [dict(s) for s in ws.skipped]
    tasks = []
    for g in ws.groups:
        if g.value in UNPLACED_VALUES:
            skipped.append({"value": g.value, "reason": "the covariate does not place these images (missing or "
                            "unknown value): not a within-value task", "names": list(g.names),
                            "n_identities": g.n_identities})
            continue
        order = sorted(g.names, key=lambda n: name_pos[n])  # store order, as every names task
        in_value = values == g.value
        counts = tuple(int(np.sum(in_value & (row_names == n))) for n in order)
        tasks.append((g.value, NameTask(spec=f"{base.spec} within {covariate}={g.value}", names=tuple(order),
                                        counts=counts, min_images=base.min_images, within=(covariate, g.value),
                                        base=base.spec)))
    skipped.sort(key=lambda s: str(s["value"]))
    return WithinPlan(covariate=covariate, base=base.spec, tasks=tuple(tasks), skipped=tuple(skipped))


def config_models(config) -> tuple[str, ...]:
    """The store models a family config reads."""
    if getattr(config, "models", None):
        return tuple(config.models)
    return (config.model,)


def run_within(store, *, run, config, split, out, experiment: str, covariate: str, seed_group: str | None = None,
               suffix: str = "", echo: Callable[[str], None] | None = None) -> dict:
    """Run ``run`` (a family's ``run_*``) once per value of ``covariate`` on ``split``.

    Each value's folder is ``track3_{experiment}_within-{covariate}-{value}{suffix}`` (``suffix``
    e.g. ``-seed1``); controls are not repeated inside a value (they qualify the overall task).
    ``seed_group`` (with several seeds) is suffixed the same way as the folder, without
    ``suffix``. Returns ``{"covariate", "plan", "values": {value: summary}, "skipped"}``.
    """
    say = echo or (lambda line: None)
    plan = within_tasks(store, names=config.names, split=split, covariate=covariate, models=config_models(config),
                        min_images=getattr(config, "min_images", 0))
    for s in plan.skipped:
        say(f"within {covariate}={s['value']}: skipped: {s['reason']}")
    done = {}
    for value, task in plan.tasks:
        cfg = dataclasses.replace(config, names=task, **({"controls": ()} if hasattr(config, "controls") else {}))
        name = within_experiment(experiment, covariate, value) + suffix
        group = None if seed_group is None else within_experiment(seed_group, covariate, value)
        done[value] = run(store, config=cfg, split=split, out=out, experiment=name, seed_group=group)
    return {"covariate": covariate, "plan": plan.to_dict(), "values": done, "skipped": list(plan.skipped)}


# --------------------------------------------------------------------------- helpers for the family runners
class AdjustedDecision:
    """A probe whose ``predict_proba`` is the wrapped probe's *decision*: its logit-adjusted
    probabilities when it has them (``LinearSweep`` with ``balance="logit-adjust"``), else its
    probabilities. The controls' refits then decide exactly as the experiment's own fit did."""

    def __init__(self, estimator) -> None:
        self.estimator = estimator

    def fit(self, X, y, **kwargs) -> AdjustedDecision:
        self.estimator.fit(X, y, **kwargs)
        self.classes_ = getattr(self.estimator, "classes_", None)
        return self

    def predict_proba(self, X):
        adjusted = getattr(self.estimator, "predict_proba_adjusted", None)
        return adjusted(X) if adjusted is not None else self.estimator.predict_proba(X)


def stack_subsets(tr, va, te) -> dict:
    """Train, validation and test :class:`~probes.data.XY` as the aligned arrays of :func:`run_controls`."""
    groups = None if tr.groups is None else np.concatenate([tr.groups, va.groups, te.groups])
    return {"X": np.concatenate([tr.X, va.X, te.X]), "y": np.concatenate([tr.y, va.y, te.y]),
            "rows": np.concatenate([tr.rows, va.rows, te.rows]),
            "subset": np.repeat(np.array([0, 1, 2]), [len(tr), len(va), len(te)]), "groups": groups}


def incomplete_reasons(*xys) -> list[str]:
    """The distinct :attr:`~probes.data.XY.incomplete` reasons of the loaded subsets."""
    return list(dict.fromkeys(x.incomplete for x in xys if x.incomplete))


def foil_kinds(foils: Sequence[str], controls: Sequence[str]) -> tuple[str, ...]:
    """The forced-choice protocols: ``foils`` plus ``same-COV`` for every ``--control`` covariate."""
    return tuple(dict.fromkeys([*foils, *(f"same-{c}" for c in controls)]))


def foil_values(store, kinds: Sequence[str], *, names, y, rows, subset) -> dict | None:
    """``{covariate: (C,) values}`` for the ``same-COVARIATE`` kinds among ``kinds`` (None if none)."""
    from probes.forced_choice import SAME_PREFIX, is_same_covariate

    covs = [k[len(SAME_PREFIX):] for k in kinds if is_same_covariate(k)]
    if not covs:
        return None
    return {c: foil_name_values(store, c, names=names, y=y, rows=rows, subset=subset) for c in covs}


def check_controls(store, covariates: Sequence[str], foils: Sequence[str] = ()) -> None:
    """Fail before any fit when a ``--control`` or ``same-COV`` foil covariate is not in the store."""
    from probes.forced_choice import SAME_PREFIX, check_foil_kind, is_same_covariate

    for k in foils:
        check_foil_kind(k)
    for cov in [*covariates, *(k[len(SAME_PREFIX):] for k in foils if is_same_covariate(k))]:
        store_covariate(store, cov)

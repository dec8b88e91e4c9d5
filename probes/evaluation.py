"""The one evaluation every probe family ends with.

A probe family (linear, SupCon, zero-shot, ensemble, kNN, forced choice) produces test-set
scores once, on the locked test split, then calls :func:`finish_experiment`. It computes every
metric of :mod:`probes.metrics`, the confidence intervals and p-values of :mod:`probes.stats`,
the chance baselines, and writes the plan's result folder (:mod:`probes.results`), so that
``probes compare`` treats all families alike.

>>> summary = finish_experiment("results", experiment="dinov2_linear", scores=proba,  # doctest: +SKIP
...     y_true=xy_test.y, names=xy_test.names, image_ids=xy_test.image_ids,
...     groups=xy_test.groups, train_labels=xy_trainval.y, config={...},
...     split_info=split.info(), store_path=store.path, model_spec=store.model_spec(model),
...     timings={"fit_s": 3.2})
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from probes import metrics as M
from probes import stats as S
from probes.results import result_dir, write_result

__all__ = ["SIGNIFICANCE_LEVEL", "config_record", "finish_experiment", "run_evaluation"]

# One-sided level of the per-experiment test against the no-information baseline: p < 0.025 is
# the same statement as "the 95% BCa CI excludes the baseline". Reports correct for multiplicity
# on top (probes.compare).
SIGNIFICANCE_LEVEL = 0.025


def config_record(config) -> dict:
    """A family config as config.json holds it: nested configs as dicts, tuples as lists, a
    resolved :class:`~probes.names.NameTask` as its JSON-able description."""
    import dataclasses

    from probes.names import NameTask

    def conv(v):
        if isinstance(v, NameTask):
            return v.info()
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return conv(config)


def run_evaluation(
    scores,
    y_true,
    *,
    names: Sequence[str],
    groups=None,
    train_labels,
    n_boot: int = 1000,
    seed: int = 0,
    predictions=None,
    probabilities=None,
) -> dict:
    """Every metric of one test set, without writing anything.

    ``scores`` (n, C) are probabilities or logits over ``names`` (columns in ``names`` order);
    ``predictions`` defaults to their argmax (pass it when a family decides otherwise, e.g.
    forced choice). ``probabilities`` (n, C), when given, are the model's calibrated
    probabilities, used for the calibration metrics (NLL, ECE, Brier) and nothing else (a
    logit-adjusted probe decides on adjusted ``scores`` but its probabilities are the
    unadjusted ones); by default ``scores`` are used when every row is non-negative and sums to
    1, else ``softmax(scores)``; ``calibration["source"]`` records which. Returns ``{"metrics",
    "ci", "ci_method", "chance", "p_value", "significant", "calibration", "plan", "per_class",
    "predictions", "top5"}``: ``plan`` is the plan's ``evaluate_model`` output without its
    per-class report, which is returned as ``per_class`` rows (precision, recall, f1-score,
    support per name) for ``results.csv``.
    """
    names = [str(n) for n in names]
    n_classes = len(names)
    y_true = np.asarray(y_true, dtype=np.int64)
    top5 = None
    if scores is not None:
        scores = np.asarray(scores)
        if scores.shape != (y_true.size, n_classes):
            raise ValueError(
                f"scores must have shape (n_test, n_names) = ({y_true.size}, {n_classes}), got {scores.shape}"
            )
        top5 = M.top_k_indices(scores, k=5)
        if predictions is None:
            predictions = top5[:, 0]
    if predictions is None:
        raise ValueError("give scores (n_test, n_names) or predictions (n_test,)")
    predictions = np.asarray(predictions, dtype=np.int64)
    if groups is not None and len(np.unique(np.asarray(groups))) < 2:
        raise ValueError("the test set holds a single identity: no confidence interval is possible")
    train_labels = np.asarray(train_labels, dtype=np.int64)

    metrics = M.headline_metrics(y_true, predictions, n_classes=n_classes, top5=top5)
    metrics["label_cv"] = M.label_cv(y_true, n_classes=n_classes)
    calibration = _calibration(y_true, scores, probabilities, n_classes)
    plan = M.evaluate_model(predictions, y_true, names)
    chance = M.chance_levels(y_true, train_labels=train_labels, n_classes=n_classes)
    boot = S.bootstrap_metrics(
        y_true,
        predictions,
        n_classes=n_classes,
        groups=groups,
        top5=top5,
        train_labels=train_labels,
        n_boot=n_boot,
        seed=seed,
    )
    report = plan.pop("per_class_report")
    per_class = [
        {
            "name": n,
            "precision": report[n]["precision"],
            "recall": report[n]["recall"],
            "f1-score": report[n]["f1-score"],
            "support": int(report[n]["support"]),
        }
        for n in names
    ]
    plan["macro_avg"] = report["macro avg"]
    plan["weighted_avg"] = report["weighted avg"]
    metrics["n_test_identities"] = int(np.unique(np.asarray(groups)).size) if groups is not None else None
    return {
        "metrics": metrics,
        "ci": boot["ci"],
        "ci_method": {k: boot[k] for k in ("method", "interval", "balanced_accuracy_resampling", "n_boot", "n_clusters", "alpha",
                                            "reliable", "reliability", "identities_per_name", "bca", "ci_flags")},
        "chance": chance,
        "p_value": boot["p_value"],
        "baseline": boot["baseline"],
        "significant": bool(boot["p_value"]["balanced_accuracy"] < SIGNIFICANCE_LEVEL),
        "calibration": calibration,
        "plan": plan,
        "per_class": per_class,
        "predictions": predictions,
        "top5": top5,
    }


def _calibration(y_true, scores, probabilities, n_classes: int) -> dict:
    """NLL / ECE / Brier of the probabilities (see :func:`run_evaluation`), or why there are none."""
    if probabilities is not None:
        P = np.asarray(probabilities, dtype=np.float64)
        if P.shape != (y_true.size, n_classes):
            raise ValueError(
                f"probabilities must have shape (n_test, n_names) = ({y_true.size}, {n_classes}), got {P.shape}"
            )
        if np.any(P < 0) or not np.allclose(P.sum(axis=1), 1.0, atol=1e-4, rtol=0):
            raise ValueError("probabilities must be non-negative with rows summing to 1 (pass logits as scores)")
        return M.calibration_metrics(y_true, P, source="probabilities")
    if scores is None:
        return {"nll": None, "ece": None, "ece_bins": M.ECE_BINS, "brier": None,
                "source": "none: the family gave predictions without scores"}
    P, source = M.as_probabilities(scores)
    return M.calibration_metrics(y_true, P, source=source)


def finish_experiment(
    out_dir: str | Path,
    *,
    experiment: str,
    scores,
    y_true,
    names: Sequence[str],
    image_ids,
    groups,
    train_labels,
    config: dict,
    split_info: dict,
    store_path: str | Path,
    model_spec: dict | None,
    timings: dict,
    name_task=None,
    embeddings=None,
    n_boot: int = 1000,
    seed: int = 0,
    permutation: dict | None = None,
    predictions=None,
    save_probabilities: bool = False,
    warnings: Sequence[str] = (),
    extra: dict | None = None,
    log: Sequence[str] = (),
    probabilities=None,
    control: dict | None = None,
    controls: dict | None = None,
    incomplete: Sequence[str] = (),
) -> dict:
    """Evaluate test-set scores once and write ``out_dir/track3_{experiment}/``; return the summary.

    Call this exactly once per experiment, after every selection was made on train/validation
    only and the chosen model was refit on train+validation.

    Args:
        out_dir: the results directory; the folder ``track3_{experiment}`` is made inside it.
        experiment: the experiment's name (a plain folder name).
        scores: (n_test, C) probabilities or logits, columns in ``names`` order; None when the
            family only has ``predictions``.
        y_true: (n_test,) true name indices into ``names``.
        names: the task's C names.
        image_ids: (n_test,) store image ids of the test rows.
        groups: (n_test,) identities of the test rows, or None (no identities: intervals fall
            back to an image bootstrap and Wilson, and a leakage warning should be in
            ``split_info["warnings"]``).
        train_labels: name indices of the rows the final model was fit on (train+val); they
            define the majority and prior-matched baselines.
        config: the model and training config (``config.json``); probe parameters go here.
        split_info: the split's name, content hash, kind, seed and warnings
            (:meth:`probes.splits.Split.info`).
        store_path, model_spec: where the embeddings came from (``store.model_spec(model)``).
        timings: seconds per phase, e.g. ``{"load_s", "fit_s", "predict_s"}``.
        name_task: the task's spec (``all``, ``top30``, a file) or its resolved
            :class:`~probes.names.NameTask` (a within-value task records its covariate and value);
            defaults to ``config["names"]``.
        embeddings: (n_test, D) to save as ``embeddings.npy`` (``--save-embeddings``).
        n_boot, seed: bootstrap replicates and seed of the confidence intervals.
        permutation: ``{"null": array of the metric under names shuffled across identities,
            "metric": "balanced_accuracy"}`` from a whole-fit permutation null, or None.
        predictions: override the argmax of ``scores`` (forced choice).
        save_probabilities: also write ``probabilities.npy`` (softmax of logits is the
            caller's business: the scores are written as given).
        warnings: extra warnings to record (merged with ``split_info["warnings"]``).
        extra: family-specific results stored under ``summary["extra"]``.
        log: lines for ``run.log``.
        probabilities: (n_test, C) calibrated probabilities for the calibration metrics only
            (see :func:`run_evaluation`); default ``scores`` or ``softmax(scores)``.
        control: marks the result as a control, ``{"kind": "shuffled-name null", "description":
            ...}``: ``probes compare`` lists it under Controls, never ranks it.
        controls: the covariate controls of the result, ``{covariate: {"oracle", "from_face",
            "beyond", ...}}`` (:func:`probes.covariates.run_controls`); summary.json ``controls``.
        incomplete: why the model's rows were not all usable when the family was run with
            ``allow_incomplete`` (:attr:`probes.data.XY.incomplete`); recorded in summary.json
            ``incomplete`` and as a warning.

    Returns:
        The summary dict written to ``summary.json`` plus ``"path"``.
    """
    names = [str(n) for n in names]
    ev = run_evaluation(
        scores,
        y_true,
        names=names,
        groups=groups,
        train_labels=train_labels,
        n_boot=n_boot,
        seed=seed,
        predictions=predictions,
        probabilities=probabilities,
    )
    incomplete = list(dict.fromkeys(str(r) for r in incomplete if r))
    all_warnings = list(split_info.get("warnings", [])) + [str(w) for w in warnings] + [
        f"incomplete data used knowingly (--allow-incomplete): {r}" for r in incomplete]
    if groups is None and not any("identity" in w for w in all_warnings):
        all_warnings.append(
            "no identities for the test images: intervals are over images and identity "
            "leakage between train and test cannot be ruled out"
        )
    perm_summary = None
    if permutation is not None:
        metric = permutation.get("metric", "balanced_accuracy")
        null = np.asarray(permutation["null"], dtype=float)
        observed = ev["metrics"][metric]
        perm_summary = {
            "metric": metric,
            "n": int(null.size),
            "observed": observed,
            "null_mean": float(null.mean()),
            "null_std": float(null.std()),
            "null_max": float(null.max()),
            "null": null.tolist(),
            "p_value": S.permutation_p_value(observed, null),
            "scheme": "names shuffled across identities (people per name kept), whole fit repeated",
        }
    from probes.names import NameTask

    task_info = {"spec": str(config.get("names", "all")) if name_task is None else str(name_task)}
    if isinstance(name_task, NameTask):
        task_info = {k: v for k, v in name_task.info().items() if k in ("spec", "within", "base")}
    summary = {
        "experiment": experiment,
        "family": config.get("family"),
        "model": config.get("model"),
        "view": config.get("view"),
        "name_task": {**task_info, "n_names": len(names)},
        "headline": "balanced_accuracy",
        "metrics": ev["metrics"],
        "ci": ev["ci"],
        "ci_method": ev["ci_method"],
        "chance": ev["chance"],
        "p_value": ev["p_value"],
        "baseline": ev["baseline"],
        "significant": ev["significant"],
        "significance_level": SIGNIFICANCE_LEVEL,
        "significance": ("one-sided p < 0.025 against `baseline` (the same as the 95% BCa CI excluding it), "
                         "before any multiplicity correction"),
        "calibration": ev["calibration"],
        "permutation": perm_summary,
        "plan": ev["plan"],
        "split": dict(split_info),
        "store_path": str(store_path),
        "model_spec": model_spec,
        "probe": config.get("probe", {}),
        "timings": dict(timings),
        "warnings": all_warnings,
        "extra": extra or {},
        "control": dict(control) if control else None,
        "controls": dict(controls) if controls else {},
        "incomplete": incomplete,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
    }
    path = result_dir(out_dir, experiment)
    lines = list(log) + [
        f"experiment {experiment}: n_test={ev['metrics']['n_test']} names={len(names)}",
        f"balanced_accuracy={ev['metrics']['balanced_accuracy']:.4f} "
        f"CI={ev['ci']['balanced_accuracy']} chance={ev['chance']['uniform']:.4f} "
        f"p={ev['p_value']['balanced_accuracy']:.4g}",
        f"accuracy={ev['metrics']['accuracy']:.4f} majority={ev['chance']['majority']:.4f} "
        f"prior_matched={ev['chance']['prior_matched']:.4f}",
    ] + [f"WARNING {w}" for w in all_warnings]
    write_result(
        path,
        config=config,
        predictions=ev["predictions"],
        true_labels=y_true,
        names=names,
        image_ids=image_ids,
        summary=summary,
        per_class=ev["per_class"],
        top5=ev["top5"],
        groups=groups,
        proba=scores if save_probabilities else None,
        embeddings=embeddings,
        log=lines,
    )
    return {**summary, "path": str(path)}

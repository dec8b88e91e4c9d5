"""``probes compare``: one report over every result folder (the plan's ``track3_comparison.md``).

Data first: :func:`compare_results` reads every result folder (refusing, with a listed reason,
any whose files disagree with its manifest), builds one row per folder, sets the controls
apart, runs the tests the report states (above-baseline tests corrected for multiplicity,
paired comparisons against a pre-declared reference, rankings on the images every model
embedded), and writes all of it as ``comparison.json`` / ``comparison.csv``. The markdown
(:mod:`probes.compare_markdown`) and the plots (:mod:`probes.plots`) only render that data, so
a sentence of the report can never disagree with a number of it.

Reporting rules (docs/probes.md, "Reporting rules"):

- Only rows of identity (or pseudo-identity) disjoint splits that are not controls are
  *ranked*: counted for "best", for the plan's targets and for "which embeddings". Image-level
  splits, shuffled-name nulls, permutation nulls and leak audits are listed under
  ``controls``.
- Every "above its baseline" flag uses a multiplicity-adjusted one-sided p-value (Holm by
  default, Benjamini-Hochberg with ``correction="bh"``) below 0.025, the level of the 95%
  CIs shown beside it. Raw and adjusted p are both in the data.
- Paired comparisons are made only against the reference (``reference``; default the plan's
  CLIP ViT-B-32 linear baseline ``clip_linear`` when present), only on the test images both
  scored on the same split, and are corrected the same way. A comparison that could not be
  made is recorded with its reason, never dropped.
- "Best" is chosen on the mean over seeds, or, where experiments ran once, on their
  validation score; never on the largest single test score.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
from pathlib import Path

import numpy as np

from probes.errors import ProbeConfigError, ResultFormatError, ResultsNotFoundError
from probes.results import find_results, read_result
from probes.stats import CORRECTIONS, adjust_p_values, combine_paired, paired_bootstrap

__all__ = ["CONTROL_SECTIONS", "DEFAULT_REFERENCE", "PLAN_TARGETS", "SCHEMA", "compare_results"]

SCHEMA = {"name": "probes.comparison", "version": 2}
# The plan's "Success Criteria": CLIP ViT-B-32 linear probe baselines and targets. Top-1 and
# prediction-CV targets are judged only on tasks with the plan's number of names.
PLAN_TARGETS = (
    {"metric": "Accuracy (30 names)", "key": "accuracy", "task": "30", "baseline": 0.139, "target": 0.15, "better": "higher"},
    {"metric": "Accuracy (500 names)", "key": "accuracy", "task": "500", "baseline": 0.03, "target": 0.04, "better": "higher"},
    {"metric": "Prediction CV (30 names)", "key": "prediction_cv", "task": "30", "baseline": 0.40, "target": 0.35, "better": "lower"},
    {"metric": "Prediction CV (500 names)", "key": "prediction_cv", "task": "500", "baseline": 0.40, "target": 0.35, "better": "lower"},
)
DEFAULT_REFERENCE = "clip_linear"  # the plan's baseline, re-measured under this protocol
ONE_SIDED_ALPHA = 0.025  # the level of the 95% CIs: above-baseline and permutation tests
# The beyond-covariate test's level, as probes.controls states it in summary.json (p < 0.05): a
# one-sided permutation test with no CI beside it; the report corrects it for multiplicity.
BEYOND_ALPHA = 0.05
TWO_SIDED_ALPHA = 0.05  # paired comparisons
MIN_COMMON_IMAGES = 10
MIN_NAMES_F1_PLOT = 10
TOPK = 5


# --------------------------------------------------------------------------- rows


def _split_kind(split: dict) -> str:
    src = split.get("identity_source")
    if src is None:
        return "image"
    return "identity" if src == "identity" else "pseudo-identity"


def _control_kind(summary: dict, split_kind: str) -> str | None:
    declared = summary.get("control")
    if isinstance(declared, dict) and declared.get("kind"):
        return str(declared["kind"])
    if summary.get("family") == "audit":
        return "leak audit"
    if split_kind == "image":
        return "image-level split"
    return None


def _plan_experiment(res) -> str | None:
    """The Track 3 experiment a folder belongs to (``probes track3`` writes fingerprint.json)."""
    fp = res.path / "fingerprint.json"
    if fp.is_file():
        try:
            return json.loads(fp.read_text()).get("experiment")
        except (json.JSONDecodeError, AttributeError):
            return None
    return None


def _validation_score(summary: dict, config: dict) -> float | None:
    """The balanced accuracy the family selected on, on validation, when it recorded one."""
    sel = summary.get("selection")
    if isinstance(sel, dict) and sel.get("metric") == "balanced_accuracy" and sel.get("validation_score") is not None:
        return float(sel["validation_score"])
    probe = summary.get("probe") or {}
    if (config or {}).get("scoring", "balanced_accuracy") == "balanced_accuracy":
        for key in ("best_val_score", "linear_best_val_score"):
            if isinstance(probe.get(key), (int, float)):
                return float(probe[key])
    return None


def _forced_choice(summary: dict) -> dict | None:
    """The 2-way popularity-matched forced choice (Zwebner's design with frequency-matched foils)."""
    fc = [e for e in (summary.get("extra") or {}).get("forced_choice") or [] if "raw" in e]  # not skipped protocols
    pick = [e for e in fc if e.get("n_way") == 2 and e.get("foils") == "popularity"] or \
        [e for e in fc if e.get("n_way") == 2]
    if not pick:
        return None
    e = pick[0]
    pc, raw, prior = e["prior_corrected"], e["raw"], e["prior_only"]
    null = e.get("null") or {}
    return {
        "n_way": e["n_way"], "foils": e["foils"], "chance": e["chance"], "n_trials": e.get("n_trials"),
        "prior_corrected": pc["accuracy"], "prior_corrected_lo": pc["ci_low"], "prior_corrected_hi": pc["ci_high"],
        "raw": raw["accuracy"], "prior_only": prior["accuracy"],
        "ci_above_chance": bool(pc["ci_low"] > e["chance"]),
        "null_mean": null.get("mean"), "null_p": null.get("p_value"), "null_repeats": null.get("repeats"),
    }


def _controls(summary: dict, experiment: str, task_key: str) -> list[dict]:
    """One entry per ``--control`` covariate of a result: the numbers the report shows of it."""
    out = []
    for cov, c in (summary.get("controls") or {}).items():
        o, f, b = c.get("oracle") or {}, c.get("from_face") or {}, c.get("beyond") or {}
        n = b.get("n_permutations")
        # A sequential (Besag-Clifford) run may stop before the planned N: the floor is N's.
        planned = b.get("n_permutations_planned", n)
        out.append({
            "experiment": experiment, "task_key": task_key, "covariate": cov,
            "balanced_accuracy": b.get("balanced_accuracy"),
            "oracle_balanced_accuracy": o.get("balanced_accuracy"),
            "oracle_lo": (o.get("balanced_accuracy_ci") or [None, None])[0],
            "oracle_hi": (o.get("balanced_accuracy_ci") or [None, None])[1],
            "oracle_accuracy": o.get("accuracy"),
            "from_face_balanced_accuracy": f.get("balanced_accuracy"),
            "from_face_lo": (f.get("balanced_accuracy_ci") or [None, None])[0],
            "from_face_hi": (f.get("balanced_accuracy_ci") or [None, None])[1],
            "covariate_from_face": (f.get("covariate") or {}).get("balanced_accuracy"),
            "covariate_chance": (f.get("covariate") or {}).get("chance"),
            "chance_uniform": b.get("chance"),
            "beyond_null_mean": b.get("null_mean"),
            "beyond_null_lo": (b.get("null_ci") or [None, None])[0],
            "beyond_null_hi": (b.get("null_ci") or [None, None])[1],
            "beyond_p": b.get("p_value"),
            "n_permutations": n,
            "n_permutations_planned": planned,
            "stopped_early": bool(b.get("stopped_early", False)),
            "min_attainable_p": None if not planned else 1.0 / (planned + 1),
            "refits": c.get("refits"),
            "missing_images": (c.get("missing") or {}).get("n_images"),
            "seconds": c.get("seconds"),
        })
    return out


def _row(res) -> dict:
    s = res.summary
    m, ci, ch = s["metrics"], s["ci"], s["chance"]
    base, pv = s.get("baseline") or {}, s["p_value"]
    cal = s.get("calibration") or {}
    split = s.get("split") or {}
    kind = _split_kind(split)
    cm = s.get("ci_method") or {}
    perm = s.get("permutation") or {}
    n_names = int(s["name_task"]["n_names"])
    flags = cm.get("ci_flags") or {}

    def interval(metric):  # an interval that failed the bias check is not shown
        v = ci.get(metric)
        return [None, None] if v is None or metric in flags else v

    show_top5 = TOPK < n_names / 2 and m.get("top5_accuracy") is not None
    warnings = [str(w) for w in s.get("warnings", [])]
    leakage = None
    if kind == "image":
        leakage = ("image-level split: the same person can be in train and test, so the score can be inflated "
                   "by identity leakage")
    task_key = f"{s['name_task']['spec']} ({n_names} names)"
    within = (s.get("name_task") or {}).get("within")
    return {
        "experiment": res.experiment,
        "plan_experiment": _plan_experiment(res),
        "family": s.get("family"),
        "model": s.get("model"),
        "view": s.get("view"),
        "task": s["name_task"]["spec"],
        "n_names": n_names,
        "task_key": task_key,
        "within": within,
        "base_task": (s.get("name_task") or {}).get("base"),
        "n_test": int(m["n_test"]),
        "n_test_identities": m.get("n_test_identities"),
        "n_classes_in_test": m.get("n_classes_in_test"),
        "balanced_accuracy": m["balanced_accuracy"],
        "ba_lo": ci["balanced_accuracy"][0],
        "ba_hi": ci["balanced_accuracy"][1],
        "baseline_balanced": base.get("balanced_accuracy"),
        "chance_uniform": ch["uniform"],
        "p_balanced": pv["balanced_accuracy"],
        "accuracy": m["accuracy"],
        "acc_lo": ci["accuracy"][0],
        "acc_hi": ci["accuracy"][1],
        "baseline_top1": base.get("accuracy"),
        "majority": ch["majority"],
        "prior_matched": ch["prior_matched"],
        "p_top1": pv.get("accuracy"),
        "top5_accuracy": m.get("top5_accuracy") if show_top5 else None,
        "top5_note": None if show_top5 else f"omitted: top-{TOPK} of {n_names} names is not informative (k >= C/2)",
        "macro_f1": m["macro_f1"],
        "prediction_cv": m["prediction_cv"],
        "pred_cv_lo": interval("prediction_cv")[0],
        "pred_cv_hi": interval("prediction_cv")[1],
        "label_cv": m.get("label_cv"),
        "cv_excess_lo": interval("cv_excess")[0],
        "cv_excess_hi": interval("cv_excess")[1],
        "ci_flags": dict(flags),
        "nll": cal.get("nll"),
        "ece": cal.get("ece"),
        "brier": cal.get("brier"),
        "calibration_source": cal.get("source"),
        "ci_method": cm.get("method"),
        "ci_interval": cm.get("interval"),
        "ci_reliable": bool(cm.get("reliable", False)),
        "ci_reliability": list(cm.get("reliability", [])),
        "permutation_n": perm.get("n"),
        "permutation_p": perm.get("p_value"),
        "permutation_null_mean": perm.get("null_mean"),
        "permutation_null_max": perm.get("null_max"),
        "forced_choice": _forced_choice(s),
        "validation_score": _validation_score(s, res.config),
        "split": split.get("name"),
        "split_hash": split.get("hash"),
        "split_kind": kind,
        "split_seed": split.get("seed"),
        "seed_group": (s.get("extra") or {}).get("seed_group"),
        "balance": (res.config or {}).get("balance"),
        "control": _control_kind(s, kind),
        "leakage_warning": leakage,
        "warnings": warnings,
        "incomplete": list(s.get("incomplete") or []) or None,
        "controls": _controls(s, res.experiment, task_key),
        "store_path": s.get("store_path"),
        "path": str(res.path),
    }


def _group_key(row) -> str:
    return row["seed_group"] or row["experiment"]


# --------------------------------------------------------------------------- multiplicity


def _family(name: str, description: str, tests: list[tuple[dict, str, str]], *, correction: str, alpha: float,
            adjusted_key: str, flag_key: str | None) -> dict:
    """Adjust the p-values ``row[p_key]`` of ``tests`` ((row, id, p_key)) together; write the
    adjusted p into ``row[adjusted_key]`` and the decision into ``row[flag_key]``."""
    tests = [(r, tid, k) for r, tid, k in tests if r.get(k) is not None]
    adj = adjust_p_values([r[k] for r, _, k in tests], correction) if tests else np.array([])
    entries = []
    for (r, tid, k), a in zip(tests, adj):
        r[adjusted_key] = float(a)
        if flag_key:
            r[flag_key] = bool(a < alpha)
        entries.append({"test": tid, "p_raw": float(r[k]), "p_adjusted": float(a), "rejected": bool(a < alpha)})
    return {"name": name, "description": description, "correction": correction, "alpha": alpha,
            "n_tests": len(entries), "tests": entries}


# --------------------------------------------------------------------------- groups and selection


def _groups(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """task -> group key -> rows (one per seed)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        out.setdefault(r["task_key"], {}).setdefault(_group_key(r), []).append(r)
    return out


def _group_summary(key: str, rs: list[dict]) -> dict:
    ba = np.array([r["balanced_accuracy"] for r in rs])
    acc = np.array([r["accuracy"] for r in rs])
    val = [r["validation_score"] for r in rs]
    first = rs[0]
    return {
        "group": key, "seed_group": key if len(rs) > 1 else None, "task": first["task_key"], "n_seeds": len(rs),
        "experiments": [r["experiment"] for r in rs],
        "family": first["family"], "model": first["model"], "view": first["view"],
        "plan_experiment": first["plan_experiment"],
        "balanced_accuracy_mean": float(ba.mean()),
        "balanced_accuracy_std": float(ba.std(ddof=1)) if len(rs) > 1 else None,
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=1)) if len(rs) > 1 else None,
        "validation_score": float(np.mean(val)) if all(v is not None for v in val) else None,
        "chance_uniform": first["chance_uniform"],
        "n_above_baseline": int(sum(bool(r.get("above_baseline")) for r in rs)),
    }


def _select_best(summaries: list[dict]) -> dict:
    """The task's best group, chosen on seed means, else on validation, never on one test score."""
    if len(summaries) < 2:
        return {"experiment": None, "basis": None,
                "reason": "only one experiment on this task: nothing to choose between", "candidates": [],
                "not_ranked": []}
    seeded = [g for g in summaries if g["n_seeds"] > 1]
    if seeded:
        pick = max(seeded, key=lambda g: g["balanced_accuracy_mean"])
        return {"experiment": pick["group"], "basis": "mean test balanced accuracy over seeds",
                "value": pick["balanced_accuracy_mean"], "n_seeds": pick["n_seeds"],
                "candidates": [g["group"] for g in seeded],
                "not_ranked": [g["group"] for g in summaries if g["n_seeds"] < 2],
                "reason": None}
    with_val = [g for g in summaries if g["validation_score"] is not None]
    if len(with_val) >= 2:
        pick = max(with_val, key=lambda g: g["validation_score"])
        return {"experiment": pick["group"], "basis": "validation balanced accuracy (the score it was selected on)",
                "value": pick["validation_score"], "n_seeds": 1, "candidates": [g["group"] for g in with_val],
                "not_ranked": [g["group"] for g in summaries if g["validation_score"] is None], "reason": None}
    return {"experiment": None, "basis": None, "candidates": [], "not_ranked": [g["group"] for g in summaries],
            "reason": ("every experiment ran on one split and fewer than two recorded a validation score: "
                       "no best is chosen from single test scores (run with --seeds K)")}


# --------------------------------------------------------------------------- paired


def _resolve_reference(rows: list[dict], reference: str | None) -> tuple[str | None, str]:
    names = {r["experiment"] for r in rows} | {r["seed_group"] for r in rows if r["seed_group"]} | \
        {r["plan_experiment"] for r in rows if r["plan_experiment"]}
    if reference is not None:
        if reference not in names:
            raise ResultFormatError(
                f"--reference {reference!r} matches no ranked experiment; known: {', '.join(sorted(names)) or 'none'}")
        return reference, "declared (--reference)"
    if DEFAULT_REFERENCE in names:
        return DEFAULT_REFERENCE, "the plan's CLIP ViT-B-32 linear baseline (default)"
    return None, (f"no reference: the plan's baseline {DEFAULT_REFERENCE} is not among the results and none was "
                  "declared (--reference EXPERIMENT)")


def _matches(row, reference) -> bool:
    return reference in (row["experiment"], row["seed_group"], row["plan_experiment"])


def _paired_one(ref_res, other_res, *, n_boot: int, seed: int) -> dict:
    """Paired bootstrap of ``other - reference`` on the test images both scored, or the reason why not."""
    if list(ref_res.names) != list(other_res.names):
        return {"reason": "different name lists"}
    common, ir, io = np.intersect1d(ref_res.image_ids, other_res.image_ids, return_indices=True)
    if common.size < MIN_COMMON_IMAGES:
        return {"reason": f"different test images ({common.size} in common)"}
    if not np.array_equal(ref_res.true_labels[ir], other_res.true_labels[io]):
        return {"reason": "the same images carry different labels (different stores?)"}
    groups = ref_res.groups[ir] if ref_res.groups is not None else None
    out = paired_bootstrap(ref_res.true_labels[ir], other_res.predictions[io], ref_res.predictions[ir],
                           n_classes=len(ref_res.names), groups=groups, n_boot=n_boot, seed=seed,
                           return_replicates=True)
    out["n_common"] = int(common.size)
    out["n_dropped"] = int(max(ref_res.image_ids.size, other_res.image_ids.size) - common.size)
    return out


def _paired(task_groups, results_by_path, reference, *, n_boot: int, seed: int) -> list[dict]:
    """Every ranked group of a task against the reference group, per shared split, seeds combined."""
    out = []
    for task, groups in task_groups.items():
        ref_key = next((k for k, rs in groups.items() if any(_matches(r, reference) for r in rs)), None)
        for key, rs in groups.items():
            if key == ref_key:
                continue
            entry = {"task": task, "experiment": key, "reference": ref_key, "metric": "balanced_accuracy"}
            if ref_key is None:
                out.append({**entry, "status": "not compared",
                            "reason": f"the reference {reference} did not run on this task"})
                continue
            by_split = {r["split_hash"]: r for r in groups[ref_key]}
            made, reasons = [], []
            for r in rs:
                ref_row = by_split.get(r["split_hash"])
                if ref_row is None:
                    reasons.append(f"{r['experiment']}: different test images (split {r['split']} has no "
                                   "reference run)")
                    continue
                res = _paired_one(results_by_path[ref_row["path"]], results_by_path[r["path"]], n_boot=n_boot,
                                  seed=seed)
                if "reason" in res:
                    reasons.append(f"{r['experiment']}: {res['reason']}")
                else:
                    made.append(res)
            if not made:
                out.append({**entry, "status": "not compared", "reason": "; ".join(reasons)})
                continue
            comb = combine_paired(made, alpha=TWO_SIDED_ALPHA)
            out.append({**entry, "status": "compared", "reason": "; ".join(reasons) or None,
                        "difference": comb["difference"], "ci": comb["ci"], "p_raw": comb["p_value"],
                        "n_seeds": comb["n_seeds"], "per_seed": comb["per_seed"],
                        "n_common": int(sum(m["n_common"] for m in made)),
                        "n_dropped": int(sum(m["n_dropped"] for m in made)), "method": comb["method"]})
    return out


# --------------------------------------------------------------------------- targets


def _targets(task_groups, best_by_task) -> list[dict]:
    out = []
    for t in PLAN_TARGETS:
        n = int(t["task"])
        # A within-value task (the names of one covariate value) is never the plan's task.
        tasks = [task for task, groups in task_groups.items()
                 if next(iter(groups.values()))[0]["n_names"] == n and not next(iter(groups.values()))[0]["within"]]
        entry = {**t, "best_experiment": None, "value": None, "met": None, "beats_baseline": None, "note": None}
        if not tasks:
            entry["note"] = f"no {n}-name experiment"
            out.append(entry)
            continue
        # The task's best (chosen on seeds or validation), never the largest single test score.
        task = tasks[0]
        best = best_by_task[task]
        if best["experiment"] is None:
            groups = task_groups[task]
            if len(groups) != 1:
                entry["note"] = f"{task}: no best chosen ({best['reason']})"
                out.append(entry)
                continue
            key = next(iter(groups))
        else:
            key = best["experiment"]
        rs = task_groups[task][key]
        value = float(np.mean([r[t["key"]] for r in rs]))
        entry.update({"task_key": task, "best_experiment": key, "value": value, "n_seeds": len(rs)})
        if t["key"] == "accuracy":
            lo = float(np.mean([r["acc_lo"] for r in rs]))
            entry.update({"ci_lo": lo, "met": bool(value > t["target"]), "beats_baseline": bool(value > t["baseline"]),
                          "ci_above_target": bool(lo > t["target"])})
        else:
            label_cv = float(np.mean([r["label_cv"] for r in rs]))
            entry["label_cv"] = label_cv
            if label_cv >= t["target"]:
                # A perfect classifier has the CV of the true labels: the target is not a goal here.
                entry["note"] = (f"not judged: the true test labels themselves have CV {label_cv:.3f} >= "
                                 f"{t['target']}, so meeting the target would mean under-predicting frequent names")
            else:
                entry.update({"met": bool(value < t["target"]), "beats_baseline": bool(value < t["baseline"])})
        out.append(entry)
    return out


# --------------------------------------------------------------------------- embeddings


def _embeddings(task_groups, results_by_path) -> dict[str, list[dict]]:
    """Per task and probe family: models ranked on the test images every one of them scored."""
    from probes.metrics import balanced_accuracy

    out: dict[str, list[dict]] = {}
    for task, groups in task_groups.items():
        by_family: dict[str, dict[str, list[dict]]] = {}
        for key, rs in groups.items():
            model = rs[0]["model"] or key
            by_family.setdefault(rs[0]["family"] or "?", {}).setdefault(model, []).append({"group": key, "rows": rs})
        rankings = []
        for family, models in sorted(by_family.items()):
            # One entry per model: if a model has several experiments of this family (e.g. a
            # balanced variant), the one chosen on seeds/validation is not known here: list each.
            entries = [(m, e) for m, es in models.items() for e in es]
            splits = set.intersection(*({r["split_hash"] for r in e["rows"]} for _, e in entries))
            ranking = {"family": family, "task": task, "entries": [], "basis": None, "n_images": None,
                       "flag": None}
            if len(entries) > 1 and splits:
                per_split_common = {}
                for h in splits:
                    ids = [results_by_path[next(r["path"] for r in e["rows"] if r["split_hash"] == h)].image_ids
                           for _, e in entries]
                    per_split_common[h] = ids[0]
                    for x in ids[1:]:
                        per_split_common[h] = np.intersect1d(per_split_common[h], x)
                n_common = int(sum(v.size for v in per_split_common.values()))
                n_each = [int(sum(r["n_test"] for r in e["rows"] if r["split_hash"] in splits)) for _, e in entries]
                same = all(n == n_common for n in n_each)
                ranking["n_images"] = n_common
                ranking["basis"] = ("all test images (every model scored the same images)" if same else
                                    f"the {n_common} test images every model scored")
                # Seeds on a split another model did not run on are not in the numbers: say so,
                # rather than "all test images" of an experiment whose other seeds were left out.
                left_out = sum(r["split_hash"] not in splits for _, e in entries for r in e["rows"])
                if left_out:
                    ranking["basis"] += (f", on the {len(splits)} split(s) every model ran on; {left_out} "
                                         "result(s) on other splits left out")
                if not same:
                    ranking["flag"] = (f"the models scored different test images ({min(n_each)}-{max(n_each)}); "
                                       f"ranked on the {n_common} they share")
                for model, e in entries:
                    vals = []
                    for h in splits:
                        row = next(r for r in e["rows"] if r["split_hash"] == h)
                        res = results_by_path[row["path"]]
                        keep = np.isin(res.image_ids, per_split_common[h])
                        vals.append(balanced_accuracy(res.true_labels[keep], res.predictions[keep]))
                    ranking["entries"].append({
                        "model": model, "experiment": e["group"], "family": family, "n_seeds": len(splits),
                        "balanced_accuracy": float(np.mean(vals)),
                        "above_baseline": [bool(r.get("above_baseline")) for r in e["rows"]
                                           if r["split_hash"] in splits],
                        "chance_uniform": e["rows"][0]["chance_uniform"]})
            else:
                ranking["basis"] = ("one model only" if len(entries) == 1 else
                                    "listed, not ranked: the models ran on different splits (no common test images)")
                for model, e in entries:
                    ranking["entries"].append({
                        "model": model, "experiment": e["group"], "family": family, "n_seeds": len(e["rows"]),
                        "balanced_accuracy": float(np.mean([r["balanced_accuracy"] for r in e["rows"]])),
                        "above_baseline": [bool(r.get("above_baseline")) for r in e["rows"]],
                        "chance_uniform": e["rows"][0]["chance_uniform"]})
            if ranking["n_images"] is not None or len(entries) == 1:
                ranking["entries"].sort(key=lambda x: -x["balanced_accuracy"])
            rankings.append(ranking)
        out[task] = rankings
    return out


# --------------------------------------------------------------------------- controls


def _section_split_controls(rows, results_by_path) -> dict | None:
    cols = ["experiment", "task_key", "control", "n_test", "n_test_identities", "balanced_accuracy", "ba_lo", "ba_hi",
            "chance_uniform", "accuracy", "majority", "note"]
    items = [{**{c: r.get(c) for c in cols}, "note": r["leakage_warning"] or (r["warnings"][0] if r["warnings"] else "")}
             for r in rows if r["control"] is not None]
    if not items:
        return None
    return {"kind": "control rows", "title": "Control results (never ranked, never counted for the plan's targets)",
            "labels": ["experiment", "task", "control", "test images", "test identities", "balanced acc.", "CI low",
                       "CI high", "chance", "top-1", "majority", "note"],
            "description": ("Results on image-level splits (the same person can be in train and test), declared "
                            "nulls (e.g. names shuffled across identities) and leak audits. Their numbers say how "
                            "much leakage or chance alone can score; they are not evidence of name signal."),
            "columns": cols, "rows": items}


def _section_permutation(rows, results_by_path) -> dict | None:
    cols = ["experiment", "task_key", "permutation_n", "balanced_accuracy", "permutation_null_mean",
            "permutation_null_max", "permutation_p", "permutation_p_adj", "min_attainable_p", "beyond_null"]
    items = [{**{c: r.get(c) for c in cols}, "min_attainable_p": 1.0 / (r["permutation_n"] + 1)}
             for r in rows if r.get("permutation_n")]
    if not items:
        return None
    return {"kind": "permutation null", "title": "Permutation nulls (names shuffled across identities, whole fit repeated)",
            "labels": ["experiment", "task", "refits N", "balanced acc.", "null mean", "null max", "p raw", "p adj.",
                       "smallest possible p", "beyond the null"],
            "description": ("Each refit keeps the number of people per name, so name frequency alone is in the "
                            "null. p = (1 + #null >= observed) / (1 + N) can never be below 1 / (N + 1)."),
            "columns": cols, "rows": items}


def _section_forced_choice_null(rows, results_by_path) -> dict | None:
    cols = ["experiment", "task_key", "n_way", "foils", "chance", "prior_corrected", "null_mean", "null_repeats",
            "null_p"]
    items = []
    for r in rows:
        fc = r.get("forced_choice")
        if fc and fc.get("null_repeats"):
            items.append({"experiment": r["experiment"], "task_key": r["task_key"],
                          **{c: fc.get(c) for c in cols[2:]}})
    if not items:
        return None
    return {"kind": "forced-choice null", "title": "Forced-choice shuffled-name nulls",
            "labels": ["experiment", "task", "n-way", "foils", "chance", "prior-corrected", "null mean",
                       "null repeats", "null p"],
            "description": "The prior-corrected forced-choice score recomputed with names shuffled across identities.",
            "columns": cols, "rows": items}


def _beyond_covariate_verdict(c: dict, *, tested: bool = True, above_baseline: bool | None = True) -> dict:
    """The corrected verdict of one covariate control, in words and flags (from the family's adjusted p)."""
    floor = c["min_attainable_p"]
    at_floor = floor is not None and c["beyond_p"] is not None and c["beyond_p"] <= floor * (1 + 1e-9)
    if not tested:
        text = "not tested: a control result"
    elif c.get("beyond_significant") and not above_baseline:
        text = f"above the within-{c['covariate']} null, but not above baseline: not shown beyond {c['covariate']}"
    elif c.get("beyond_significant"):
        text = f"beyond {c['covariate']}"
    else:
        text = f"not shown beyond {c['covariate']}"
    return {"significant": c.get("beyond_significant"), "p_raw": c["beyond_p"], "p_adjusted": c.get("beyond_p_adj"),
            "shown": bool(tested and c.get("beyond_significant") and above_baseline),
            "p_at_floor": bool(at_floor), "text": text}


def _section_covariate_controls(rows, results_by_path) -> dict | None:
    cols = ["experiment", "task_key", "covariate", "balanced_accuracy", "oracle_balanced_accuracy", "oracle_lo",
            "oracle_hi", "from_face_balanced_accuracy", "from_face_lo", "from_face_hi", "covariate_from_face",
            "beyond_null_mean", "n_permutations", "beyond_p", "beyond_p_adj", "verdict"]
    items = []
    for r in rows:
        for c in r.get("controls") or []:
            # Beating the within-stratum null says "beyond the covariate" only of a name signal
            # that is there: the row above its baseline after correction.
            verdict = "control row (not tested)" if r["control"] is not None else \
                (("beyond the covariate" if r.get("above_baseline") else
                  "above the within-stratum null, but not above baseline: not shown")
                 if c.get("beyond_significant") else "not shown beyond it")
            items.append({**{k: c.get(k) for k in cols}, "verdict": verdict})
    if not items:
        return None
    return {"kind": "covariate controls", "title": "Covariate controls: is the name signal more than the covariate?",
            "labels": ["experiment", "task", "covariate", "balanced acc.", "oracle", "oracle CI low", "oracle CI high",
                       "from the face", "from-face CI low", "from-face CI high", "covariate from the face",
                       "within-stratum null mean", "permutations", "p raw", "p adj.", "verdict"],
            "description": ("The oracle is a face-blind rule that knows each test image's true covariate value "
                            "(uniform guessing among that value's names); from the face, the same probe family "
                            "predicts the covariate and then guesses among the predicted value's names. The verdict "
                            "tests the probe against names shuffled among identities of the same value (whole fit "
                            f"repeated), one-sided at {BEYOND_ALPHA} after the report's correction (family "
                            "beyond_covariate); p can never be below 1 / (permutations + 1)."),
            "columns": cols, "rows": items}


# Each builder takes (all rows, results by path) and returns a section dict or None.
CONTROL_SECTIONS = [_section_split_controls, _section_permutation, _section_forced_choice_null,
                    _section_covariate_controls]


# --------------------------------------------------------------------------- recommendations


def _rec(kind: str, text: str, **evidence) -> dict:
    return {"kind": kind, "text": text, "evidence": evidence}


def _recommendations(task_groups, best_by_task, paired, ranked, controls_rows, reference, correction,
                     n_boot_of) -> list[dict]:
    recs = []
    name = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[correction]
    for task, groups in task_groups.items():
        rows = [r for rs in groups.values() for r in rs]
        above = [r for r in rows if r.get("above_baseline")]
        if not above:
            best_p = min(rows, key=lambda r: r["p_balanced_adj"])
            floor = 1.0 / n_boot_of[best_p["path"]]
            if best_p["p_balanced"] <= floor * (1 + 1e-9):
                # The bootstrap could not resolve a smaller p: say so rather than "no signal".
                recs.append(_rec(
                    "resolution",
                    f"{task}: no experiment is above its baseline after {name} correction, but the smallest raw p "
                    f"({best_p['p_balanced']:.3g}, {best_p['experiment']}) is the bootstrap's floor 1/n_boot: "
                    "rerun with a larger --n-boot before concluding.",
                    task=task, experiment=best_p["experiment"], p_adjusted=best_p["p_balanced_adj"],
                    p_raw=best_p["p_balanced"], n_boot=n_boot_of[best_p["path"]]))
            else:
                recs.append(_rec(
                    "no_signal",
                    f"{task}: no experiment's balanced accuracy is above its baseline after {name} correction "
                    f"(smallest adjusted p {best_p['p_balanced_adj']:.3g}, {best_p['experiment']}); do not invest "
                    "further in these embeddings for this task without a new idea.",
                    task=task, experiment=best_p["experiment"], p_adjusted=best_p["p_balanced_adj"],
                    p_raw=best_p["p_balanced"]))
        best = best_by_task[task]
        if best["experiment"] is not None:
            g = next(s for s in best["summaries"] if s["group"] == best["experiment"])
            spread = (f" +/- {g['balanced_accuracy_std']:.4f} (std over seeds)"
                      if g["balanced_accuracy_std"] is not None else "")
            test = ("" if g["n_seeds"] > 1 else f"; its test balanced accuracy is {g['balanced_accuracy_mean']:.4f}")
            recs.append(_rec(
                "best",
                f"{task}: {best['experiment']} ({g['family']}, {g['model']}) is the best by {best['basis']}: "
                f"{best['value']:.4f}{spread}{test}, above its baseline after correction on {g['n_above_baseline']} "
                f"of {g['n_seeds']} split(s).",
                task=task, experiment=best["experiment"], basis=best["basis"], value=best["value"],
                balanced_accuracy_mean=g["balanced_accuracy_mean"], balanced_accuracy_std=g["balanced_accuracy_std"],
                n_seeds=g["n_seeds"], n_above_baseline=g["n_above_baseline"]))
        elif len(groups) > 1:
            recs.append(_rec("no_best", f"{task}: no best experiment is named: {best['reason']}.", task=task,
                             reason=best["reason"]))
        # Paired comparisons against the reference, in words.
        mine = [p for p in paired if p["task"] == task]
        better = [p for p in mine if p["status"] == "compared" and p["significant"] and p["difference"] > 0]
        worse = [p for p in mine if p["status"] == "compared" and p["significant"] and p["difference"] < 0]
        ties = [p for p in mine if p["status"] == "compared" and not p["significant"]]
        missing = [p for p in mine if p["status"] != "compared"]
        if mine and reference:
            parts = []
            if better:
                parts.append("better than the reference: " + ", ".join(
                    f"{p['experiment']} ({p['difference']:+.4f}, adj. p {p['p_adjusted']:.3g})" for p in better))
            if worse:
                parts.append("worse than the reference: " + ", ".join(
                    f"{p['experiment']} ({p['difference']:+.4f}, adj. p {p['p_adjusted']:.3g})" for p in worse))
            if ties:
                parts.append("not distinguishable from it on the same test images: " + ", ".join(
                    p["experiment"] for p in ties))
            if missing:
                parts.append("not compared: " + "; ".join(f"{p['experiment']} ({p['reason']})" for p in missing))
            recs.append(_rec("vs_reference", f"{task}, against {reference} (paired, {name}-adjusted): "
                             + "; ".join(parts) + ".", task=task, reference=reference,
                             better=[p["experiment"] for p in better], worse=[p["experiment"] for p in worse],
                             not_distinguishable=[p["experiment"] for p in ties],
                             not_compared=[p["experiment"] for p in missing]))
        freq = [r for r in rows if r.get("top1_above_baseline") and not r.get("above_baseline")]
        if freq:
            recs.append(_rec(
                "frequency",
                f"{task}: {', '.join(r['experiment'] for r in freq)} beat the top-1 baselines but not balanced "
                "chance (both adjusted): the gain comes from name frequency, not from the face.",
                task=task, experiments=[r["experiment"] for r in freq]))
    for r in ranked:
        v = r.get("beyond_frequency")
        if not v or v["verdict"] is None:
            continue
        text = "; ".join(v["evidence"])
        if v["verdict"]:
            recs.append(_rec("beyond_frequency", f"{r['experiment']}: beyond name frequency: {text}.",
                             experiment=r["experiment"], **v["checks"]))
        elif r.get("above_baseline"):
            recs.append(_rec("beyond_frequency_not_shown",
                             f"{r['experiment']}: above its baseline, but not shown beyond name frequency: {text}.",
                             experiment=r["experiment"], **v["checks"]))
    recs += _covariate_recommendations(ranked, name)
    partial = [r for r in ranked if r.get("incomplete")]
    if partial:
        recs.append(_rec(
            "incomplete",
            "Ran on incomplete data (--allow-incomplete), so their numbers may change once the models are finished: "
            + "; ".join(f"{r['experiment']} ({'; '.join(r['incomplete'])})" for r in partial)
            + ". Finish the models (the command is in each reason's store message) and rerun them.",
            experiments=[r["experiment"] for r in partial]))
    # Only the plan's concern: a CV above its 0.35 target that the true names do not explain.
    over = [r for r in ranked if r["cv_excess_lo"] is not None and r["cv_excess_lo"] > 0
            and r["prediction_cv"] >= PLAN_TARGETS[2]["target"] and r["balance"] in ("none", None)]
    if over:
        recs.append(_rec(
            "prediction_cv",
            f"Prediction CV is above the plan's {PLAN_TARGETS[2]['target']} and more concentrated on few names than "
            "the true test names are (the CI of prediction CV minus true-label CV is above 0) in " + ", ".join(
                f"{r['experiment']} ({r['prediction_cv']:.3f} vs {r['label_cv']:.3f})" for r in over)
            + ": rerun with `--balance logit-adjust` (tau chosen on validation).",
            experiments=[r["experiment"] for r in over]))
    unreliable = [r for r in ranked if not r["ci_reliable"]]
    if unreliable:
        recs.append(_rec(
            "unreliable_ci",
            "The intervals of " + ", ".join(r["experiment"] for r in unreliable) + " are unreliable ("
            + "; ".join(sorted({why for r in unreliable for why in r["ci_reliability"]})) + ").",
            experiments=[r["experiment"] for r in unreliable]))
    image_level = [r for r in controls_rows if r["control"] == "image-level split"]
    if image_level:
        # The advice depends on the store: pseudo-identities only where it has no identities.
        has_ids = {p: _store_has_identities(p) for p in {r["store_path"] for r in image_level}}
        for flag, advice in (
            (False, "their store has no identities: derive pseudo-identities (`probes identities`) and rerun with "
                    "`--by pseudo` to get results that can be ranked"),
            (True, "their store has identities: rerun with `--by identity` to get results that can be ranked"),
            (None, "rerun on an identity-disjoint split to rank them (`--by identity` if the store has identities, "
                   "else `--by pseudo` after `probes identities`)"),
        ):
            exps = [r["experiment"] for r in image_level if has_ids[r["store_path"]] is flag]
            if exps:
                recs.append(_rec("leakage", f"{', '.join(exps)} ran on image-level splits (the same person can be in "
                                 f"train and test) and are listed under Controls only; {advice}.",
                                 experiments=exps, store_has_identities=flag))
    single = all(len(rs) == 1 for groups in task_groups.values() for rs in groups.values())
    if ranked and single:
        text = ("Every experiment ran on one split: repeat them with `--seeds 5` to see the spread and to choose a "
                "best on seed means." if len(ranked) > 1 else
                "This experiment ran on one split: repeat it with `--seeds 5` to see the spread over splits.")
        recs.append(_rec("seeds", text, n_experiments=len(ranked)))
    return recs


def _covariate_recommendations(ranked: list[dict], correction_name: str) -> list[dict]:
    """Per covariate, in words: which experiments carry name signal beyond it (the corrected
    verdicts of the ``beyond_covariate`` family), or that none does, and whether the permutation
    count could have resolved it."""
    recs = []
    by_cov: dict[str, list[dict]] = {}
    above = {}
    for r in ranked:
        for c in r["controls"]:
            by_cov.setdefault(c["covariate"], []).append(c)
            above[id(c)] = bool(r.get("above_baseline"))
    for cov, cs in by_cov.items():
        # "Name signal beyond X" needs a name signal: the row above its baseline after correction
        # too. The within-stratum null holds the test set fixed, so it can reject for a result whose
        # CI over test identities still reaches chance; that is said as what it is.
        beats = [c for c in cs if c.get("beyond_significant")]
        yes = [c for c in beats if above[id(c)]]
        unsure = [c for c in beats if not above[id(c)]]
        if unsure:
            recs.append(_rec(
                "beyond_covariate_not_above_baseline",
                f"Above the within-{cov} null but not above its baseline after {correction_name} correction, so no "
                f"name signal beyond {cov} is shown: " + "; ".join(
                    f"{c['experiment']} ({c['task_key']}: {c['balanced_accuracy']:.4f} vs the within-{cov} null "
                    f"{c['beyond_null_mean']:.4f}, adjusted p {c['beyond_p_adj']:.3g})" for c in unsure) + ".",
                covariate=cov, experiments=[c["experiment"] for c in unsure],
                p_adjusted=[c["beyond_p_adj"] for c in unsure]))
        if yes:
            recs.append(_rec(
                "beyond_covariate",
                f"Name signal beyond {cov}: " + "; ".join(
                    f"{c['experiment']} ({c['task_key']}: {c['balanced_accuracy']:.4f} vs the within-{cov} null "
                    f"{c['beyond_null_mean']:.4f}, adjusted p {c['beyond_p_adj']:.3g}; a face-blind rule knowing {cov} "
                    f"scores {c['oracle_balanced_accuracy']:.4f}, predicting {cov} from the face "
                    f"{c['from_face_balanced_accuracy']:.4f})" for c in yes)
                + f" ({correction_name}-adjusted within-stratum permutation tests).",
                covariate=cov, experiments=[c["experiment"] for c in yes],
                p_adjusted=[c["beyond_p_adj"] for c in yes]))
        no = [c for c in cs if not c.get("beyond_significant")]
        if no and not beats:
            best = min(no, key=lambda c: (c["beyond_p_adj"], c["beyond_p"]))
            text = (f"No embedding is shown to carry name signal beyond {cov}: none of {len(cs)} experiment(s) beats "
                    f"its within-{cov} permutation null after {correction_name} correction (smallest adjusted p "
                    f"{best['beyond_p_adj']:.3g}, {best['experiment']}, {best['task_key']})")
            floors = [c for c in no if c["min_attainable_p"] is not None
                      and c["beyond_p"] <= c["min_attainable_p"] * (1 + 1e-9)]
            if floors:
                text += (f"; {len(floors)} of them sit at the smallest p their permutations can give "
                         f"(1/{floors[0]['n_permutations'] + 1}), so more permutations (--permutations N) could "
                         "resolve a smaller p")
            recs.append(_rec("not_beyond_covariate", text + ".", covariate=cov, experiments=[c["experiment"] for c in cs],
                             p_adjusted=[c["beyond_p_adj"] for c in cs], at_floor=[c["experiment"] for c in floors]))
        elif no:
            recs.append(_rec(
                "not_beyond_covariate",
                f"Not shown beyond {cov} (after {correction_name} correction): "
                + ", ".join(f"{c['experiment']} ({c['task_key']}, adjusted p {c['beyond_p_adj']:.3g})" for c in no)
                + ".", covariate=cov, experiments=[c["experiment"] for c in no]))
    return recs


def _store_has_identities(path) -> bool | None:
    """Whether the store a result came from has dataset identities (None: it cannot be opened here)."""
    if not path:
        return None
    try:
        from facestore import open_store

        return open_store(path, mode="r").index.identities is not None
    except Exception:  # moved, deleted or unreadable: the advice is then given conditionally
        return None


def _beyond_frequency(r: dict) -> dict:
    """Is the row's signal beyond name frequency? All available checks must pass.

    1. balanced accuracy above its baseline after correction (a face-blind rule scores 1/K in
       expectation however it uses name frequencies);
    2. with a permutation null (people per name kept, the whole fit repeated): the observed
       balanced accuracy above every refit;
    3. with forced choice: the prior-corrected score with popularity-matched foils has its CI
       above chance.
    ``verdict`` is None when neither 2 nor 3 ran (nothing beyond check 1 to say).
    """
    checks: dict = {"above_baseline": bool(r.get("above_baseline")), "p_adjusted": r.get("p_balanced_adj")}
    evidence = [f"balanced accuracy {r['balanced_accuracy']:.4f} vs baseline {r['baseline_balanced']:.4f}, "
                f"adjusted p {r['p_balanced_adj']:.3g}" + ("" if checks["above_baseline"] else " (not above)")]
    ran = False
    if r.get("permutation_n"):
        ran = True
        above_all = r["balanced_accuracy"] > r["permutation_null_max"]
        checks.update({"permutation_above_all": bool(above_all), "permutation_n": r["permutation_n"],
                       "permutation_null_max": r["permutation_null_max"], "permutation_p": r["permutation_p"]})
        evidence.append(f"{'above' if above_all else 'not above'} all {r['permutation_n']} permutation refits "
                        f"(null max {r['permutation_null_max']:.4f}, p {r['permutation_p']:.3g}, the smallest "
                        f"{r['permutation_n']} refits can give is {1 / (r['permutation_n'] + 1):.3g})")
    fc = r.get("forced_choice")
    # Only popularity-matched foils test frequency (the rule, and the report's sentence, say so):
    # uniform or same-covariate foils are not this check, and do not stand in for it.
    if fc and fc.get("foils") == "popularity":
        ran = True
        checks.update({"forced_choice_above_chance": fc["ci_above_chance"], "forced_choice": fc})
        evidence.append(f"{fc['n_way']}-way forced choice, {fc['foils']} foils, prior-corrected "
                        f"{fc['prior_corrected']:.3f} [{fc['prior_corrected_lo']:.3f}, {fc['prior_corrected_hi']:.3f}] "
                        f"vs chance {fc['chance']:.3f} (raw {fc['raw']:.3f}, prior-only {fc['prior_only']:.3f})")
    passed = checks["above_baseline"] and checks.get("permutation_above_all", True) and \
        checks.get("forced_choice_above_chance", True)
    return {"verdict": bool(passed) if ran else None, "checks": checks, "evidence": evidence}


# --------------------------------------------------------------------------- distributions for plots


def _distributions(task_groups, results_by_path) -> dict:
    """Per task: true test-name shares and each group's predicted shares (first seed), names
    ordered by true frequency; and per-name F1 for tasks with enough names."""
    out = {}
    for task, groups in task_groups.items():
        first = {k: results_by_path[rs[0]["path"]] for k, rs in groups.items()}
        ref = next(iter(first.values()))
        C = len(ref.names)
        true = np.bincount(ref.true_labels, minlength=C).astype(float)
        order = np.argsort(-true, kind="stable")
        out[task] = {
            "names": [ref.names[i] for i in order],
            "true_share": (true[order] / true.sum()).tolist(),
            "true_from": next(iter(groups.values()))[0]["experiment"],
            "predicted_share": {k: (np.bincount(r.predictions, minlength=C)[order] / r.predictions.size).tolist()
                                for k, r in first.items() if len(r.names) == C},
            "per_name_f1": ({k: [c["f1-score"] for c in r.per_class] for k, r in first.items()}
                            if C >= MIN_NAMES_F1_PLOT else None),
        }
    return out


# --------------------------------------------------------------------------- main


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _scalar(v):
    """A CSV cell: scalars as they are, lists and dicts as JSON."""
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, default=_json_default)


def compare_results(results_dir: str | Path, *, n_boot: int = 1000, plots: bool = True, seed: int = 0,
                    reference: str | None = None, correction: str = "holm") -> dict:
    """Compare every result folder under ``results_dir``; write the report files; return the data.

    Writes ``comparison.json`` (schema in docs/probes.md), ``comparison.csv`` (one row per
    folder, scalar fields), ``track3_comparison.md`` and, with ``plots``, the PNGs listed in
    ``data["plots"]``. ``reference`` pre-declares the experiment every other one is compared
    with (paired, on the same test images); default ``clip_linear`` when present.
    ``correction``: ``holm`` (family-wise) or ``bh`` (false discovery rate).
    """
    from probes.compare_markdown import render_markdown

    if correction not in CORRECTIONS:
        raise ProbeConfigError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    root = Path(results_dir)
    paths = find_results(root)
    if not paths:
        raise ResultsNotFoundError(
            f"no result folders (with summary.json) under {root}; write some first with a probe's --out (e.g. "
            f"`probes linear --store STORE --model MODEL --out {root}`) or `probes track3 --store STORE --out {root}`")
    results, skipped = [], []
    for p in paths:
        try:
            results.append(read_result(p))
        except ResultFormatError as e:
            skipped.append({"path": str(p), "reason": str(e)})
    rows = []
    for res in results:
        try:
            rows.append(_row(res))
        except (KeyError, TypeError, IndexError) as e:
            skipped.append({"path": str(res.path), "reason": f"summary.json lacks a field this report needs ({e!r}); "
                                                          "rerun the experiment"})
    results_by_path = {str(r.path): r for r in results}
    ranked = [r for r in rows if r["control"] is None]
    controls_rows = [r for r in rows if r["control"] is not None]
    for r in rows:
        r["split_by"] = (results_by_path[r["path"]].summary.get("split") or {}).get("by")

    families = [
        _family("above_baseline", "balanced accuracy above max(1/C, 1/names in test), one-sided, per ranked row",
                [(r, r["experiment"], "p_balanced") for r in ranked], correction=correction, alpha=ONE_SIDED_ALPHA,
                adjusted_key="p_balanced_adj", flag_key="above_baseline"),
        _family("top1_above_baseline", "top-1 above max(1/C, majority, prior-matched), one-sided, per ranked row",
                [(r, r["experiment"], "p_top1") for r in ranked], correction=correction, alpha=ONE_SIDED_ALPHA,
                adjusted_key="p_top1_adj", flag_key="top1_above_baseline"),
        _family("permutation", "balanced accuracy above the whole-fit permutation null, one-sided",
                [(r, r["experiment"], "permutation_p") for r in ranked], correction=correction,
                alpha=ONE_SIDED_ALPHA, adjusted_key="permutation_p_adj", flag_key="beyond_null"),
    ]
    control_tests = [c for r in ranked for c in r["controls"]]
    families.append(_family(
        "beyond_covariate", "balanced accuracy above the within-stratum permutation null of a covariate (names "
        "shuffled among identities of the same value, whole fit repeated), one-sided, per ranked row and covariate",
        [(c, f"{c['experiment']}: beyond {c['covariate']}", "beyond_p") for c in control_tests],
        correction=correction, alpha=BEYOND_ALPHA, adjusted_key="beyond_p_adj", flag_key="beyond_significant"))
    for r in ranked:
        r["beyond_frequency"] = _beyond_frequency(r)
    for r in controls_rows:  # controls are shown with their raw p only: they are not tests of the question
        r["p_balanced_adj"] = r["p_top1_adj"] = None
        r["above_baseline"] = r["top1_above_baseline"] = None
        for c in r["controls"]:
            c["beyond_p_adj"] = c["beyond_significant"] = None
    for r in rows:  # None where no control ran, so report columns appear only when one did
        r["beyond_covariate"] = {c["covariate"]: _beyond_covariate_verdict(c, tested=r["control"] is None,
                                                                            above_baseline=r.get("above_baseline"))
                                 for c in r["controls"]} or None

    task_groups = _groups(ranked)
    best_by_task = {}
    for task, groups in task_groups.items():
        summaries = [_group_summary(k, rs) for k, rs in groups.items()]
        best_by_task[task] = {**_select_best(summaries), "summaries": summaries}
    ref, ref_source = _resolve_reference(ranked, reference) if ranked else (None, "no ranked experiment")
    paired = _paired(task_groups, results_by_path, ref, n_boot=n_boot, seed=seed) if ref else []
    compared = [p for p in paired if p["status"] == "compared"]
    families.append(_family("vs_reference", f"paired balanced-accuracy difference against {ref}, two-sided",
                            [(p, f"{p['task']}: {p['experiment']}", "p_raw") for p in compared],
                            correction=correction, alpha=TWO_SIDED_ALPHA, adjusted_key="p_adjusted",
                            flag_key="significant"))
    controls = [s for s in (b(rows, results_by_path) for b in CONTROL_SECTIONS) if s]
    targets = _targets(task_groups, best_by_task)
    embeddings = _embeddings(task_groups, results_by_path)
    n_boot_of = {str(r.path): int(r.summary["ci_method"]["n_boot"]) for r in results}
    recs = _recommendations(task_groups, best_by_task, paired, ranked, controls_rows, ref, correction, n_boot_of)
    distributions = _distributions(task_groups, results_by_path)

    data = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "results_dir": str(root),
        "settings": {"correction": correction, "one_sided_alpha": ONE_SIDED_ALPHA, "two_sided_alpha": TWO_SIDED_ALPHA,
                     "n_boot": n_boot, "seed": seed, "reference": ref, "reference_source": ref_source,
                     "min_identities_per_name": 5, "top_k": TOPK},
        "experiments": ranked,
        "controls": controls,
        "control_rows": controls_rows,
        "skipped": skipped,
        "tasks": {t: [r["experiment"] for rs in g.values() for r in rs] for t, g in task_groups.items()},
        "best": {t: {k: v for k, v in b.items() if k != "summaries"} for t, b in best_by_task.items()},
        "seed_groups": [s for b in best_by_task.values() for s in b["summaries"] if s["n_seeds"] > 1],
        "groups": [s for b in best_by_task.values() for s in b["summaries"]],
        "paired_vs_reference": paired,
        "families": families,
        "plan_targets": targets,
        "embeddings": embeddings,
        "recommendations": recs,
        "distributions": distributions,
        "plots": [],
    }
    if plots and ranked:
        from probes.plots import AccuracyPlot, F1DistributionPlot, PredictedCountsPlot

        AccuracyPlot(data["experiments"]).save(root / "track3_accuracy.png")
        data["plots"].append({"file": "track3_accuracy.png", "title": "Balanced accuracy and top-1 per names task, sorted"})
        PredictedCountsPlot(distributions).save(root / "track3_predicted_counts.png")
        data["plots"].append({"file": "track3_predicted_counts.png",
                              "title": "Predicted vs true name shares, names by true frequency"})
        f1 = {t: d["per_name_f1"] for t, d in distributions.items() if d["per_name_f1"]}
        if f1:
            F1DistributionPlot(f1).save(root / "track3_f1.png")
            data["plots"].append({"file": "track3_f1.png", "title": f"Per-name F1 (tasks with >= {MIN_NAMES_F1_PLOT} names)"})
    (root / "comparison.json").write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    with open(root / "comparison.csv", "w", newline="") as f:
        fields = [k for k in (rows[0] if rows else {})]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _scalar(r.get(k)) for k in fields})
    md = root / "track3_comparison.md"
    md.write_text(render_markdown(data))
    return {**data, "markdown": str(md)}

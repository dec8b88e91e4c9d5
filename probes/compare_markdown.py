"""Render ``comparison.json`` (the data :func:`probes.compare.compare_results` wrote) as
``track3_comparison.md``. Nothing here computes a number: every figure printed is a field of
the data, so the markdown, the CSV, the JSON and the HTML report always agree.
"""

from __future__ import annotations

__all__ = ["render_markdown"]

_CORRECTION = {"holm": "Holm (family-wise error rate)", "bh": "Benjamini-Hochberg (false discovery rate)"}


def _f(v, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v).replace("|", "\\|")


def _p(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def _ci(v, lo, hi, nd: int = 4) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f} [{_f(lo, nd)}, {_f(hi, nd)}]"


def _n(r) -> str:
    ids = r.get("n_test_identities")
    return f"{r['n_test']} / {ids if ids is not None else 'no ids'}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def _intro(data) -> list[str]:
    st = data["settings"]
    ref = st["reference"]
    return [
        "# Track 3 comparison", "",
        "Balanced accuracy is the headline: its no-information value is max(1/C, 1/names in the test set) "
        "whatever the name frequencies. Top-1 is tested against max(1/C, always the most frequent training "
        "name, prior-matched guessing). Each p-value is one-sided against the baseline shown in its row and "
        "inverts the same BCa bootstrap (over identities) as the 95% CI beside it, so a CI above its baseline "
        "and p < 0.025 say the same thing.",
        "",
        f"Multiplicity: {_CORRECTION[st['correction']]} across each family of tests below; a row is *above "
        f"baseline* when its adjusted one-sided p < {st['one_sided_alpha']}. Paired comparisons are two-sided, "
        f"adjusted the same way, significant at adjusted p < {st['two_sided_alpha']}.",
        "",
        f"Reference of the paired comparisons: **{ref}** ({st['reference_source']})." if ref else
        f"Reference of the paired comparisons: none ({st['reference_source']}).",
        "",
        "Only identity-disjoint (or pseudo-identity-disjoint) results are ranked and counted for the plan's "
        "targets; image-level splits, nulls and audits are under [Controls](#controls).",
        "",
    ]


def _task_tables(data) -> list[str]:
    out = []
    paired = {(p["task"], p["experiment"]): p for p in data["paired_vs_reference"]}
    ref = data["settings"]["reference"]
    for task in data["tasks"]:
        rows = [r for r in data["experiments"] if r["task_key"] == task]
        rows.sort(key=lambda r: -r["balanced_accuracy"])
        out += [f"## Names task: {task}", ""]
        body = []
        for r in rows:
            key = r["seed_group"] or r["experiment"]
            p = paired.get((task, key))
            if ref and ref in (r["experiment"], r["seed_group"], r["plan_experiment"]):
                vs = "reference"
            elif p is None:
                vs = "-"
            elif p["status"] != "compared":
                vs = f"not compared ({p['reason']})"
            else:
                vs = (f"{p['difference']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}] adj. p {_p(p['p_adjusted'])}"
                      + (f" ({p['n_seeds']} seeds)" if p["n_seeds"] > 1 else ""))
            body.append([
                r["experiment"], f"{r['family']} / {r['model']}", r["split_kind"], _n(r),
                _ci(r["balanced_accuracy"], r["ba_lo"], r["ba_hi"]), _f(r["baseline_balanced"]),
                f"{_p(r['p_balanced'])} / {_p(r['p_balanced_adj'])}", _f(r["above_baseline"]),
                _ci(r["accuracy"], r["acc_lo"], r["acc_hi"]),
                f"{_f(r['baseline_top1'])} ({_f(r['majority'])} / {_f(r['prior_matched'])})",
                f"{_p(r['p_top1'])} / {_p(r['p_top1_adj'])}", vs,
            ])
        out += _table(["experiment", "family / model", "split", "test n (images / identities)",
                       "balanced acc. [95% CI]", "tested against", "p raw / adj.", "above baseline",
                       "top-1 [95% CI]", "top-1 baseline (majority / prior)", "p top-1 raw / adj.",
                       f"vs {ref or 'reference'} (paired, bal. acc.)"], body)
        out.append("")
        body = []
        notes = []
        for r in rows:
            ci_note = "ok" if r["ci_reliable"] else f"unreliable [{len(notes) + 1}]"
            if not r["ci_reliable"]:
                notes.append(f"[{len(notes) + 1}] {r['experiment']}: " + "; ".join(r["ci_reliability"]))
            body.append([
                r["experiment"], _f(r["top5_accuracy"]) if r["top5_accuracy"] is not None else "omitted (k >= C/2)",
                _f(r["macro_f1"]),
                (_ci(r["prediction_cv"], r["pred_cv_lo"], r["pred_cv_hi"], 3) if r["pred_cv_lo"] is not None
                 else f"{r['prediction_cv']:.3f} (no credible CI)"), _f(r["label_cv"], 3),
                _f(r["nll"], 3), _f(r["ece"], 3), _f(r["brier"], 3), _f(r["calibration_source"]), ci_note,
            ])
        out += _table(["experiment", "top-5", "macro F1", "pred. CV [95% CI]", "true-label CV", "NLL", "ECE (15 bins)",
                       "Brier", "probabilities from", "CI"], body)
        out.append("")
        if notes:
            out += notes + [""]
        partial = [r for r in rows if r.get("incomplete")]
        if partial:
            out += [f"**Incomplete data** (--allow-incomplete): {r['experiment']}: {_f('; '.join(r['incomplete']))}"
                    for r in partial] + [""]
        best = data["best"][task]
        if best["experiment"]:
            out += [f"Best on this task, by {best['basis']}: **{best['experiment']}** ({_f(best['value'])})"
                    + (f"; not in the choice (no seeds or validation score): {', '.join(best['not_ranked'])}"
                       if best["not_ranked"] else "") + ".", ""]
        else:
            out += [f"No best is named on this task: {best['reason']}.", ""]
    return out


def _seeds(data) -> list[str]:
    gs = data["seed_groups"]
    if not gs:
        return []
    body = [[g["group"], g["task"], str(g["n_seeds"]),
             f"{g['balanced_accuracy_mean']:.4f} +/- {_f(g['balanced_accuracy_std'])}",
             f"{g['accuracy_mean']:.4f} +/- {_f(g['accuracy_std'])}", _f(g["chance_uniform"]),
             f"{g['n_above_baseline']} of {g['n_seeds']}"] for g in gs]
    return ["## Over seeds", ""] + _table(["experiment", "task", "seeds", "balanced acc. mean +/- std",
                                            "top-1 mean +/- std", "chance", "splits above baseline (adj.)"],
                                           body) + [""]


def _paired(data) -> list[str]:
    ps = data["paired_vs_reference"]
    ref = data["settings"]["reference"]
    if not ref:
        return ["## Paired comparisons", "", f"None made: {data['settings']['reference_source']}.", ""]
    if not ps:
        return ["## Paired comparisons", "", f"None made: no other experiment shares a task with {ref}.", ""]
    body = []
    for p in ps:
        if p["status"] != "compared":
            body.append([p["task"], p["experiment"], f"not compared ({p['reason']})", "-", "-", "-", "-", "-"])
        else:
            body.append([p["task"], p["experiment"],
                         f"{p['difference']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]", _p(p["p_raw"]),
                         _p(p["p_adjusted"]), str(p["n_common"]), str(p["n_seeds"]),
                         ("better" if p["difference"] > 0 else "worse") if p["significant"] else "not distinguishable"])
    return [f"## Paired comparisons against {ref}", "",
            "Balanced accuracy of the experiment minus the reference's, on the test images both scored (same split); "
            "over several seeds the mean of the per-seed differences.", ""] + \
        _table(["task", "experiment", "difference [95% CI]", "p raw", "p adj.", "common test images", "seeds",
                "result"], body) + [""]


def _targets(data) -> list[str]:
    body = []
    for t in data["plan_targets"]:
        sign = ">" if t["better"] == "higher" else "<"
        extra = ""
        if t.get("label_cv") is not None:
            extra = f" (true labels {t['label_cv']:.3f})"
        if t.get("ci_lo") is not None:
            extra = f" (CI lower {t['ci_lo']:.4f}; CI above target: {_f(t['ci_above_target'])})"
        body.append([t["metric"], str(t["baseline"]), f"{sign} {t['target']}",
                     (_f(t["value"]) + extra) if t["value"] is not None else "-", _f(t["best_experiment"]),
                     _f(t["beats_baseline"]), _f(t["met"]), _f(t["note"])])
    return ["## The plan's baselines and targets", "",
            "Judged on the best experiment of the task with the plan's number of names (chosen on seeds or "
            "validation), ranked results only. Prediction CV is judged only where the true test labels are less "
            "concentrated than the target.", ""] + \
        _table(["metric", "CLIP baseline (plan)", "target", "here", "experiment", "beats baseline", "target met",
                "note"], body) + [""]


def _embeddings(data) -> list[str]:
    out = ["## Which embeddings carry the most name signal", "",
           "Per names task and probe family, each model's balanced accuracy on the test images every model of "
           "that ranking scored (the number says which probe family it comes from).", ""]
    for task, rankings in data["embeddings"].items():
        for rk in rankings:
            items = "; ".join(
                f"{e['model']} ({e['experiment']}) {e['balanced_accuracy']:.4f}"
                f" [above baseline in {sum(e['above_baseline'])}/{len(e['above_baseline'])}]"
                for e in rk["entries"])
            out.append(f"- {task}, {rk['family']} probe ({rk['basis']}): {items}"
                       + (f". Note: {rk['flag']}." if rk["flag"] else ""))
    return out + [""]


def _beyond(data) -> list[str]:
    rows = [r for r in data["experiments"] if (r.get("beyond_frequency") or {}).get("verdict") is not None]
    if not rows:
        return []
    verdict = {True: "yes", False: "not shown"}
    body = [[r["experiment"], verdict[r["beyond_frequency"]["verdict"]], "; ".join(r["beyond_frequency"]["evidence"])]
            for r in rows]
    return ["## Beyond name frequency", "",
            "A face-blind rule scores balanced accuracy 1/K in expectation however it uses name frequencies; a "
            "signal is called beyond name frequency when it is above its baseline after correction, above every "
            "permutation refit (names shuffled across identities, people per name kept) and, with forced choice, "
            "the prior-corrected score against popularity-matched foils has its (percentile, uncorrected) CI above "
            "chance.", ""] + _table(["experiment", "beyond name frequency", "evidence"], body) + [""]


def _beyond_covariate(data) -> list[str]:
    sec = next((s for s in data["controls"] if s.get("kind") == "covariate controls"), None)
    if sec is None:
        return []
    fam = next((f for f in data["families"] if f["name"] == "beyond_covariate"), None)
    level = fam["alpha"] if fam else "-"
    body = []
    for r in sec["rows"]:
        body.append([
            r["experiment"], _f(r["task_key"]), r["covariate"], _f(r["balanced_accuracy"]),
            _ci(r["oracle_balanced_accuracy"], r["oracle_lo"], r["oracle_hi"]),
            _ci(r["from_face_balanced_accuracy"], r["from_face_lo"], r["from_face_hi"]),
            _f(r["covariate_from_face"]), _f(r["beyond_null_mean"]),
            (f"{r['n_permutations']} of {r['n_permutations_planned']} (stopped early)" if r.get("stopped_early")
             else _f(r["n_permutations"])),
            f"{_p(r['beyond_p'])} / {_p(r['beyond_p_adj'])}", r["verdict"],
        ])
    return ["## Beyond the covariate", "",
            "Names carry gender (and age, ethnicity), and faces carry them too. The **oracle** is a face-blind rule "
            "that knows each test image's true covariate value and guesses uniformly among that value's names; "
            "**from the face** predicts the covariate with the same probe family, then guesses among the predicted "
            "value's names. The verdict tests the probe's balanced accuracy against a **within-stratum permutation "
            "null** (training names shuffled among identities of the same value, whole fit repeated), one-sided at "
            f"{level} after the correction above; p is never below 1 / (planned permutations + 1). A clearly null "
            "run stops early once 10 null scores reach the observed one (Besag-Clifford sequential test: a valid p = 10 / "
            "permutations run; with at most 99 planned it is above 0.1, the verdict all of them would give).", ""] + \
        _table(["experiment", "task", "covariate", "balanced acc.", "oracle [95% CI]", "from the face [95% CI]",
                "covariate from the face", "within-stratum null mean", "permutations", "p raw / adj.", "verdict"],
               body) + [""]


def _families(data) -> list[str]:
    body = [[f["name"], f["description"], _CORRECTION[f["correction"]].split(" (")[0], str(f["n_tests"]),
             str(sum(t["rejected"] for t in f["tests"])), str(f["alpha"])] for f in data["families"]]
    return ["## Families of tests", ""] + _table(["family", "what is tested", "correction", "tests",
                                                  "rejected (adjusted)", "level"], body) + [""]


def _controls(data) -> list[str]:
    out = ['<a id="controls"></a>', "## Controls", ""]
    if not data["controls"]:
        return out + ["No control results in this directory.", ""]
    for sec in data["controls"]:
        if sec.get("kind") == "covariate controls":  # rendered in its own section
            out += [f"### {sec['title']}", "", "See [Beyond the covariate](#beyond-the-covariate).", ""]
            continue
        out += [f"### {sec['title']}", "", sec["description"], ""]
        out += _table(sec.get("labels") or sec["columns"], [[_p(r.get(c)) if c.endswith(("_p", "_p_adj")) else _f(r.get(c))
                                        for c in sec["columns"]] for r in sec["rows"]])
        out.append("")
    return out


def _skipped(data) -> list[str]:
    if not data["skipped"]:
        return []
    return ["## Result folders not used", ""] + [f"- `{s['path']}`: {s['reason']}" for s in data["skipped"]] + [""]


def render_markdown(data: dict) -> str:
    """The whole ``track3_comparison.md`` from the comparison data."""
    out = _intro(data) + _skipped(data)
    if not data["experiments"]:
        out += ["No ranked result: every result folder here is a control or was not usable.", ""]
    out += _task_tables(data) + _seeds(data) + _paired(data) + _targets(data) + _embeddings(data) + _beyond(data)
    out += _beyond_covariate(data)
    out += _controls(data)
    out += ["## Recommendations", ""] + [f"- {r['text']}" for r in data["recommendations"]] + [""]
    out += _families(data)
    if data["plots"]:
        out += ["## Plots", ""] + [f"![{p['title']}]({p['file']})" for p in data["plots"]] + [""]
    return "\n".join(out)

"""``probes report``: a static HTML site over a results directory.

The site renders what the results directory holds: ``comparison.json`` (``probes compare``)
for the index, each result folder for one page. It needs no server and no network; every
figure and thumbnail is a file beside the pages. Rebuilding rewrites pages and figures and
reuses the thumbnails already made.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from probes.errors import ResultFormatError, ResultsNotFoundError
from probes.report import figures as F
from probes.report.experiment import ExperimentPage, PageOptions, render_experiment
from probes.report.gallery import StoreView, Thumbnails, open_store_view
from probes.report.markup import Cell, esc, fmt, fmt_p, generic, href, page, prose, table
from probes.results import find_results, read_result

__all__ = ["SiteReport", "build_report"]

# comparison.json top-level keys with a section of their own; any other key gets a generic one.
KNOWN_COMPARISON_KEYS = {
    "schema", "created", "results_dir", "settings", "experiments", "controls", "control_rows", "skipped", "tasks",
    "best", "seed_groups", "groups", "paired_vs_reference", "paired_vs_best", "families", "plan_targets",
    "embeddings", "recommendations", "distributions", "plots",
}
PLAN_FILES = ("track3_comparison.md", "comparison.json", "comparison.csv", "track3_status.json", "track3_run.log")


@dataclass(frozen=True)
class SiteReport:
    """What :func:`build_report` wrote."""

    index: Path
    pages: tuple[ExperimentPage, ...]
    thumbnails_written: int
    thumbnails_reused: int
    notes: tuple[str, ...]


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "experiment"
    if base.lower() == "index":
        base = "experiment_index"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}_{k}", k + 1
    taken.add(slug)
    return slug


def _missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _with_ci(row: dict, key: str, lo: str, hi: str) -> Cell:
    v = row.get(key)
    text = esc(fmt(v))
    if _num(row.get(lo)) and _num(row.get(hi)):
        text += f'<br><span class="ci">[{esc(fmt(row[lo]))}, {esc(fmt(row[hi]))}]</span>'
    return Cell(text, v if _num(v) else None)


def _flag(v) -> Cell:
    if v is None:
        return Cell("–")
    return Cell(f'<span class="{"sig" if v else "ns"}">{esc(fmt(bool(v)))}</span>', int(bool(v)))


def _first(row: dict, *keys):
    """The first of ``keys`` the row holds (schema 2 names first, then the older ones)."""
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return None


def _beyond(row: dict) -> Cell:
    b = row.get("beyond_frequency")
    if not isinstance(b, dict):
        return _flag(b)
    cell = _flag(b.get("verdict"))
    checks = b.get("checks")
    if isinstance(checks, dict):
        tip = "; ".join(f"{k}: {fmt(v)}" for k, v in checks.items() if not isinstance(v, (dict, list)))
        cell.html = f'<span title="{esc(tip)}">{cell.html}</span>'
    return cell


def _beyond_covariate(row: dict) -> Cell:
    """Each covariate's corrected verdict (comparison.json ``beyond_covariate``), p adj. in the tooltip."""
    verdicts = row.get("beyond_covariate")
    if not isinstance(verdicts, dict) or not verdicts:
        return Cell("–")
    parts, sort = [], None
    for cov, v in verdicts.items():
        if not isinstance(v, dict):
            parts.append(esc(fmt(v)))
            continue
        # Green only for "beyond the covariate" shown (null beaten and the row above its baseline).
        sig = v.get("shown", v.get("significant"))
        cls = "sig" if sig else "ns"
        tip = f"{cov}: p raw {fmt_p(v.get('p_raw'))}, p adj. {fmt_p(v.get('p_adjusted'))}" + (
            " (at the smallest p the permutations can give)" if v.get("p_at_floor") else "")
        parts.append(f'<span class="{cls}" title="{esc(tip)}">{esc(v.get("text") or cov)}</span>')
        sort = v.get("p_adjusted") if sort is None else sort
    return Cell("<br>".join(parts), sort if _num(sort) else None)


def _incomplete(row: dict) -> Cell:
    reasons = row.get("incomplete")
    if not reasons:
        return Cell("–")
    text = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
    return Cell(f'<span class="warn" title="{esc(text)}">incomplete data</span>', 1)


def _top5(row: dict) -> Cell:
    v = row.get("top5_accuracy")
    if v is None and row.get("top5_note"):
        return Cell(f'<span title="{esc(row["top5_note"])}">–</span>')
    return Cell(esc(fmt(v)), v if _num(v) else None)


def _n_test(row: dict) -> Cell:
    n, ids = row.get("n_test"), row.get("n_test_identities")
    return Cell(esc(fmt(n)) + (f'<br><span class="ci">{esc(fmt(ids))} ids</span>' if ids is not None else ""), n)


# The lean comparison table: (header, the row keys it shows, cell). A column appears when some row
# holds one of its keys; every field of every row is also in the "every field" table below it.
COLUMNS = (
    ("model", ("model",), lambda r: Cell(esc(fmt(f"{r['model']} ({r['view']})" if r.get("view") else r.get("model"))),
                                          r.get("model"))),
    ("test images", ("n_test",), _n_test),
    ("balanced acc. [95% CI]", ("balanced_accuracy",), lambda r: _with_ci(r, "balanced_accuracy", "ba_lo", "ba_hi")),
    ("baseline", ("baseline_balanced", "chance_uniform"), lambda r: _first(r, "baseline_balanced", "chance_uniform")),
    ("p (bal.)", ("p_balanced",), lambda r: Cell(esc(fmt_p(r.get("p_balanced"))), r.get("p_balanced"))),
    ("p adj. (bal.)", ("p_balanced_adj",), lambda r: Cell(esc(fmt_p(r.get("p_balanced_adj"))), r.get("p_balanced_adj"))),
    ("above baseline", ("above_baseline", "significant"), lambda r: _flag(_first(r, "above_baseline", "significant"))),
    ("top-1 [95% CI]", ("accuracy",), lambda r: _with_ci(r, "accuracy", "acc_lo", "acc_hi")),
    ("top-1 baseline", ("baseline_top1", "majority"), lambda r: _first(r, "baseline_top1", "majority")),
    ("p adj. (top-1)", ("p_top1_adj",), lambda r: Cell(esc(fmt_p(r.get("p_top1_adj"))), r.get("p_top1_adj"))),
    ("top-5", ("top5_accuracy", "top5_note"), _top5),
    ("macro F1", ("macro_f1",), lambda r: r.get("macro_f1")),
    ("pred. CV [95% CI]", ("prediction_cv",), lambda r: _with_ci(r, "prediction_cv", "pred_cv_lo", "pred_cv_hi")),
    ("ECE", ("ece",), lambda r: r.get("ece")),
    ("permutation p adj.", ("permutation_p_adj", "permutation_p"),
     lambda r: Cell(esc(fmt_p(_first(r, "permutation_p_adj", "permutation_p"))),
                    _first(r, "permutation_p_adj", "permutation_p"))),
    ("beyond name frequency", ("beyond_frequency",), _beyond),
    ("beyond the covariate", ("beyond_covariate",), _beyond_covariate),
    ("incomplete", ("incomplete",), _incomplete),
    ("warnings", ("warnings",), lambda r: len(r["warnings"]) if isinstance(r.get("warnings"), list) else r.get("warnings")),
)


def _rows_table(rows: list[dict], page_of: dict[str, str]) -> str:
    cols = [c for c in COLUMNS if any(r.get(k) is not None for r in rows for k in c[1])]
    body = []
    for r in rows:
        name = str(r.get("experiment"))
        link = page_of.get(name)
        cells = [Cell(f'<a href="{esc(link)}">{esc(name)}</a>' if link else esc(name), name)]
        body.append(cells + [render(r) for _, _, render in cols])
    return f'<div class="scroll">{table(["experiment", *(c[0] for c in cols)], body, cls="wide")}</div>'


def _best(best) -> str:
    if not isinstance(best, dict):
        return ""
    if best.get("experiment"):
        basis = f" ({esc(best['basis'])})" if best.get("basis") else ""
        return f"<p>Best: <b>{esc(best['experiment'])}</b>{basis}.</p>"
    return f'<p class="note">No best named: {prose(best.get("reason") or "comparison.json gives no reason")}.</p>'


def _comparison_tables(comparison: dict, page_of: dict[str, str]) -> str:
    rows = [r for r in comparison.get("experiments") or [] if isinstance(r, dict)]
    if not rows:
        return _missing("comparison.json lists no ranked experiments")
    by_name = {str(r.get("experiment")): r for r in rows}
    tasks = comparison.get("tasks")
    if not isinstance(tasks, dict):
        tasks = {}
        for r in rows:
            tasks.setdefault(r.get("task_key") or f"{r.get('task')} ({r.get('n_names')} names)", []).append(
                str(r.get("experiment")))
    settings = comparison.get("settings")
    out = ['<p class="note">From comparison.json (click a column to sort). Balanced accuracy is the headline; '
           "each p-value is one-sided against the baseline in its row; adjusted p-values and "
           "<i>above baseline</i> apply the correction in the settings below; hover a cell of "
           "<i>beyond name frequency</i> for its checks, of <i>beyond the covariate</i> for its p-values "
           "(the covariate controls are under Controls).</p>"]
    if isinstance(settings, dict):
        out.append(f'<p class="note">Settings: {generic(settings, depth=1)}</p>')
    best = comparison.get("best") if isinstance(comparison.get("best"), dict) else {}
    for task, names in tasks.items():
        task_rows = sorted((by_name[n] for n in names if n in by_name),
                           key=lambda r: -(r["balanced_accuracy"] if _num(r.get("balanced_accuracy")) else -1))
        if task_rows:
            out.append(f"<h3>Names task: {esc(task)}</h3>" + _rows_table(task_rows, page_of) + _best(best.get(task)))
    out.append("<details><summary>every field of every row of comparison.json</summary>"
               + generic(rows) + "</details>")
    return "".join(out)


def _paired(comparison: dict) -> str:
    paired = comparison.get("paired_vs_reference")
    if paired is None and comparison.get("paired_vs_best"):  # schema 1
        return generic(comparison["paired_vs_best"])
    settings = comparison.get("settings") or {}
    if not paired:
        why = settings.get("reference_source") or "comparison.json holds no paired comparisons"
        return _missing(f"No paired comparisons: {why}.")
    rows = []
    for p in paired if isinstance(paired, list) else []:
        if not isinstance(p, dict):
            continue
        diff = p.get("difference")
        ci = p.get("ci") if isinstance(p.get("ci"), list) else None
        text = "–" if not _num(diff) else f"{diff:+.4f}" + (
            f' <span class="ci">[{ci[0]:+.4f}, {ci[1]:+.4f}]</span>' if ci and all(_num(c) for c in ci) else "")
        rows.append((p.get("task"), p.get("experiment"), p.get("reference"), p.get("status"),
                     Cell(text, diff if _num(diff) else None), Cell(esc(fmt_p(p.get("p_raw"))), p.get("p_raw")),
                     Cell(esc(fmt_p(p.get("p_adjusted"))), p.get("p_adjusted")), _flag(p.get("significant")),
                     p.get("reason") or ""))
    return (f'<p class="note">Reference: {esc(settings.get("reference"))} ({esc(settings.get("reference_source"))}).'
            "</p>" + table(("task", "experiment", "reference", "status", "difference [95% CI]", "p", "p adj.",
                            "significant", "reason"), rows))


def _controls(comparison: dict, page_of: dict[str, str]) -> str:
    controls = comparison.get("controls")
    out = []
    if controls is None:
        out.append(_missing("comparison.json has no controls section: not in this result"))
    elif not controls:
        out.append(_missing("comparison.json lists no controls for these results"))
    for section in controls if isinstance(controls, list) else ([controls] if controls else []):
        spec = section if isinstance(section, dict) else {}
        cols, rows = spec.get("columns"), spec.get("rows")
        if isinstance(cols, list) and isinstance(rows, list):
            labels = spec.get("labels") if isinstance(spec.get("labels"), list) and len(spec["labels"]) == len(cols) else cols
            body = [[(Cell(f'<a href="{esc(page_of[r[c]])}">{esc(r[c])}</a>', r[c])
                      if c == "experiment" and r.get(c) in page_of else r.get(c)) for c in cols]
                    for r in rows if isinstance(r, dict)]
            out.append(f"<h3>{esc(spec.get('title') or spec.get('kind') or 'control')}</h3>"
                       + (f'<p class="note">{prose(spec["description"])}</p>' if spec.get("description") else "")
                       + f'<div class="scroll">{table(labels, body)}</div>')
        else:
            out.append(generic(section))
    control_rows = [r for r in comparison.get("control_rows") or [] if isinstance(r, dict)]
    if control_rows:
        out.append("<h3>Control experiments (not ranked)</h3>" + _rows_table(control_rows, page_of))
    return "".join(out)


def _families(families) -> str:
    if not families:
        return _missing("comparison.json lists no test families: not in this result")
    if not isinstance(families, list):
        return generic(families)
    out = []
    for f in families:
        if not isinstance(f, dict):
            out.append(generic(f))
            continue
        head = ", ".join(f"{k} {fmt(f[k])}" for k in ("correction", "alpha", "n_tests") if k in f)
        out.append(f"<h3>{esc(f.get('name'))}</h3><p class='note'>{prose(f.get('description') or '')} ({esc(head)})</p>")
        tests = f.get("tests")
        out.append(generic(tests) if tests else _missing("no tests in this family"))
    return "".join(out)


def _distributions(dist) -> str:
    if not isinstance(dist, dict) or not dist:
        return _missing("comparison.json has no name distributions")
    out = []
    for task, d in dist.items():
        if not isinstance(d, dict) or not isinstance(d.get("names"), list):
            out.append(f"<h3>{esc(task)}</h3>" + generic(d))
            continue
        names, true = d["names"], d.get("true_share") or []
        pred = d.get("predicted_share") if isinstance(d.get("predicted_share"), dict) else {}
        body = [[n, true[i] if i < len(true) else None, *(v[i] if i < len(v) else None for v in pred.values())]
                for i, n in enumerate(names[:40])]
        more = f" (the first 40 of {len(names)} names)" if len(names) > 40 else ""
        out.append(f"<h3>{esc(task)}</h3><p class='note'>Shares from comparison.json{esc(more)}; true shares from "
                   f"{esc(d.get('true_from'))}.</p>"
                   + f'<div class="scroll">{table(["name", "true share", *pred], body, cls="wide")}</div>')
    return "".join(out)


def _recommendations(recs) -> str:
    if not recs:
        return _missing("comparison.json has no recommendations: not in this result")
    items = []
    for r in recs if isinstance(recs, list) else [recs]:
        if isinstance(r, dict):
            kind = f'<span class="note">[{esc(r["kind"])}]</span> ' if r.get("kind") else ""
            items.append(f"<li>{kind}{prose(r.get('text') or '')}"
                         + (f"<details><summary>evidence</summary>{generic(r['evidence'])}</details>"
                            if r.get("evidence") else "") + "</li>")
        else:
            items.append(f"<li>{prose(r)}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _plots(comparison: dict, results_dir: Path, report_dir: Path) -> str:
    plots = [p for p in comparison.get("plots") or [] if isinstance(p, dict) and p.get("file")]
    shown = [p for p in plots if (results_dir / p["file"]).is_file()]
    if not shown:
        return ""
    figs = "".join(f'<h3>{esc(p.get("title") or p["file"])}</h3><img class="fig" '
                   f'src="{esc(href(results_dir / p["file"], start=report_dir))}" alt="{esc(p["file"])}">'
                   for p in shown)
    return f"<details><summary>the plots probes compare wrote ({len(shown)})</summary>{figs}</details>"


def _seed_groups(comparison: dict) -> str:
    groups = comparison.get("seed_groups")
    out = generic(groups) if groups else _missing("every experiment ran on one split (comparison.json seed_groups is empty)")
    if comparison.get("groups"):
        out += "<details><summary>every group of comparison.json (one per experiment or seed group)</summary>" + \
            generic(comparison["groups"]) + "</details>"
    return out


def _targets(targets) -> str:
    if not targets:
        return _missing("comparison.json has no plan_targets: not in this result")
    rows = []
    for t in targets if isinstance(targets, list) else []:
        if not isinstance(t, dict):
            continue
        sign = ">" if t.get("better") == "higher" else "<"
        absent = t.get("note") or (f"no {t.get('task')}-name experiment" if t.get("task") not in ("any", None) else "–")
        met = t.get("met")
        rows.append((t.get("metric"), t.get("baseline"), f"{sign} {fmt(t.get('target'))}", t.get("value"),
                     t.get("best_experiment") or "–", absent if t.get("beats_baseline") is None else t.get("beats_baseline"),
                     Cell(absent if met is None else f'<span class="{"sig" if met else "ns"}">{esc(fmt(met))}</span>',
                          None if met is None else int(met))))
    if not rows:
        return generic(targets)
    return table(("metric", "CLIP baseline", "target", "best here", "experiment", "beats baseline", "target met"), rows)


def _embeddings(emb) -> str:
    if not emb:
        return _missing("comparison.json has no embeddings ranking: not in this result")
    if not isinstance(emb, dict):
        return generic(emb)
    out = ["<ul>"]
    for task, ranking in emb.items():
        parts = []
        for e in ranking if isinstance(ranking, list) else []:
            if not isinstance(e, dict):
                continue
            if isinstance(e.get("entries"), list):  # schema 2: one ranking per probe family
                # The experiment beside the model (one model can appear in two experiments) and
                # the above-baseline count, as track3_comparison.md writes them.
                entries = "; ".join(
                    f"{esc(x.get('model'))}" + (f" ({esc(x['experiment'])})" if x.get("experiment") else "")
                    + f" {esc(fmt(x.get('balanced_accuracy')))}"
                    + (f" [above baseline in {sum(map(bool, x['above_baseline']))}/{len(x['above_baseline'])}]"
                       if isinstance(x.get("above_baseline"), list) else "")
                    for x in e["entries"] if isinstance(x, dict))
                note = f" <span class='note'>({esc(e['basis'])})</span>" if e.get("basis") else ""
                flag = f" <span class='warn'>{esc(e['flag'])}</span>" if e.get("flag") else ""
                parts.append(f"{esc(e.get('family'))}: {entries}{note}{flag}")
            else:
                sig = "sig." if e.get("significant") else "n.s."
                parts.append(f"{esc(e.get('model'))} {esc(fmt(e.get('balanced_accuracy')))} ({sig})")
        out.append(f"<li>{esc(task)}: {' · '.join(parts) or generic(ranking)}</li>")
    return "".join(out) + "</ul>"


def _status(results_dir: Path) -> str:
    path = results_dir / "track3_status.json"
    if not path.is_file():
        return _missing("no track3_status.json (the results were not made by probes track3)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return _missing(f"track3_status.json is not valid JSON ({e})")
    records = [r for r in data.get("records") or [] if isinstance(r, dict)]
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    head = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no records"
    rows = [(r.get("experiment"), r.get("plan_ref") or r.get("group"), r.get("task"), r.get("seed"), r.get("status"),
             r.get("balanced_accuracy"), r.get("chance"), r.get("reason") or "") for r in records]
    return (f"<p>From track3_status.json: {esc(head)}.</p><details><summary>every experiment of the plan and what "
            "happened to it</summary>"
            + table(("experiment", "plan", "task", "seed", "status", "balanced acc.", "chance", "reason"), rows)
            + "</details>")


def _accuracy_figure(comparison: dict, report_dir: Path) -> str:
    rows = [r for r in comparison.get("experiments") or []
            if isinstance(r, dict) and _num(r.get("balanced_accuracy"))]
    if not rows:
        return _missing("no experiment with a balanced accuracy to plot")
    fig_dir = report_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    schema2 = any("above_baseline" in r for r in rows)
    points = [{"experiment": r.get("experiment"),
               "task": r.get("task_key") or f"{r.get('task')} ({r.get('n_names')} names)",
               "balanced_accuracy": r["balanced_accuracy"], "lo": r.get("ba_lo"), "hi": r.get("ba_hi"),
               "baseline": _first(r, "baseline_balanced", "chance_uniform"),
               "flag": bool(r.get("above_baseline") if schema2 else r.get("significant"))} for r in rows]
    label = "above baseline after correction" if schema2 else "significant"
    path = F.accuracy_figure(points, fig_dir / "accuracy.png", flag_label=label)
    return (f'<img class="fig" src="{esc(href(path, start=report_dir))}" alt="balanced accuracy per experiment">'
            '<p class="note">Drawn from comparison.json, one panel per name task, best at the top.</p>')


def _index(results_dir: Path, report_dir: Path, comparison: dict | None, comparison_problem: str | None,
           pages: Sequence[ExperimentPage], page_of: dict[str, str], skipped: Sequence[str],
           notes: Sequence[str]) -> str:
    skipped = list(skipped)
    files = [f for f in PLAN_FILES if (results_dir / f).is_file()]
    links = " · ".join(f'<a href="{esc(href(results_dir / f, start=report_dir))}">{esc(f)}</a>' for f in files)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    made = ""
    if comparison is not None:
        schema = comparison.get("schema") if isinstance(comparison.get("schema"), dict) else {}
        made = (f" · comparison.json {esc(schema.get('name', ''))} {esc(schema.get('version', 'v1'))}"
                + (f" of {esc(comparison['created'])}" if comparison.get("created") else ""))
    subtitle = (f"{esc(results_dir.resolve())} · {len(pages)} experiment pages · written {esc(now)}{made}"
                + (f"<br>The plan's files: {links}" if links else ""))
    sections = []
    if comparison is None:
        sections.append(_section("comparison", "Comparison", _missing(comparison_problem or "no comparison.json")))
        body = table(("experiment",), [(Cell(f'<a href="{esc(p.path.name)}">{esc(p.experiment)}</a>', p.experiment),)
                                       for p in pages])
        sections.append(_section("experiments", "Experiments", body))
    else:
        sections.append(_section("comparison", "Comparison", _comparison_tables(comparison, page_of)))
        sections.append(_section("accuracy", "Balanced accuracy with 95% CIs", _accuracy_figure(comparison, report_dir)
                                 + _plots(comparison, results_dir, report_dir)))
        sections.append(_section("recommendations", "Recommendations",
                                 _recommendations(comparison.get("recommendations"))))
        sections.append(_section("controls", "Controls", _controls(comparison, page_of)))
        sections.append(_section("paired", "Paired comparisons", _paired(comparison)))
        sections.append(_section("targets", "The plan's baselines and targets", _targets(comparison.get("plan_targets"))))
        sections.append(_section("embeddings", "Which embeddings carry the most name signal",
                                 _embeddings(comparison.get("embeddings"))))
        sections.append(_section("seeds", "Over seeds", _seed_groups(comparison)))
        sections.append(_section("families", "Multiple-testing families", _families(comparison.get("families"))))
        sections.append(_section("distributions", "Name shares per task",
                                 "<details><summary>true and predicted share of every name</summary>"
                                 + _distributions(comparison.get("distributions")) + "</details>"))
        for s in comparison.get("skipped") or []:
            skipped.append(f"{s.get('path')}: {s.get('reason')}" if isinstance(s, dict) else str(s))
        for k, v in comparison.items():
            if k not in KNOWN_COMPARISON_KEYS:
                sections.append(_section(f"more-{k}", k, generic(v)))
        listed = {str(r.get("experiment")) for r in comparison.get("experiments") or [] if isinstance(r, dict)}
        unlisted = [p for p in pages if p.experiment not in listed]
        if unlisted:
            sections.append(_section("unlisted", "Result folders not in comparison.json", (
                '<p class="note">comparison.json is older than these folders: rerun <code>probes compare</code>.</p><ul>'
                + "".join(f'<li><a href="{esc(p.path.name)}">{esc(p.experiment)}</a></li>' for p in unlisted) + "</ul>")))
    sections.append(_section("status", "Track 3 plan status", _status(results_dir)))
    if skipped or notes:
        items = [f"<li class='warn'>{esc(s)}</li>" for s in skipped] + [f"<li>{esc(n)}</li>" for n in notes]
        sections.append(_section("notes", "What the report could not show", "<ul>" + "".join(items) + "</ul>"))
    toc = [("comparison", "comparison"), ("accuracy", "accuracy plot"), ("recommendations", "recommendations"),
           ("controls", "controls"), ("paired", "paired"), ("targets", "plan targets"), ("status", "plan status")]
    joined = "".join(sections)
    return page("Track 3 report", joined, subtitle=subtitle, toc=[t for t in toc if f'id="{t[0]}"' in joined])


def build_report(results_dir: str | Path, *, out: str | Path | None = None, store: str | Path | None = None,
                 options: PageOptions = PageOptions()) -> SiteReport:
    """Write the HTML report of ``results_dir`` into ``out`` (default ``results_dir/report``).

    ``store`` overrides the store path every summary.json records (for results moved to
    another machine); without a reachable store, the face galleries and the train+val name
    frequencies are replaced by a note. Raises ``FileNotFoundError`` when ``results_dir``
    holds no result folder.
    """
    results_dir = Path(results_dir)
    folders = find_results(results_dir)  # raises FileNotFoundError for a missing directory
    report_dir = Path(out) if out is not None else results_dir / "report"
    report_dir_resolved = report_dir.resolve()
    folders = [f for f in folders if report_dir_resolved not in f.resolve().parents]
    if not folders:
        raise ResultsNotFoundError(
            f"no result folders (with summary.json) under {results_dir}; write some first with "
            f"`probes track3 --store STORE --out {results_dir}` or a probe's --out")
    report_dir.mkdir(parents=True, exist_ok=True)

    comparison, comparison_problem = None, None
    cpath = results_dir / "comparison.json"
    if cpath.is_file():
        try:
            comparison = json.loads(cpath.read_text())
        except json.JSONDecodeError as e:
            comparison_problem = f"{cpath} is not valid JSON ({e}); rerun `probes compare {results_dir}`"
    else:
        comparison_problem = f"no comparison.json in {results_dir}: run `probes compare {results_dir}` to write it"
    rows_by_name, rows_by_path = {}, {}
    for r in (comparison or {}).get("experiments") or []:
        if isinstance(r, dict):
            rows_by_name[str(r.get("experiment"))] = r
            if r.get("path"):
                rows_by_path[str(Path(r["path"]).resolve())] = r

    thumbs = Thumbnails(report_dir)
    stores: dict[str, StoreView] = {}
    taken: set[str] = set()
    pages: list[ExperimentPage] = []
    page_of: dict[str, str] = {}
    skipped: list[str] = []
    notes: list[str] = []
    by_note: dict[str, list[str]] = {}
    for folder in folders:
        try:
            res = read_result(folder)
        except (ResultFormatError, OSError, ValueError) as e:
            skipped.append(str(e) if str(folder) in str(e) else f"{folder}: {e}")
            continue
        store_path = str(store) if store is not None else str(res.summary.get("store_path") or "")
        if store_path not in stores:
            stores[store_path] = open_store_view(store_path or None)
            if stores[store_path].problem:
                notes.append(stores[store_path].problem)
        rel = folder.resolve().relative_to(results_dir.resolve()) if folder.resolve().is_relative_to(
            results_dir.resolve()) else Path(folder.name)
        slug = _slug("__".join(rel.parts), taken)
        row = rows_by_path.get(str(folder.resolve())) or rows_by_name.get(res.experiment)
        written = render_experiment(res, page_path=report_dir / f"{slug}.html", index_href="index.html",
                                    store=stores[store_path], thumbs=thumbs, comparison_row=row, options=options)
        pages.append(written)
        page_of.setdefault(written.experiment, written.path.name)
        for n in written.notes:
            if "store" not in n:  # store problems are noted once above, not per page
                by_note.setdefault(n, []).append(written.experiment)
    notes += [f"{n}: {', '.join(exps)}" for n, exps in by_note.items()]
    index = report_dir / "index.html"
    index.write_text(_index(results_dir, report_dir, comparison, comparison_problem, pages, page_of, skipped,
                            _dedupe(notes)), encoding="utf-8")
    return SiteReport(index=index, pages=tuple(pages), thumbnails_written=thumbs.written,
                      thumbnails_reused=thumbs.reused, notes=tuple(_dedupe(notes)))


def _dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))

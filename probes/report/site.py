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

from probes.errors import ResultFormatError
from probes.report import figures as F
from probes.report.experiment import ExperimentPage, PageOptions, render_experiment
from probes.report.gallery import StoreView, Thumbnails, open_store_view
from probes.report.markup import Cell, esc, fmt, fmt_p, generic, href, page, table
from probes.results import find_results, read_result

__all__ = ["SiteReport", "build_report"]

# comparison.json experiment-row keys with a column of their own (or folded into one); every
# other key gets a generic column, so rows gained later show up without a change here.
ROW_COLUMNS = (
    ("experiment", "experiment"), ("family", "family"), ("model", "model"), ("n_test", "test images"),
    ("balanced_accuracy", "balanced acc. [95% CI]"), ("chance_uniform", "chance"),
    ("accuracy", "top-1 [95% CI]"), ("majority", "majority"), ("prior_matched", "prior-matched"),
    ("top5_accuracy", "top-5"), ("macro_f1", "macro F1"), ("prediction_cv", "pred. CV"),
    ("p_balanced", "p (bal.)"), ("p_top1", "p (top-1)"), ("significant", "sig."),
    ("permutation_p", "permutation p"), ("warnings", "warnings"),
)
ROW_FOLDED = {"task", "n_names", "ba_lo", "ba_hi", "acc_lo", "acc_hi", "path", "view", "split", "split_hash",
              "seed_group", "balance", "ci_method", "distinct_predicted"}
KNOWN_COMPARISON_KEYS = {"experiments", "tasks", "paired_vs_best", "seed_groups", "plan_targets", "embeddings",
                         "recommendations", "controls"}
PLAN_FILES = ("track3_comparison.md", "comparison.json", "comparison.csv", "track3_status.json", "track3_run.log",
              "track3_accuracy.png", "track3_predicted_counts.png", "track3_f1.png")


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
    text = fmt(v)
    if _num(row.get(lo)) and _num(row.get(hi)):
        text += f" [{fmt(row[lo])}, {fmt(row[hi])}]"
    return Cell(esc(text), v if _num(v) else None)


def _vs_best(p) -> Cell:
    if p == "best":
        return Cell("<b>best</b>", 0.0)
    if isinstance(p, dict) and _num(p.get("difference")):
        ci = p.get("ci") or [None, None]
        text = f"{p['difference']:+.4f}"
        if len(ci) == 2 and all(_num(c) for c in ci):
            text += f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
        if _num(p.get("p_value")):
            text += f" p={p['p_value']:.3g}"
        return Cell(esc(text), p["difference"])
    return Cell("n/a" if p is None else generic(p), None)


def _comparison_tables(comparison: dict, page_of: dict[str, str]) -> str:
    rows = [r for r in comparison.get("experiments") or [] if isinstance(r, dict)]
    if not rows:
        return _missing("comparison.json lists no experiments")
    by_name = {str(r.get("experiment")): r for r in rows}
    tasks = comparison.get("tasks")
    if not isinstance(tasks, dict):
        tasks = {}
        for r in rows:
            tasks.setdefault(f"{r.get('task')} ({r.get('n_names')} names)", []).append(str(r.get("experiment")))
    paired = comparison.get("paired_vs_best") or {}
    known = {k for k, _ in ROW_COLUMNS} | ROW_FOLDED
    extra_cols: list[str] = []
    for r in rows:
        extra_cols += [k for k in r if k not in known and k not in extra_cols]
    header = [label for _, label in ROW_COLUMNS] + ["vs best (paired, bal. acc.)"] + extra_cols
    out = ['<p class="note">From comparison.json. Balanced accuracy is the headline (chance exactly 1/C); '
           "CIs are 95%; sig. = one-sided p &lt; 0.05 against the best no-information baseline; "
           "vs best = paired bootstrap of the difference to the task's best experiment on the same test images. "
           "Click a column to sort.</p>"]
    for task, names in tasks.items():
        task_rows = sorted((by_name[n] for n in names if n in by_name),
                           key=lambda r: -(r["balanced_accuracy"] if _num(r.get("balanced_accuracy")) else -1))
        body = []
        for r in task_rows:
            name = str(r.get("experiment"))
            link = page_of.get(name)
            cells: list = []
            for key, _ in ROW_COLUMNS:
                if key == "experiment":
                    cells.append(Cell(f'<a href="{esc(link)}">{esc(name)}</a>' if link else esc(name), name))
                elif key == "balanced_accuracy":
                    cells.append(_with_ci(r, key, "ba_lo", "ba_hi"))
                elif key == "accuracy":
                    cells.append(_with_ci(r, key, "acc_lo", "acc_hi"))
                elif key == "model":
                    m = r.get("model")
                    text = f"{m} ({r['view']})" if r.get("view") else m
                    cells.append(Cell(esc(fmt(text)), m))
                elif key in ("p_balanced", "p_top1", "permutation_p"):
                    cells.append(Cell(esc(fmt_p(r.get(key))), r.get(key)))
                elif key == "significant":
                    sig = r.get(key)
                    cls = "sig" if sig else "ns"
                    cells.append(Cell(f'<span class="{cls}">{esc(fmt(sig))}</span>', int(bool(sig))))
                else:
                    cells.append(r.get(key))
            cells.append(_vs_best((paired.get(task) or {}).get(name)))
            cells += [r.get(k) for k in extra_cols]
            body.append(cells)
        out.append(f"<h3>Names task: {esc(task)}</h3>" + table(header, body))
    return "".join(out)


def _seed_groups(groups) -> str:
    if not groups:
        return _missing("every experiment ran on one split (comparison.json seed_groups is empty)")
    return generic(groups)


def _targets(targets) -> str:
    if not targets:
        return _missing("comparison.json has no plan_targets: not in this result")
    rows = []
    for t in targets if isinstance(targets, list) else []:
        if not isinstance(t, dict):
            continue
        sign = ">" if t.get("better") == "higher" else "<"
        absent = f"no {t.get('task')}-name experiment" if t.get("task") not in ("any", None) else "–"
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
        items = []
        for e in ranking if isinstance(ranking, list) else []:
            if isinstance(e, dict):
                sig = "sig." if e.get("significant") else "n.s."
                items.append(f"{esc(e.get('model'))} {esc(fmt(e.get('balanced_accuracy')))} ({sig})")
        out.append(f"<li>{esc(task)}: {'; '.join(items) or generic(ranking)}</li>")
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
    path = F.accuracy_figure(rows, fig_dir / "accuracy.png")
    return (f'<img class="fig" src="{esc(href(path, start=report_dir))}" alt="balanced accuracy per experiment">'
            '<p class="note">Drawn from comparison.json, one panel per name task, best at the top.</p>')


def _index(results_dir: Path, report_dir: Path, comparison: dict | None, comparison_problem: str | None,
           pages: Sequence[ExperimentPage], page_of: dict[str, str], skipped: Sequence[str],
           notes: Sequence[str]) -> str:
    files = [f for f in PLAN_FILES if (results_dir / f).is_file()]
    links = " · ".join(f'<a href="{esc(href(results_dir / f, start=report_dir))}">{esc(f)}</a>' for f in files)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    subtitle = (f"{esc(results_dir.resolve())} · {len(pages)} experiment pages · written {esc(now)}"
                + (f"<br>The plan's files: {links}" if links else ""))
    sections = []
    if comparison is None:
        sections.append(_section("comparison", "Comparison", _missing(comparison_problem or "no comparison.json")))
        body = table(("experiment",), [(Cell(f'<a href="{esc(p.path.name)}">{esc(p.experiment)}</a>', p.experiment),)
                                       for p in pages])
        sections.append(_section("experiments", "Experiments", body))
    else:
        sections.append(_section("comparison", "Comparison", _comparison_tables(comparison, page_of)))
        sections.append(_section("accuracy", "Balanced accuracy with 95% CIs", _accuracy_figure(comparison, report_dir)))
        controls = comparison.get("controls")
        sections.append(_section("controls", "Controls", generic(controls) if controls is not None else
                                 _missing("comparison.json has no controls section: not in this result")))
        sections.append(_section("targets", "The plan's baselines and targets", _targets(comparison.get("plan_targets"))))
        sections.append(_section("embeddings", "Which embeddings carry the most name signal",
                                 _embeddings(comparison.get("embeddings"))))
        recs = comparison.get("recommendations")
        sections.append(_section("recommendations", "Recommendations",
                                 ("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in recs) + "</ul>") if recs else
                                 _missing("comparison.json has no recommendations: not in this result")))
        sections.append(_section("seeds", "Over seeds", _seed_groups(comparison.get("seed_groups"))))
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
    toc = [("comparison", "comparison"), ("accuracy", "accuracy plot"), ("controls", "controls"),
           ("targets", "plan targets"), ("recommendations", "recommendations"), ("status", "plan status")]
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
        raise FileNotFoundError(
            f"no result folders (with summary.json) under {results_dir}; run `probes track3 --out {results_dir}` "
            "or a probe with --out first")
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

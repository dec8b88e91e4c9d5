"""One experiment's page: headline metrics, confusions, per-name views, calibration, forced
choice and face galleries, all rendered from one result folder.

Numbers that ``summary.json`` or ``results.csv`` hold are shown as they are. Views the files do
not hold (a confusion matrix, name counts, reliability bins, train+val name frequencies) are
counted here from ``predictions.npy``, ``true_labels.npy``, ``probabilities.npy`` or the store,
and each such section says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.report import figures as F
from probes.report.gallery import StoreView, Thumbnails
from probes.report.markup import Cell, esc, fmt, fmt_ci, fmt_p, generic, href, page, prose, table

__all__ = ["ExperimentPage", "PageOptions", "render_experiment"]

# summary.json keys this page renders in their own sections; every other key is shown generically.
KNOWN_SUMMARY_KEYS = {
    "experiment", "family", "model", "view", "name_task", "headline", "metrics", "ci", "ci_method", "chance",
    "p_value", "significant", "significance_level", "permutation", "plan", "split", "store_path", "model_spec",
    "probe", "timings", "warnings", "extra", "created", "host", "calibration", "forced_choice", "baseline",
    "significance", "manifest", "control", "controls", "incomplete",
}
RAW_FILES = ("summary.json", "config.json", "results.csv", "run.log", "track3_status.json")


@dataclass(frozen=True)
class PageOptions:
    """How much each page shows."""

    confusion_names: int = 15
    distribution_names: int = 30
    gallery_names: int = 6
    per_gallery: int = 8
    reliability_bins: int = 10


@dataclass(frozen=True)
class ExperimentPage:
    """A written page and what it could not show."""

    path: Path
    experiment: str
    notes: tuple[str, ...]


def _missing(what: str) -> str:
    return f'<p class="missing">{esc(what)}</p>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _img(src: str, alt: str) -> str:
    return f'<img class="fig" src="{esc(src)}" alt="{esc(alt)}">'


def _headline(summary: dict, names: list[str], row: dict | None = None) -> str:
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        return _missing("summary.json has no metrics: not in this result")
    ci = summary.get("ci") or {}
    pv = summary.get("p_value") or {}
    head = summary.get("headline", "balanced_accuracy")
    order = [head] + [k for k in metrics if k != head] if head in metrics else list(metrics)
    rows = []
    for k in order:
        v = metrics[k]
        label = Cell(f"<b>{esc(k)}</b>" if k == head else esc(k), k)
        rows.append((label, Cell(generic(v), v if isinstance(v, (int, float)) else None),
                     Cell(fmt_ci(ci.get(k)) if k in ci else "–"), Cell(esc(fmt_p(pv.get(k))) if k in pv else "–")))
    # Intervals or p-values of quantities that are not metrics (e.g. cv_excess) get rows too.
    for k in [k for k in [*ci, *pv] if k not in metrics]:
        if any(r[0].sort == k for r in rows):
            continue
        rows.append((Cell(esc(k), k), Cell("–"), Cell(fmt_ci(ci.get(k)) if k in ci else "–"),
                     Cell(esc(fmt_p(pv.get(k))) if k in pv else "–")))
    out = [_headline_sentence(summary, row), table(("metric", "value", "95% CI", "p-value"), rows)]
    sig = summary.get("significant")
    if sig is not None:
        cls = "sig" if sig else "ns"
        rule = summary.get("significance") or (
            f"one-sided p < {fmt(summary.get('significance_level'))} against the best no-information baseline")
        out.append(f'<p class="{cls}">{"Significant" if sig else "Not significant"}: {prose(rule)}.</p>')
    if summary.get("baseline") is not None:
        out.append("<h3>Baseline of the test</h3>" + generic(summary["baseline"]))
    method = summary.get("ci_method")
    if isinstance(method, dict):
        label = ", ".join(str(method[k]) for k in ("method", "interval") if method.get(k))
        out.append(f"<details><summary>how the intervals were made: {esc(label or 'details')}</summary>"
                   + generic(method) + "</details>")
    elif method:
        out.append(f'<p class="note">Intervals: {generic(method)}</p>')
    chance = summary.get("chance")
    out.append("<h3>Chance baselines</h3>")
    if isinstance(chance, dict):
        shown = dict(chance)
        idx = shown.get("majority_name_index")
        if isinstance(idx, int) and 0 <= idx < len(names):
            shown["majority_name"] = names[idx]
        out.append(generic(shown))
    else:
        out.append(_missing("summary.json has no chance levels: not in this result"))
    perm = summary.get("permutation")
    out.append("<h3>Permutation null</h3>")
    if isinstance(perm, dict):
        shown = {k: (f"{len(v)} values (summary.json)" if k == "null" and isinstance(v, list) else v)
                 for k, v in perm.items()}
        out.append(generic(shown))
    else:
        out.append(_missing("no permutation null in this result (probes linear --permutations N adds one)"))
    calibration = summary.get("calibration")
    if calibration is None and isinstance(metrics, dict):
        cal_keys = {k: v for k, v in metrics.items() if any(s in k for s in ("nll", "ece", "brier"))}
        calibration = cal_keys or None
    out.append("<h3>Calibration scores</h3>")
    out.append(generic(calibration) if calibration else
               _missing("summary.json holds no calibration scores (NLL, ECE, Brier): not in this result"))
    warnings = summary.get("warnings") or []
    if warnings:
        out.append("<h3>Warnings</h3><ul>" + "".join(f'<li class="warn">{esc(w)}</li>' for w in warnings) + "</ul>")
    return "".join(out)


def _headline_sentence(summary: dict, row: dict | None) -> str:
    """One line with the numbers a reader looks for first, read from summary.json (and, for the
    corrected verdict, from this experiment's row of comparison.json)."""
    m, ci = summary.get("metrics") or {}, summary.get("ci") or {}
    ch, pv = summary.get("chance") or {}, summary.get("p_value") or {}
    tested = summary.get("baseline") if isinstance(summary.get("baseline"), dict) else None
    parts = []
    for key, label, chance_key, chance_label in (("balanced_accuracy", "Balanced accuracy", "uniform", "chance"),
                                                 ("accuracy", "top-1", "majority", "majority")):
        if not isinstance(m.get(key), (int, float)):
            continue
        text = f"{label} <b>{esc(fmt(m[key]))}</b> {fmt_ci(ci.get(key)) if key in ci else ''}"
        # The p-value tests against summary.json's baseline when it records one (result format 2).
        if tested is not None and isinstance(tested.get(key), (int, float)):
            text += f" against its baseline {esc(fmt(tested[key]))}"
        elif isinstance(ch.get(chance_key), (int, float)):
            text += f" against {chance_label} {esc(fmt(ch[chance_key]))}"
        if key in pv:
            text += f" (p = {esc(fmt_p(pv[key]))})"
        parts.append(text)
    if isinstance(m.get("n_test"), int):
        ident = m.get("n_test_identities")
        parts.append(f"{m['n_test']} test images" + (f" of {ident} identities" if isinstance(ident, int) else ""))
    line = " · ".join(parts)
    if row and row.get("above_baseline") is not None:
        settings = "after the comparison's multiplicity correction"
        verdict = "above its baseline" if row["above_baseline"] else "not above its baseline"
        line += (f'<br><span class="{"sig" if row["above_baseline"] else "ns"}">{esc(verdict)} {esc(settings)} '
                 f"(adjusted p = {esc(fmt_p(row.get('p_balanced_adj')))}, comparison.json)</span>")
    return f'<p class="headline">{line}</p>' if line else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _top_by(counts: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-counts, kind="stable")
    return order[: min(k, int((counts > 0).sum()) or k)]


def _shade(share: float) -> str:
    """Inline style of a heat cell: the accent colour at ``share`` opacity, text readable on it."""
    colour = "#fff" if share > 0.55 else "#1d2430"
    return f"background:rgba(31,119,180,{share:.3f});color:{colour}"


def _confusion(res, opts: PageOptions) -> str:
    n_names = len(res.names)
    y, p = res.true_labels, res.predictions
    true_counts = np.bincount(y, minlength=n_names)
    top = _top_by(true_counts, opts.confusion_names)
    slot = np.full(n_names, len(top), dtype=np.int64)  # name index -> row/column; len(top) = "other"
    slot[top] = np.arange(len(top))
    rows_in = np.isin(y, top)
    rows, cols = slot[y[rows_in]], slot[p[rows_in]]
    other = bool((cols == len(top)).any())
    matrix = np.zeros((len(top), len(top) + 1), dtype=np.int64)
    np.add.at(matrix, (rows, cols), 1)
    labels = [res.names[c] for c in top]
    columns = labels + (["(other names)"] if other else [])
    out = ['<table class="heat"><thead><tr><th>true \\ predicted</th>']
    out += [f'<th class="rot"><span>{esc(c)}</span></th>' for c in columns]
    out.append("<th>test images</th></tr></thead><tbody>")
    for i, name in enumerate(labels):
        total = int(matrix[i].sum())
        out.append(f"<tr><th>{esc(name)}</th>")
        for j, col in enumerate(columns):
            n = int(matrix[i, j])
            share = n / total if total else 0.0
            diag = ' class="diag"' if j == i else ""
            tip = f"true {name}, predicted {col}: {n} of {total}"
            out.append(f'<td{diag} style="{_shade(share)}" title="{esc(tip)}">{n or ""}</td>')
        out.append(f"<td>{total}</td></tr>")
    out.append("</tbody></table>")
    note = (f"Counted here from predictions.npy and true_labels.npy: test images of the {len(top)} most frequent "
            f"true names (of {n_names}); the shade is the share of the row, the diagonal is outlined"
            + ("; '(other names)' collects predictions of any other name." if other else "."))
    return "".join(out) + f'<p class="note">{esc(note)}</p>'


def _recall_frequency(res, store: StoreView, fig_dir: Path, stem: str, report_dir: Path) -> tuple[str, str | None]:
    per = {r["name"]: r for r in res.per_class}
    names = [n for n in res.names if n in per]
    if not names:
        return _missing("results.csv has no per-name rows: not in this result"), None
    recall = np.array([per[n]["recall"] for n in names], dtype=float)
    counts, why = store.trainval_counts(list(res.names), res.summary.get("split") or {})
    note = None
    if counts is not None:
        pos = {n: i for i, n in enumerate(res.names)}
        freq = np.array([counts[pos[n]] for n in names], dtype=float)
        xlabel = "images of the name in train + val"
        text = f"Recall from results.csv; training frequency {why}."
    else:
        freq = np.array([per[n]["support"] for n in names], dtype=float)
        xlabel = "test images of the name (support, results.csv)"
        text = (f"Training frequency is not in the result folder and the store could not give it ({why}); "
                "the x axis shows the test support from results.csv instead.")
        note = f"training frequencies: {why}"
    path = F.recall_frequency_figure(names, recall, freq, fig_dir / f"{stem}_recall.png", xlabel=xlabel)
    return _img(href(path, start=report_dir), "recall against frequency") + f'<p class="note">{esc(text)}</p>', note


def _distribution(res, opts: PageOptions) -> str:
    n_names = len(res.names)
    true_counts = np.bincount(res.true_labels, minlength=n_names)
    pred_counts = np.bincount(res.predictions, minlength=n_names)
    k = opts.distribution_names
    chosen = list(dict.fromkeys([*_top_by(true_counts, k).tolist(), *_top_by(pred_counts, k).tolist()]))
    chosen = sorted(chosen, key=lambda c: (-true_counts[c], -pred_counts[c]))[: max(k, 1)]
    scale = 260 / max(int(true_counts.max(initial=0)), int(pred_counts.max(initial=0)), 1)

    def bar(n: int, cls: str) -> Cell:
        return Cell(f'<span class="bar {cls}" style="width:{max(n * scale, 1 if n else 0):.0f}px"></span> {n}', n)

    rows = [(res.names[c], bar(int(true_counts[c]), "true"), bar(int(pred_counts[c]), "pred"),
             Cell(f"{pred_counts[c] / true_counts[c]:.2f}" if true_counts[c] else "–",
                  float(pred_counts[c] / true_counts[c]) if true_counts[c] else None))
            for c in chosen]
    more = f" (the {len(chosen)} most frequent of {n_names} names, as truth or as prediction)" if len(chosen) < n_names else ""
    note = (f"Counted here from true_labels.npy and predictions.npy{more}. A name that swallows the predictions "
            "shows a blue bar far longer than its grey one (ratio well above 1).")
    return table(("name", "true (test images)", "predicted", "predicted / true"), rows) + \
        f'<p class="note">{esc(note)}</p>'


def _reliability_figure(tab: dict, path: Path) -> Path:
    """Draw a :func:`probes.metrics.reliability_table` (empty bins hold None)."""
    nan = float("nan")
    return F.reliability_figure(np.array([nan if v is None else v for v in tab["confidence"]], dtype=float),
                                np.array([nan if v is None else v for v in tab["accuracy"]], dtype=float),
                                np.asarray(tab["count"]), path)


def _reliability(res, proba: np.ndarray | None, fig_dir: Path, stem: str, opts: PageOptions,
                 report_dir: Path) -> tuple[str, str | None]:
    from probes.metrics import reliability_table

    if proba is None:
        tab = ((res.summary.get("calibration") or {}).get("reliability")
               if isinstance(res.summary, dict) else None)
        if not (isinstance(tab, dict) and tab.get("count") and sum(tab["count"])):
            why = ("This result folder has no probabilities.npy and its summary.json no reliability table (made by an "
                   "older probes), so no reliability diagram can be drawn; rerun the experiment to get one.")
            return _missing(why), "no probabilities.npy"
        cal = res.summary["calibration"]
        note = (f"From summary.json's reliability table ({len(tab['count'])} equal-width bins of the top-1 "
                f"probability, the bins of its ECE; probabilities from {cal.get('source', 'the probe')}).")
    else:
        n, c = len(res.true_labels), len(res.names)
        if proba.shape != (n, c):
            return (_missing(f"probabilities.npy has shape {proba.shape}, expected ({n}, {c}): not drawn"),
                    "bad probabilities.npy")
        sums = proba.sum(axis=1)
        if proba.min() < -1e-6 or np.abs(sums - 1).max() > 1e-3:
            return _missing("probabilities.npy holds scores that are not probabilities (rows do not sum to 1): "
                            "no reliability diagram"), "scores are not probabilities"
        # The ECE's own bins (right-closed), so the picture and summary.json's ECE agree.
        tab = reliability_table(res.true_labels, proba, n_bins=opts.reliability_bins)
        note = (f"Binned here from probabilities.npy ({opts.reliability_bins} equal-width bins of the top-1 "
                "probability); the calibration scores above are summary.json's.")
    path = _reliability_figure(tab, fig_dir / f"{stem}_reliability.png")
    return _img(href(path, start=report_dir), "reliability diagram") + f'<p class="note">{esc(note)}</p>', None


def _score_triplet(s) -> tuple | None:
    if isinstance(s, dict) and isinstance(s.get("accuracy"), (int, float)):
        return s["accuracy"], s.get("ci_low"), s.get("ci_high")
    if isinstance(s, (int, float)):
        return float(s), None, None
    return None


def _score_cell(s: tuple | None) -> Cell:
    if s is None:
        return Cell("–")
    ci = f'<br><span class="ci">{fmt_ci(list(s[1:]))}</span>' if s[1] is not None else ""
    return Cell(esc(fmt(s[0])) + ci, s[0])


def _forced_choice(summary: dict, fig_dir: Path, stem: str, report_dir: Path) -> str:
    fc = summary.get("forced_choice")
    if fc is None:
        fc = (summary.get("extra") or {}).get("forced_choice")
    if not fc:
        return _missing("no forced-choice scores in this result (summary extra.forced_choice; "
                        "run the probe with --forced-choice)")
    if not isinstance(fc, list) or not all(isinstance(e, dict) for e in fc):
        return generic(fc)
    entries, rows = [], []
    for e in fc:
        label = f"{e.get('n_way', '?')}-way, {e.get('foils', '?')} foils"
        if e.get("skipped"):
            label += f" (not run: {e['skipped']})"
        elif e.get("left_out"):
            label += f" ({e['left_out']})"
        scores = {k: _score_triplet(e.get(k)) for k in ("raw", "prior_corrected", "prior_only")}
        null = e.get("null") if isinstance(e.get("null"), dict) else None
        band = None
        if null and isinstance(null.get("q025"), (int, float)) and isinstance(null.get("q975"), (int, float)):
            band = (null["q025"], null["q975"])
        entries.append({"label": label, "chance": e.get("chance"), "scores": scores, "null": band})
        rows.append((label, *(_score_cell(scores[k]) for k in ("raw", "prior_corrected", "prior_only")),
                     e.get("chance"), Cell(generic(null, depth=1) if null else "–"), e.get("n_trials")))
    out = [table(("protocol", "raw [95% CI]", "prior-corrected [95% CI]", "prior-only [95% CI]", "chance",
                  "null", "trials"), rows)]
    if any(any(v is not None for v in en["scores"].values()) for en in entries):
        path = F.forced_choice_figure(entries, fig_dir / f"{stem}_forced_choice.png")
        out.insert(0, _img(href(path, start=report_dir), "forced choice scores"))
    out.append('<p class="note">From summary.json. Prior-only is the face-blind rule under the same foils: '
               "the face carries signal only where prior-corrected beats it and the shuffled-name null.</p>")
    out.append("<details><summary>every forced-choice field</summary>" + generic(fc) + "</details>")
    return "".join(out)


def _galleries(res, proba, store: StoreView, thumbs: Thumbnails, opts: PageOptions) -> tuple[str, list[str]]:
    y, p = res.true_labels, res.predictions
    ids = np.asarray(res.image_ids).astype(str)
    n_names = len(res.names)
    sources, problem = store.image_paths(ids)
    if problem:
        return _missing(f"No face thumbnails: {problem}."), [f"galleries: {problem}"]
    true_counts = np.bincount(y, minlength=n_names)
    confusions = np.zeros((n_names, n_names), dtype=np.int64)
    np.add.at(confusions, (y, p), 1)
    out = [f'<p class="note">Thumbnails of the original images through the store at {esc(store.path)} '
           f"(data root {esc(store.data_root)}), matched by image_ids.npy. For the {opts.gallery_names} most "
           "frequent names: test faces predicted correctly (green), and faces of other names the probe gave "
           "this name (red), those from the names most often confused with it first.</p>"]
    failed_before = len(thumbs.failed)

    def strip(rows: np.ndarray, caption, cls: str) -> str:
        if rows.size == 0:
            return '<p class="missing">none</p>'
        cells = []
        for r in rows[: opts.per_gallery]:
            rel = thumbs.make(ids[r], sources[r])
            if rel is None:
                continue
            cells.append(f'<figure><img src="{esc(rel)}" alt="{esc(ids[r])}" title="{esc(ids[r])}">'
                         f"<figcaption>{esc(caption(r))}</figcaption></figure>")
        if not cells:
            return '<p class="missing">the images could not be read (see the note below)</p>'
        return f'<div class="gallery {cls}">' + "".join(cells) + "</div>"

    for c in _top_by(true_counts, opts.gallery_names):
        name = res.names[c]
        conf_c = proba[:, c] if proba is not None and proba.shape == (len(y), n_names) else np.zeros(len(y))
        right = np.nonzero((y == c) & (p == c))[0]
        right = right[np.lexsort((ids[right], -conf_c[right]))]
        wrong = np.nonzero((p == c) & (y != c))[0]
        wrong = wrong[np.lexsort((ids[wrong], -conf_c[wrong], -confusions[y[wrong], c]))]
        out.append(f"<h3>{esc(name)}</h3>")
        out.append(f'<div class="pair"><div><h4>{int(right.size)} of {_plural(int(true_counts[c]), "test image")} '
                   f"of {esc(name)} predicted correctly</h4>{strip(right, lambda r: 'correct', 'right')}</div>"
                   f"<div><h4>{_plural(int(wrong.size), 'image')} of other names given the name {esc(name)} "
                   f"(caption: the true name)</h4>{strip(wrong, lambda r: f'truly {res.names[y[r]]}', 'wrong')}"
                   "</div></div>")
    notes = []
    failed = thumbs.failed[failed_before:]
    if failed:
        shown = "; ".join(f"{i}: {why}" for i, why in failed[:3])
        out.append(f'<p class="warn">{len(failed)} image(s) could not be read for thumbnails, e.g. {esc(shown)}</p>')
        notes.append(f"galleries: {len(failed)} images unreadable")
    return "".join(out), notes


def _controls(summary: dict) -> str:
    """summary.json ``controls``: per covariate the oracle, from-face and beyond-covariate numbers as written."""
    controls = summary.get("controls")
    if not controls:
        return _missing("no covariate controls in this result (a probe with --control COVARIATE adds them)")
    if not isinstance(controls, dict):
        return generic(controls)
    out = []
    for cov, c in controls.items():
        if not isinstance(c, dict):
            out.append(f"<h3>{esc(cov)}</h3>" + generic(c))
            continue
        o, f, b = (c.get(k) if isinstance(c.get(k), dict) else {} for k in ("oracle", "from_face", "beyond"))
        cov_face = f.get("covariate") if isinstance(f.get("covariate"), dict) else {}
        rows = [
            ("oracle: a face-blind rule that knows the true value", Cell(esc(fmt(o.get("balanced_accuracy")))),
             Cell(fmt_ci(o.get("balanced_accuracy_ci"))), Cell(esc(fmt(o.get("accuracy"))))),
            ("from the face: the value predicted, then guessing among its names",
             Cell(esc(fmt(f.get("balanced_accuracy")))), Cell(fmt_ci(f.get("balanced_accuracy_ci"))),
             Cell(esc(fmt(f.get("accuracy"))))),
            (f"{cov} itself from the face", Cell(esc(fmt(cov_face.get("balanced_accuracy")))),
             Cell(fmt_ci(cov_face.get("ci"))), Cell(esc(fmt(cov_face.get("accuracy"))))),
            ("the probe", Cell(esc(fmt(b.get("balanced_accuracy")))), Cell(fmt_ci(b.get("ci"))), Cell("–")),
            ("within-stratum null (mean, central 95%)", Cell(esc(fmt(b.get("null_mean")))),
             Cell(fmt_ci(b.get("null_ci"))), Cell("–")),
        ]
        sig = b.get("significant")
        verdict = (f'<p class="{"sig" if sig else "ns"}">Beyond {esc(cov)}: p = {esc(fmt_p(b.get("p_value")))} '
                   f"over {esc(fmt(b.get('n_permutations')))} within-stratum permutations"
                   + (f" (of {esc(fmt(b.get('n_permutations_planned')))} planned: stopped early, Besag-Clifford, once "
                      f"{esc(fmt(b.get('stop_after')))} null scores reached the observed one)" if b.get("stopped_early")
                      else "")
                   + " (smallest possible "
                   f"{esc(fmt_p(b.get('min_p_value')))}), {'significant' if sig else 'not significant'} at "
                   f"{esc(fmt(b.get('alpha')))} before the comparison's correction.</p>")
        refits = f'<p class="note">Null refits: {prose(c.get("refits") or "not recorded")}.</p>'
        missing = c.get("missing") if isinstance(c.get("missing"), dict) else {}
        miss = (f'<p class="note">{esc(missing.get("n_images"))} images with an unplaced value '
                f'({esc(", ".join(missing.get("labels") or []))}) kept as a value of their own.</p>'
                if missing.get("n_images") else "")
        rest = {k: v for k, v in c.items() if k not in ("oracle", "from_face", "beyond")}
        out.append(f"<h3>{esc(cov)}</h3>" + table(("score", "balanced acc.", "95% CI", "top-1"), rows) + verdict
                   + refits + miss + "<details><summary>every field of this control</summary>"
                   + generic({**rest, "oracle": o, "from_face": f,
                              "beyond": {k: v for k, v in b.items() if k != "null"}}) + "</details>")
    return "".join(out)


def _per_name(res) -> str:
    if not res.per_class:
        return _missing("results.csv has no rows")
    rows = [(r["name"], r["precision"], r["recall"], r["f1-score"], r["support"]) for r in res.per_class]
    return table(("name", "precision", "recall", "f1-score", "support"), rows) + \
        '<p class="note">From results.csv. Click a column to sort.</p>'


def render_experiment(res, *, page_path: Path, index_href: str, store: StoreView, thumbs: Thumbnails,
                      comparison_row: dict | None = None, options: PageOptions = PageOptions()) -> ExperimentPage:
    """Write ``page_path`` for the result folder ``res`` (:class:`probes.results.Result`)."""
    opts = options
    report_dir = page_path.parent
    fig_dir = report_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    stem = page_path.stem
    summary = res.summary
    notes: list[str] = []
    proba_path = res.path / "probabilities.npy"
    proba = np.load(proba_path) if proba_path.is_file() else None
    n_test = len(res.true_labels)

    task = summary.get("name_task") or {}
    subtitle = (f'<a href="{esc(index_href)}">← all experiments</a> · family {esc(summary.get("family"))} · '
                f"model {esc(summary.get('model'))}" + (f" ({esc(summary.get('view'))})" if summary.get("view") else "")
                + f" · names {esc(task.get('spec'))} ({esc(task.get('n_names', len(res.names)))}) · {n_test} test images")
    files = [f for f in RAW_FILES if (res.path / f).is_file()]
    links = " · ".join(f'<a href="{esc(href(res.path / f, start=report_dir))}">{esc(f)}</a>' for f in files)
    sections = [f'<p class="note">Result folder {esc(res.path)}: {links}</p>']
    control = summary.get("control")
    if control:
        what = generic(control, depth=1) if isinstance(control, dict) else esc(control)
        sections.append(f'<p class="warn">This result is a control, never ranked: {what}</p>')

    incomplete = summary.get("incomplete")
    if incomplete:
        sections.append('<p class="warn">Incomplete data, used knowingly (--allow-incomplete): '
                        + esc("; ".join(map(str, incomplete)) if isinstance(incomplete, list) else incomplete) + "</p>")
    sections.append(_section("headline", "Headline metrics", _headline(summary, list(res.names), comparison_row)))
    if summary.get("controls"):
        sections.append(_section("controls", "Is it more than the covariate?", _controls(summary)))
    if comparison_row:
        sections.append("<details><summary>this experiment's row of comparison.json</summary>"
                        + generic(comparison_row) + "</details>")
    if n_test:
        sections.append(_section("confusion", "Confusions", _confusion(res, opts)))
        body, note = _recall_frequency(res, store, fig_dir, stem, report_dir)
        notes += [note] if note else []
        sections.append(_section("recall", "Per-name recall against training frequency", body))
        sections.append(_section("distribution", "Predicted vs true names", _distribution(res, opts)))
        body, note = _reliability(res, proba, fig_dir, stem, opts, report_dir)
        notes += [note] if note else []
        sections.append(_section("calibration", "Reliability (calibration)", body))
    else:
        sections.append(_missing("this result has no test predictions"))
    sections.append(_section("forced-choice", "Forced choice", _forced_choice(summary, fig_dir, stem, report_dir)))
    if n_test:
        body, gnotes = _galleries(res, proba, store, thumbs, opts)
        notes += gnotes
        sections.append(_section("galleries", "Faces per name", body))
    sections.append(_section("per-name", "Per-name scores", _per_name(res)))

    plan = summary.get("plan")
    sections.append(_section("plan", "The plan's evaluate_model output",
                             generic(plan) if plan else _missing("no plan output in this result")))
    extra = {k: v for k, v in (summary.get("extra") or {}).items() if k not in ("forced_choice", "cv_results")}
    unknown = {k: v for k, v in summary.items() if k not in KNOWN_SUMMARY_KEYS}
    more = []
    if extra:
        more.append("<h3>Family results (summary extra)</h3>" + generic(extra))
    if "cv_results" in (summary.get("extra") or {}):
        more.append('<p class="note">The selection grid (extra.cv_results) is in summary.json.</p>')
    for k, v in unknown.items():
        more.append(f"<h3>{esc(k)}</h3>" + generic(v))
    for k in ("split", "probe", "timings"):
        if summary.get(k):
            more.append(f"<h3>{esc(k)}</h3>" + generic(summary[k]))
    if summary.get("model_spec"):
        more.append("<details><summary>model spec</summary>" + generic(summary["model_spec"]) + "</details>")
    more.append(f'<p class="note">Written {esc(summary.get("created"))} on {esc(summary.get("host"))}; '
                f"store {esc(summary.get('store_path'))}.</p>")
    sections.append(_section("details", "Everything else in summary.json", "".join(more)))

    toc = [("headline", "metrics"), ("controls", "covariate controls"), ("confusion", "confusions"), ("recall", "recall"),
           ("distribution", "names"), ("calibration", "calibration"), ("forced-choice", "forced choice"),
           ("galleries", "faces"), ("per-name", "per name"), ("details", "details")]
    present = {a for a, _ in toc if f'id="{a}"' in "".join(sections)}
    page_path.write_text(page(str(res.experiment), "".join(sections), subtitle=subtitle,
                              toc=[t for t in toc if t[0] in present]), encoding="utf-8")
    return ExperimentPage(path=page_path, experiment=str(res.experiment), notes=tuple(notes))

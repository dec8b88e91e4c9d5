"""The report's figures: data in, one PNG out, nothing computed beyond what is drawn.

Every function takes arrays the caller read from a result folder (or counted from its
``predictions.npy`` / ``probabilities.npy``) and writes a PNG. Confusions and name counts are
drawn as HTML tables by the page itself (crisp, searchable, and no figure to render). matplotlib's object interface
(``Figure`` without pyplot) is used, so no global backend or figure state is touched and the
figures render headless.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "accuracy_figure",
    "forced_choice_figure",
    "recall_frequency_figure",
    "reliability_figure",
]

DPI = 100
SIGNIFICANT = "#1f77b4"
NOT_SIGNIFICANT = "#9aa5b1"


def _figure(width: float, height: float, *, left: float = 0.8, right: float = 0.2, bottom: float = 0.55,
            top: float = 0.3, hspace: float = 0.6):
    """A figure with fixed margins in inches: a layout engine would cost a second full draw."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        hspace=hspace)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    return path


def _short(label: str, n: int = 18) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def accuracy_figure(points: Sequence[dict], path: Path, *, flag_label: str = "significant") -> Path:
    """Balanced accuracy with its 95% CI per experiment, one panel per name task, best at the top.

    ``points``: ``{"experiment", "task", "balanced_accuracy", "lo", "hi", "baseline", "flag"}`` per
    experiment, values as comparison.json holds them; ``flag`` colours the point (``flag_label``
    says what it means), ``baseline`` is drawn as a dashed line per task.
    """
    tasks: dict[str, list[dict]] = {}
    for r in points:
        tasks.setdefault(str(r["task"]), []).append(r)
    heights = [0.3 * len(rs) + 0.25 for rs in tasks.values()]
    gap = 0.45  # inches between panels, room for the next panel's title
    fig = _figure(8.5, sum(heights) + gap * (len(tasks) - 1) + 0.95, left=2.4, top=0.35,
                  hspace=gap / (sum(heights) / len(heights)))
    axes = fig.subplots(len(tasks), 1, squeeze=False, sharex=True, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (task, rs) in zip(axes, tasks.items()):
        rs = sorted(rs, key=lambda r: r["balanced_accuracy"])
        y = np.arange(len(rs))
        v = np.array([r["balanced_accuracy"] for r in rs], dtype=float)
        lo = np.array([r.get("lo") for r in rs], dtype=float)
        hi = np.array([r.get("hi") for r in rs], dtype=float)
        colours = [SIGNIFICANT if r.get("flag") else NOT_SIGNIFICANT for r in rs]
        for i in np.nonzero(np.isfinite(lo) & np.isfinite(hi))[0]:
            ax.plot([lo[i], hi[i]], [y[i], y[i]], color=colours[i], lw=2.2, solid_capstyle="butt")
        ax.scatter(v, y, color=colours, zorder=3, s=28)
        baselines = sorted({float(r["baseline"]) for r in rs if r.get("baseline") is not None})
        for b in baselines:
            ax.axvline(b, color="k", ls="--", lw=1)
        ax.set_yticks(y, [_short(str(r["experiment"]), 30) for r in rs], fontsize=8)
        ax.set_ylim(-0.7, len(rs) - 0.3)
        shown = ", ".join(f"{b:.3g}" for b in baselines[:3])
        ax.set_title(task + (f"; baseline {shown} (dashed)" if baselines else ""), fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(f"balanced accuracy, 95% CI (blue: {flag_label}; grey: not)")
    return _save(fig, path)


def recall_frequency_figure(names: Sequence[str], recall: np.ndarray, frequency: np.ndarray, path: Path, *,
                            xlabel: str, label_top: int = 12) -> Path:
    """Per-name recall against how often the name occurs; the most frequent names labelled."""
    recall = np.asarray(recall, dtype=float)
    frequency = np.asarray(frequency, dtype=float)
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    ax.scatter(frequency, recall, s=22, alpha=0.75, color=SIGNIFICANT)
    # Names on the same point share one label instead of overprinting each other.
    at: dict[tuple[float, float], list[str]] = {}
    for i in np.argsort(-frequency, kind="stable")[:label_top]:
        at.setdefault((float(frequency[i]), float(recall[i])), []).append(_short(str(names[i]), 14))
    for (x, y), labels in at.items():
        text = ", ".join(labels[:4]) + (f" +{len(labels) - 4}" if len(labels) > 4 else "")
        ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    positive = frequency[frequency > 0]
    if positive.size and positive.max() > 50 * positive.min():
        ax.set_xscale("log")
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("recall (results.csv)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def reliability_figure(confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, path: Path) -> Path:
    """Reliability diagram: mean top-1 confidence against top-1 accuracy per confidence bin."""
    confidence = np.asarray(confidence, dtype=float)
    accuracy = np.asarray(accuracy, dtype=float)
    counts = np.asarray(counts)
    fig = _figure(5.2, 5.0, hspace=0.08)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="k", ls="--", lw=1, label="perfect calibration")
    used = counts > 0
    ax.plot(confidence[used], accuracy[used], "o-", color=SIGNIFICANT, label="this probe")
    ax.set_ylabel("top-1 accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    edges = np.linspace(0, 1, counts.size + 1)
    hist.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#7f7f7f")
    hist.set_xlabel("top-1 confidence (max probability)")
    hist.set_ylabel("images")
    return _save(fig, path)


def forced_choice_figure(entries: Sequence[dict], path: Path) -> Path:
    """Forced-choice scores (raw, prior-corrected, prior-only) with CIs, chance and the null band.

    ``entries``: ``{"label", "chance", "scores": {kind: (accuracy, lo, hi)}, "null": (lo, hi) or
    None}`` per protocol.
    """
    kinds = ("raw", "prior_corrected", "prior_only")
    colours = {"raw": SIGNIFICANT, "prior_corrected": "#d62728", "prior_only": "#7f7f7f"}
    fig = _figure(7.5, 0.55 * len(entries) + 1.3, left=1.9, bottom=0.85)
    ax = fig.add_subplot()
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for i, e in enumerate(entries):
        if e.get("null"):
            lo, hi = e["null"]
            ax.fill_betweenx([i - 0.38, i + 0.38], lo, hi, color="#ffdd99", zorder=0,
                             label=once("shuffled-name null, 95%"))
        if e.get("chance") is not None:
            ax.plot([e["chance"]] * 2, [i - 0.4, i + 0.4], color="k", ls="--", lw=1, label=once("chance"))
        for k, kind in enumerate(kinds):
            s = e["scores"].get(kind)
            if s is None:
                continue
            acc, lo, hi = s
            off = (k - 1) * 0.22
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [i + off] * 2, color=colours[kind], lw=2)
            ax.scatter([acc], [i + off], color=colours[kind], s=24, zorder=3, label=once(kind.replace("_", "-")))
    ax.set_yticks(range(len(entries)), [e["label"] for e in entries], fontsize=8)
    ax.set_ylim(len(entries) - 0.5, -0.5)
    ax.set_xlabel("forced-choice accuracy, 95% CI")
    # Below the axes: inside, it would hide the scores near 1.
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=len(labels), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)

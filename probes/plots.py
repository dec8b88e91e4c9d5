"""Plot objects for the comparison report: data in the constructor, ``plot(ax=None) -> self``.

Every plot draws data that :func:`probes.compare.compare_results` wrote into
``comparison.json`` (rows, name distributions, per-name F1); nothing is recomputed here.
matplotlib is imported inside :meth:`plot` (Agg backend when no figure exists yet), so importing
this module costs nothing and works headless. Plots with one panel per names task take a list
of axes (or make their own figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["AccuracyPlot", "F1DistributionPlot", "PredictedCountsPlot"]


def _figure(n_panels: int, *, width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_panels, 1, figsize=(width, height), squeeze=False)
    return list(axes[:, 0])


def _panel_axes(ax, n: int, *, width: float, heights: list[float]):
    if ax is None:
        return _figure(n, width=width, height=sum(heights))
    axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) != n:
        raise ValueError(f"this plot has {n} panels (one per names task); got {len(axes)} axes")
    return axes


class _Plot:
    axes_: list | None = None

    def save(self, path: str | Path, *, dpi: int = 120) -> Path:
        """Draw (if not yet drawn) and write a PNG; closes the figure."""
        import matplotlib.pyplot as plt

        if self.axes_ is None:
            self.plot()
        fig = self.axes_[0].figure
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return Path(path)


def _by_task(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["task_key"], []).append(r)
    return out


@dataclass
class AccuracyPlot(_Plot):
    """Per names task (one panel each): experiments sorted by balanced accuracy with 95% CIs,
    top-1 with its CI beside them, chance 1/C as a line, and the majority and prior-matched
    top-1 baselines as marks. ``rows``: comparison rows (``experiments`` of comparison.json)."""

    rows: list[dict]
    title: str = "Name signal per experiment (95% CI)"

    def plot(self, ax=None) -> AccuracyPlot:
        tasks = _by_task(self.rows)
        heights = [0.42 * len(rs) + 1.4 for rs in tasks.values()]
        axes = _panel_axes(ax, len(tasks), width=8.5, heights=heights)
        for a, (task, rs) in zip(axes, tasks.items()):
            rs = sorted(rs, key=lambda r: r["balanced_accuracy"])
            y = np.arange(len(rs))
            for off, key, lo, hi, label in ((-0.15, "balanced_accuracy", "ba_lo", "ba_hi", "balanced accuracy"),
                                            (0.15, "accuracy", "acc_lo", "acc_hi", "top-1")):
                v = np.array([r[key] for r in rs])
                err = np.array([[r[key] - r[lo] for r in rs], [r[hi] - r[key] for r in rs]])
                a.errorbar(v, y + off, xerr=np.clip(err, 0, None), fmt="o", capsize=3, label=label)
            a.axvline(rs[0]["chance_uniform"], color="k", lw=1, ls="--", label="chance 1/C")
            a.scatter([r["majority"] for r in rs], y + 0.15, marker="x", color="grey", label="majority (top-1)", zorder=3)
            a.scatter([r["prior_matched"] for r in rs], y + 0.15, marker="+", color="tab:red", s=60,
                      label="prior-matched (top-1)", zorder=3)
            a.set_yticks(y, [r["experiment"] + ("" if r.get("above_baseline") else " (n.s.)") for r in rs],
                         fontsize=8)
            a.set_xlabel("accuracy")
            a.set_title(f"{task}: sorted by balanced accuracy", fontsize=10)
            a.legend(fontsize="x-small", loc="lower right")
        axes[0].figure.suptitle(self.title)
        self.axes_ = axes
        return self


@dataclass
class PredictedCountsPlot(_Plot):
    """Per names task: the share of predictions each name gets, names ordered by their TRUE test
    frequency, with the true distribution as the reference line. A probe that over-predicts
    frequent names rises above the line on the left (the plan's "William dominance").
    ``distributions``: comparison.json's ``distributions``."""

    distributions: dict[str, dict]
    title: str = "Predicted vs true name shares"
    max_lines: int = 8

    def plot(self, ax=None) -> PredictedCountsPlot:
        axes = _panel_axes(ax, len(self.distributions), width=8.5, heights=[3.4] * len(self.distributions))
        for a, (task, d) in zip(axes, self.distributions.items()):
            x = np.arange(1, len(d["names"]) + 1)
            for name, share in list(d["predicted_share"].items())[: self.max_lines]:
                a.plot(x, share, drawstyle="steps-mid", lw=1, label=name)
            a.plot(x, d["true_share"], drawstyle="steps-mid", color="k", lw=2.5, label="true test names")
            if len(x) <= 30:
                a.set_xticks(x, d["names"], rotation=90, fontsize=6)
            a.set_xlabel("names, most frequent in the test set first")
            a.set_ylabel("share of test images")
            shown = min(len(d["predicted_share"]), self.max_lines)
            a.set_title(f"{task} ({shown} of {len(d['predicted_share'])} experiments)", fontsize=10)
            a.legend(fontsize="x-small", ncol=2)
        axes[0].figure.suptitle(self.title)
        self.axes_ = axes
        return self


@dataclass
class F1DistributionPlot(_Plot):
    """Per names task with enough names: the distribution of per-name F1 per experiment
    (box plot, experiments labelled, number of names in the title). ``f1``: task -> experiment
    -> per-name F1 (comparison.json ``distributions[task]["per_name_f1"]``)."""

    f1: dict[str, dict[str, list[float]]]
    title: str = "Per-name F1"

    def plot(self, ax=None) -> F1DistributionPlot:
        heights = [0.42 * len(v) + 1.6 for v in self.f1.values()]
        axes = _panel_axes(ax, len(self.f1), width=8.5, heights=heights)
        for a, (task, per) in zip(axes, self.f1.items()):
            labels = list(per)
            n_names = len(next(iter(per.values())))
            a.boxplot([np.asarray(per[k]) for k in labels], orientation="horizontal", tick_labels=labels)
            a.set_xlabel(f"F1 per name ({n_names} names)")
            a.set_title(task, fontsize=10)
            a.tick_params(axis="y", labelsize=8)
        axes[0].figure.suptitle(self.title)
        self.axes_ = axes
        return self

"""Plot objects for the comparison report: data in the constructor, ``plot(ax=None) -> self``.

matplotlib is imported inside :meth:`plot` (Agg backend when no figure exists yet), so
importing this module costs nothing and works headless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["AccuracyPlot", "F1DistributionPlot", "PredictedCountsPlot"]


def _axes(ax, *, figsize):
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
    return ax


class _Plot:
    ax_ = None

    def save(self, path: str | Path, *, dpi: int = 120) -> Path:
        """Draw (if not yet drawn) and write a PNG; closes the figure."""
        import matplotlib.pyplot as plt

        if self.ax_ is None:
            self.plot()
        fig = self.ax_.figure
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return Path(path)


@dataclass
class AccuracyPlot(_Plot):
    """Balanced accuracy and top-1 with 95% CIs per experiment, chance levels as markers.

    ``rows``: dicts with ``experiment``, ``balanced_accuracy``, ``ba_lo``, ``ba_hi``,
    ``accuracy``, ``acc_lo``, ``acc_hi``, ``chance_uniform``, ``majority``.
    """

    rows: list[dict]
    title: str = "Name signal per experiment (95% CI)"

    def plot(self, ax=None) -> AccuracyPlot:
        ax = _axes(ax, figsize=(8, 0.45 * len(self.rows) + 1.8))
        y = np.arange(len(self.rows))
        for off, key, lo, hi, label in (
            (-0.15, "balanced_accuracy", "ba_lo", "ba_hi", "balanced accuracy"),
            (0.15, "accuracy", "acc_lo", "acc_hi", "top-1"),
        ):
            v = np.array([r[key] for r in self.rows])
            err = np.array([[r[key] - r[lo] for r in self.rows], [r[hi] - r[key] for r in self.rows]])
            ax.errorbar(v, y + off, xerr=np.clip(err, 0, None), fmt="o", capsize=3, label=label)
        ax.scatter([r["chance_uniform"] for r in self.rows], y, marker="|", s=200, color="k", label="chance 1/C")
        ax.scatter([r["majority"] for r in self.rows], y + 0.15, marker="x", color="grey", label="majority (top-1)")
        ax.set_yticks(y, [r["experiment"] for r in self.rows])
        ax.set_xlabel("accuracy")
        ax.set_title(self.title)
        ax.legend(fontsize="small", loc="best")
        self.ax_ = ax
        return self


@dataclass
class PredictedCountsPlot(_Plot):
    """Predicted-count per name, sorted, one line per experiment: one name dominating shows
    as a spike at rank 1 (the plan's "William dominance")."""

    counts: dict[str, np.ndarray]
    title: str = "How often each name is predicted (sorted)"

    def plot(self, ax=None) -> PredictedCountsPlot:
        ax = _axes(ax, figsize=(8, 4))
        for name, c in self.counts.items():
            c = np.sort(np.asarray(c))[::-1]
            ax.plot(np.arange(1, c.size + 1), c / max(c.sum(), 1), label=name, drawstyle="steps-mid")
        ax.set_xlabel("name rank by predicted count")
        ax.set_ylabel("share of predictions")
        ax.set_title(self.title)
        ax.legend(fontsize="small")
        self.ax_ = ax
        return self


@dataclass
class F1DistributionPlot(_Plot):
    """Distribution of per-name F1 per experiment (box plot)."""

    f1: dict[str, np.ndarray]
    title: str = field(default="Per-name F1")

    def plot(self, ax=None) -> F1DistributionPlot:
        ax = _axes(ax, figsize=(8, 0.45 * len(self.f1) + 1.8))
        labels = list(self.f1)
        ax.boxplot([np.asarray(self.f1[k]) for k in labels], orientation="horizontal", tick_labels=labels)
        ax.set_xlabel("F1 per name")
        ax.set_title(self.title)
        self.ax_ = ax
        return self

"""The plan's result folder ("Output Format (Same for All)"): write it and read it back.

``results/track3_{experiment}/`` holds

- ``config.json``: model and training config
- ``predictions.npy`` (N,) int64 predicted name indices
- ``true_labels.npy`` (N,) int64 true name indices (indices into ``names.json``)
- ``names.json``: the task's names
- ``results.csv``: per-name precision, recall, f1-score, support
- ``summary.json``: metrics, CIs, chance levels, split hash, store path, model spec, probe
  parameters, timings, warnings
- ``image_ids.npy`` (N,): the store image id of every prediction
- ``run.log``: what ran, on which device, and how long it took

and, when available, ``top5.npy`` (N, 5) best-first name indices (top-5 accuracy is
recomputed from it), ``groups.npy`` (N,) identities of the test images (cluster bootstrap and
paired comparisons), ``probabilities.npy`` (N, C) and ``embeddings.npy`` (only on request).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.errors import ResultFormatError

__all__ = ["REQUIRED_FILES", "Result", "find_results", "read_result", "result_dir", "write_result"]

REQUIRED_FILES = (
    "config.json",
    "predictions.npy",
    "true_labels.npy",
    "names.json",
    "results.csv",
    "summary.json",
    "image_ids.npy",
    "run.log",
)
CSV_FIELDS = ("name", "precision", "recall", "f1-score", "support")


def result_dir(out: str | Path, experiment: str) -> Path:
    """``out/track3_{experiment}``: the plan's folder name."""
    if not experiment or "/" in experiment or experiment.startswith("."):
        raise ValueError(f"experiment name {experiment!r} must be a plain folder name, e.g. 'dinov2_linear'")
    return Path(out) / f"track3_{experiment}"


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")
    tmp.replace(path)


def write_result(
    out_dir: str | Path,
    *,
    config: dict,
    predictions,
    true_labels,
    names,
    image_ids,
    summary: dict,
    per_class: list[dict],
    top5=None,
    groups=None,
    proba=None,
    embeddings=None,
    log: list[str] | None = None,
) -> Path:
    """Write one experiment's folder; returns its path. ``summary.json`` is written last, so a
    folder with a summary is complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = np.asarray(predictions, dtype=np.int64)
    true_labels = np.asarray(true_labels, dtype=np.int64)
    n = predictions.shape[0]
    names = [str(x) for x in names]
    if predictions.shape != (n,) or true_labels.shape != (n,) or len(image_ids) != n:
        raise ResultFormatError(
            f"predictions {predictions.shape}, true_labels {true_labels.shape} and "
            f"image_ids ({len(image_ids)},) must all be (N,)"
        )
    if n and (max(predictions.max(), true_labels.max()) >= len(names) or min(predictions.min(), true_labels.min()) < 0):
        raise ResultFormatError(f"labels must be indices into the {len(names)} names")
    _write_json(out_dir / "config.json", config)
    np.save(out_dir / "predictions.npy", predictions)
    np.save(out_dir / "true_labels.npy", true_labels)
    np.save(out_dir / "image_ids.npy", np.asarray(image_ids).astype(str))
    _write_json(out_dir / "names.json", names)
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in per_class:
            writer.writerow({k: row[k] for k in CSV_FIELDS})
    if top5 is not None:
        np.save(out_dir / "top5.npy", np.asarray(top5, dtype=np.int64))
    if groups is not None:
        np.save(out_dir / "groups.npy", np.asarray(groups).astype(str))
    if proba is not None:
        np.save(out_dir / "probabilities.npy", np.asarray(proba, dtype=np.float32))
    if embeddings is not None:
        np.save(out_dir / "embeddings.npy", np.asarray(embeddings, dtype=np.float32))
    (out_dir / "run.log").write_text("\n".join(log or []) + "\n")
    _write_json(out_dir / "summary.json", summary)
    return out_dir


@dataclass(frozen=True)
class Result:
    """One result folder read back. Arrays are loaded; ``embeddings`` only on request."""

    path: Path
    config: dict
    summary: dict
    names: list
    predictions: np.ndarray
    true_labels: np.ndarray
    image_ids: np.ndarray
    per_class: list
    top5: np.ndarray | None
    groups: np.ndarray | None
    log: str

    @property
    def experiment(self) -> str:
        """The experiment name recorded in summary.json."""
        return str(self.summary.get("experiment", self.path.name.removeprefix("track3_")))

    def load_embeddings(self) -> np.ndarray:
        """``embeddings.npy`` (written only with ``--save-embeddings``)."""
        p = self.path / "embeddings.npy"
        if not p.exists():
            raise ResultFormatError(f"{p} does not exist; rerun the experiment with --save-embeddings")
        return np.load(p)

    def load_probabilities(self) -> np.ndarray:
        """``probabilities.npy`` when the experiment saved it."""
        p = self.path / "probabilities.npy"
        if not p.exists():
            raise ResultFormatError(f"{p} does not exist; this experiment did not save probabilities")
        return np.load(p)


def read_result(path: str | Path) -> Result:
    """Read a result folder back, checking that every required file exists with its shape."""
    path = Path(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    if missing:
        raise ResultFormatError(f"{path} is not a complete result folder: missing {', '.join(missing)}")
    predictions = np.load(path / "predictions.npy")
    true_labels = np.load(path / "true_labels.npy")
    image_ids = np.load(path / "image_ids.npy")
    names = json.loads((path / "names.json").read_text())
    if not (predictions.ndim == 1 and predictions.shape == true_labels.shape == image_ids.shape):
        raise ResultFormatError(
            f"{path}: predictions {predictions.shape}, true_labels {true_labels.shape}, "
            f"image_ids {image_ids.shape} must all be (N,)"
        )
    with open(path / "results.csv", newline="") as f:
        per_class = [
            {
                "name": r["name"],
                "precision": float(r["precision"]),
                "recall": float(r["recall"]),
                "f1-score": float(r["f1-score"]),
                "support": int(float(r["support"])),
            }
            for r in csv.DictReader(f)
        ]
    top5 = np.load(path / "top5.npy") if (path / "top5.npy").exists() else None
    groups = np.load(path / "groups.npy") if (path / "groups.npy").exists() else None
    return Result(
        path=path,
        config=json.loads((path / "config.json").read_text()),
        summary=json.loads((path / "summary.json").read_text()),
        names=names,
        predictions=predictions,
        true_labels=true_labels,
        image_ids=image_ids,
        per_class=per_class,
        top5=top5,
        groups=groups,
        log=(path / "run.log").read_text(),
    )


def find_results(root: str | Path) -> list[Path]:
    """Every complete result folder (one holding ``summary.json``) under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results directory {root} does not exist")
    return sorted(p.parent for p in root.rglob("summary.json") if (p.parent / "predictions.npy").exists())

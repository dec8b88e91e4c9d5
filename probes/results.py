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

Writes are atomic: :func:`write_result` writes every file into a hidden temporary sibling
(``.{folder}.tmp-{host}-{pid}-{random}``), records a **manifest** (size and sha256 of every
data file) in ``summary.json``, written last, and only then renames the folder into place. A
rerun therefore replaces an old folder only once the new one is complete, and a process killed
at any moment leaves the old complete folder, the new complete folder, or (killed between the
two renames of a replacement) none, with the old one kept as a hidden ``.{folder}.old-*``
sibling. :func:`read_result` checks every file against the manifest and refuses a folder whose
files disagree with it. ``run.log`` and files added later (``fingerprint.json`` of ``probes
track3``) are not in the manifest: logs are appended to.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.errors import ResultFormatError

__all__ = [
    "REQUIRED_FILES",
    "RESULT_FORMAT",
    "Result",
    "check_manifest",
    "file_manifest",
    "find_results",
    "read_result",
    "result_dir",
    "write_result",
]

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
# Version 2: manifest of file digests, BCa intervals with their baselines, calibration.
RESULT_FORMAT = {"name": "probes.result", "version": 2}
# Appended to after the folder is written, so never in the manifest.
_UNLISTED = ("summary.json", "run.log", "fingerprint.json")


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


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_manifest(folder: str | Path) -> dict:
    """``{file: {"bytes", "sha256"}}`` of every data file of a result folder (not the summary or logs)."""
    folder = Path(folder)
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": _digest(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in _UNLISTED and not p.name.endswith(".tmp")
    }


def check_manifest(folder: str | Path, summary: dict) -> list[str]:
    """Problems of a folder against its summary's manifest (empty list: every file agrees)."""
    folder = Path(folder)
    manifest = summary.get("manifest")
    if not isinstance(manifest, dict):
        return ["summary.json has no file manifest (written by probes before result format 2); rerun the experiment"]
    problems = []
    for name, entry in manifest.items():
        p = folder / name
        if not p.is_file():
            problems.append(f"{name} is listed in the manifest but missing")
        elif p.stat().st_size != entry.get("bytes") or _digest(p) != entry.get("sha256"):
            problems.append(f"{name} does not match its manifest digest (changed after summary.json was written)")
    return problems


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _clean_stale(parent: Path, name: str) -> None:
    """Remove temporary siblings that a killed writer on this host left behind."""
    host = socket.gethostname()
    for p in parent.glob(f".{name}.tmp-*"):
        parts = p.name[len(f".{name}.tmp-"):].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` folder to ``final``, replacing an existing one."""
    try:
        os.rename(tmp, final)  # no folder yet: atomic
        return
    except OSError:
        if not final.exists():
            raise
    old = final.parent / f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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
    """Write one experiment's folder atomically (see the module docstring); returns its path.

    ``summary`` is written with two more keys: ``format`` (:data:`RESULT_FORMAT`) and
    ``manifest`` (:func:`file_manifest` of the data files).
    """
    final = Path(out_dir)
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
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(final.parent, final.name)
    tmp = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write_json(tmp / "config.json", config)
        np.save(tmp / "predictions.npy", predictions)
        np.save(tmp / "true_labels.npy", true_labels)
        np.save(tmp / "image_ids.npy", np.asarray(image_ids).astype(str))
        _write_json(tmp / "names.json", names)
        with open(tmp / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for row in per_class:
                writer.writerow({k: row[k] for k in CSV_FIELDS})
        if top5 is not None:
            np.save(tmp / "top5.npy", np.asarray(top5, dtype=np.int64))
        if groups is not None:
            np.save(tmp / "groups.npy", np.asarray(groups).astype(str))
        if proba is not None:
            np.save(tmp / "probabilities.npy", np.asarray(proba, dtype=np.float32))
        if embeddings is not None:
            np.save(tmp / "embeddings.npy", np.asarray(embeddings, dtype=np.float32))
        (tmp / "run.log").write_text("\n".join(log or []) + "\n")
        full = {**summary, "format": dict(RESULT_FORMAT), "manifest": file_manifest(tmp)}
        _write_json(tmp / "summary.json", full)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    return final


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


def read_result(path: str | Path, *, verify: bool = True) -> Result:
    """Read a result folder back, checking that every required file exists with its shape and
    (``verify``) that every data file matches the manifest in ``summary.json``.

    Raises :class:`ResultFormatError` naming the files that disagree; a folder written before
    result format 2 (no manifest) is refused too, since nothing says its files belong together.
    """
    path = Path(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    if missing:
        raise ResultFormatError(f"{path} is not a complete result folder: missing {', '.join(missing)}")
    try:
        summary = json.loads((path / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise ResultFormatError(f"{path}/summary.json is not valid JSON ({e}); rerun the experiment") from None
    if verify:
        problems = check_manifest(path, summary)
        if problems:
            raise ResultFormatError(f"{path}: its files disagree with summary.json: {'; '.join(problems)}; "
                                    "rerun the experiment to rewrite the folder")
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
        summary=summary,
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
    """Every result folder (one holding ``summary.json`` and ``predictions.npy``) under
    ``root``, sorted; hidden folders (temporary or replaced ones of an atomic write) are skipped."""
    from probes.errors import ResultsNotFoundError

    root = Path(root)
    if not root.is_dir():
        raise ResultsNotFoundError(f"results directory {root} does not exist")
    return sorted(
        p.parent for p in root.rglob("summary.json")
        if (p.parent / "predictions.npy").exists()
        and not any(part.startswith(".") for part in p.parent.relative_to(root).parts)
    )

"""Dataset ingestion: an image folder or a manifest CSV becomes an index of images.

Two layouts are accepted:

- an image folder ``ROOT/<name>/**/*.{jpg,jpeg,png,webp}``: the name is the first directory
  level; when every image sits at least one level deeper (``ROOT/<name>/<identity>/...``) that
  second level is the person identity (scoped by name: ``<name>/<identity>``);
- a manifest CSV with columns ``path,name`` and optional ``identity``, ``image_id``; paths are
  relative to the manifest's directory (the dataset root).

The image ID defaults to the POSIX path relative to the root: stable and unique. Names are kept
verbatim (unicode included); the label of a name is its index in the sorted list of names.
Every problem is reported before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from facestore.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_MAX_LISTED = 10


@dataclass(frozen=True, eq=False)
class DatasetIndex:
    """The images of a dataset, one row each, sorted by image ID.

    ``sizes`` and ``mtimes_ns`` come from ``stat`` (``-1`` for a file that does not exist);
    content hashes are computed on demand by :meth:`content_hashes`.
    """

    root: Path
    image_ids: np.ndarray  # str (N,)
    paths: np.ndarray  # str (N,), POSIX, relative to root
    row_names: np.ndarray  # str (N,)
    identities: np.ndarray | None  # str (N,) or None
    sizes: np.ndarray  # int64 (N,)
    mtimes_ns: np.ndarray  # int64 (N,)
    source: str  # "folder" | "manifest"

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def names(self) -> list[str]:
        """Sorted unique names; a name's label is its index here."""
        return sorted(set(self.row_names.tolist()))

    @property
    def labels(self) -> np.ndarray:
        lookup = {n: i for i, n in enumerate(self.names)}
        return np.fromiter((lookup[n] for n in self.row_names.tolist()), dtype=np.int32, count=len(self))

    def absolute_path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def content_hashes(self, rows: np.ndarray | None = None, *, workers: int = 8) -> np.ndarray:
        """blake2b-128 hex digests of the files' bytes (``""`` for a missing or unreadable file)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        root = os.fspath(self.root)
        return hash_files([os.path.join(root, self.paths[i]) for i in rows], workers=workers)


def hash_files(paths: list[str], *, workers: int = 8) -> np.ndarray:
    """:func:`file_hash` of many files, in ``workers`` threads (hashing releases the GIL)."""
    if not paths:
        return np.zeros(0, dtype="<U32")
    # One task per slice, not per file: per-file futures cost more than hashing a missing file.
    n_tasks = max(1, min(len(paths), workers * 4))
    bounds = np.linspace(0, len(paths), n_tasks + 1).astype(int)
    slices = [paths[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        parts = list(pool.map(lambda ps: [file_hash(p) for p in ps], slices))
    return np.asarray([h for part in parts for h in part], dtype="<U32")


def file_hash(path: str | os.PathLike) -> str:
    """A content fingerprint: blake2b (16-byte digest) of the file's bytes; ``""`` if unreadable."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


def scan_dataset(data: str | os.PathLike) -> DatasetIndex:
    """Index a dataset: an image folder, or a manifest ``.csv`` file.

    Raises :class:`DatasetError` (a ``ValueError``) for an empty dataset, a missing or
    unreadable manifest, missing columns, duplicate image IDs or paths that escape the root.
    """
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"dataset {data} does not exist; pass an image folder ROOT/<name>/... or a manifest CSV")
    if data.is_dir():
        return _scan_folder(data)
    if data.suffix.lower() == ".csv":
        return _scan_manifest(data)
    raise DatasetError(
        f"dataset {data} is neither a folder nor a .csv manifest; pass ROOT (laid out as ROOT/<name>/**/*.jpg) "
        "or a CSV with columns path,name[,identity,image_id]"
    )


def _scan_folder(root: Path) -> DatasetIndex:
    root = root.resolve()
    rel_paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        if Path(dirpath) == root:
            continue  # images directly under ROOT have no name: ignored (documented)
        for fn in sorted(filenames):
            if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."):
                rel_paths.append((Path(dirpath) / fn).relative_to(root).as_posix())
    if not rel_paths:
        raise DatasetError(
            f"no images found under {root}: expected ROOT/<name>/[<identity>/]*.{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}}"
        )
    parts = [PurePosixPath(p).parts for p in rel_paths]
    names = [p[0] for p in parts]
    deep = [len(p) >= 3 for p in parts]
    if all(deep):
        identities = [f"{p[0]}/{p[1]}" for p in parts]
    elif not any(deep):
        identities = None
    else:
        flat = [rel_paths[i] for i, d in enumerate(deep) if not d][:_MAX_LISTED]
        raise DatasetError(
            f"{root}: some images sit in ROOT/<name>/<identity>/ and others directly in ROOT/<name>/ "
            f"(e.g. {', '.join(flat)}); put every image in an identity folder, or none, "
            "or describe the dataset with a manifest CSV (path,name,identity)"
        )
    return _finish(root, rel_paths, rel_paths, names, identities, source="folder")


def _scan_manifest(manifest: Path) -> DatasetIndex:
    root = manifest.resolve().parent
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "") for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read manifest {manifest}: {e}; it must be a UTF-8 CSV with a header row") from None
    missing = [c for c in ("path", "name") if c not in fields]
    if missing:
        raise DatasetError(
            f"manifest {manifest} lacks column(s) {', '.join(missing)}; found {fields or 'no header'}. "
            "Required: path,name; optional: identity,image_id"
        )
    if not rows:
        raise DatasetError(f"manifest {manifest} has a header but no rows")
    has_identity = "identity" in fields
    has_id = "image_id" in fields
    rel_paths, ids, names, identities, problems = [], [], [], [], []
    for lineno, row in enumerate(rows, start=2):
        p, name = row["path"].strip(), row["name"]
        if not p or not name.strip():
            problems.append(f"line {lineno}: empty path or name")
            continue
        rel = _relative_inside(root, p)
        if rel is None:
            problems.append(f"line {lineno}: path {p!r} escapes the dataset root {root}")
            continue
        rel_paths.append(rel)
        names.append(name)
        ids.append(row["image_id"].strip() if has_id and row["image_id"].strip() else rel)
        if has_identity:
            ident = row["identity"].strip()
            if not ident:
                problems.append(f"line {lineno}: empty identity (the column exists, so every row needs one)")
            identities.append(ident)
    if problems:
        shown = "; ".join(problems[:_MAX_LISTED]) + (f"; ... {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else "")
        raise DatasetError(f"manifest {manifest}: {len(problems)} bad row(s): {shown}")
    return _finish(root, ids, rel_paths, names, identities if has_identity else None, source="manifest")


def _relative_inside(root: Path, p: str) -> str | None:
    candidate = Path(p)
    full = candidate if candidate.is_absolute() else root / candidate
    full = Path(os.path.normpath(full))
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        return None


def _finish(root, ids, rel_paths, names, identities, *, source) -> DatasetIndex:
    ids_arr = np.asarray(ids, dtype=object)
    order = np.argsort(ids_arr.astype(str), kind="stable")
    ids_sorted = ids_arr[order].astype(str)
    dup_mask = ids_sorted[1:] == ids_sorted[:-1]
    if dup_mask.any():
        dups = sorted(set(ids_sorted[1:][dup_mask].tolist()))
        raise DatasetError(
            f"{len(dups)} duplicate image ID(s), e.g. {', '.join(dups[:_MAX_LISTED])}; "
            "image IDs must be unique: fix the manifest's image_id column (or drop it to use the paths)"
        )
    paths = np.asarray(rel_paths, dtype=object)[order]
    sizes = np.empty(len(paths), dtype=np.int64)
    mtimes = np.empty(len(paths), dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(root / p)
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        except OSError:
            sizes[i], mtimes[i] = -1, -1
    return DatasetIndex(
        root=root,
        image_ids=ids_sorted,
        paths=paths.astype(str),
        row_names=np.asarray(names, dtype=object)[order].astype(str),
        identities=None if identities is None else np.asarray(identities, dtype=object)[order].astype(str),
        sizes=sizes,
        mtimes_ns=mtimes,
        source=source,
    )

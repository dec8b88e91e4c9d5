"""Dataset ingestion: an image folder or a manifest CSV becomes an index of images.

Two layouts are accepted:

- an image folder ``ROOT/<name>/**/*.{jpg,jpeg,png,webp}``: the name is the first directory
  level; when every image sits at least one level deeper (``ROOT/<name>/<identity>/...``) that
  second level is the person identity (scoped by name: ``<name>/<identity>``);
- a manifest CSV with columns ``path,name`` and optional ``identity``, ``image_id``; paths are
  relative to the manifest's directory (the dataset root). Every other column is a per-image
  covariate (``gender``, ``age``, ...): numbers stay numbers, anything else is a string.

The image ID defaults to the POSIX path relative to the root: stable and unique. Names are
Unicode NFC-normalised and stripped of surrounding whitespace (``" anna"``, ``"anna "`` and
``"anna"`` are one name); a name spelled otherwise in the dataset keeps that verbatim form
beside it. The label of a name is its index in the sorted list of names.

Hidden entries (names starting with ``.``) are not indexed: hidden files are ignored, hidden
folders (``.ipynb_checkpoints``, ``.thumbnails``) are recorded in ``skipped``.

Only regular files are images. Entries named like images that are not (FIFOs, sockets,
devices, directories, broken links) are never opened: a folder scan records them in
``skipped`` with the reason, a manifest that lists one is refused. Every path is resolved:
a symbolic link whose real location is outside the dataset root is refused (folder: skipped
with the reason; manifest: an error) unless ``follow_symlinks=True``, which indexes it and
records it in ``outside_root``. Linked folders inside the root are followed (a folder reached
twice is recorded, not indexed twice). Every problem is reported before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import stat as _stat
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from facestore.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
#: Manifest columns with a meaning of their own; every other column is a covariate.
MANIFEST_COLUMNS = ("path", "name", "identity", "image_id")
_MAX_LISTED = 10


def normalize_name(name: str) -> str:
    """The form a name is stored under: Unicode NFC, surrounding whitespace stripped."""
    return unicodedata.normalize("NFC", name).strip()


@dataclass(frozen=True, eq=False)
class DatasetIndex:
    """The images of a dataset, one row each, sorted by image ID.

    ``sizes`` and ``mtimes_ns`` come from ``stat`` (``-1`` for a file that does not exist);
    content hashes are computed on demand by :meth:`content_hashes`. ``row_names`` are
    normalised (:func:`normalize_name`); ``verbatim_names`` holds a row's name as the dataset
    spelled it where that differs (``""`` elsewhere). ``skipped``: ``(path, reason)`` of entries
    not indexed; ``outside_root``: image IDs whose real location is outside ``root`` (only with
    ``follow_symlinks``); ``covariates``: manifest columns beyond path/name/identity/image_id.
    """

    root: Path
    image_ids: np.ndarray  # str (N,)
    paths: np.ndarray  # str (N,), POSIX, relative to root
    row_names: np.ndarray  # str (N,)
    identities: np.ndarray | None  # str (N,) or None
    sizes: np.ndarray  # int64 (N,)
    mtimes_ns: np.ndarray  # int64 (N,)
    source: str  # "folder" | "manifest"
    verbatim_names: np.ndarray | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    follow_symlinks: bool = False
    outside_root: tuple[str, ...] = ()
    covariates: dict[str, np.ndarray] = field(default_factory=dict)

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
    """A content fingerprint: blake2b (16-byte digest) of the file's bytes.

    ``""`` if the file is missing, unreadable or not a regular file. It is opened without
    blocking and checked before reading, so a FIFO or a device (``/dev/zero``) named like an
    image never hangs the hashing.
    """
    h = hashlib.blake2b(digest_size=16)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return ""
    try:
        if not _stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        with os.fdopen(fd, "rb", closefd=False) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return h.hexdigest()


def scan_dataset(data, *, follow_symlinks: bool = False) -> DatasetIndex:
    """Index a dataset: an image folder, or a manifest ``.csv`` file (a :class:`DatasetIndex` is returned as is).

    Raises :class:`DatasetError` (a ``ValueError``) for an empty dataset, a missing or
    unreadable manifest, missing columns, ragged rows, duplicate image IDs, paths that escape
    the root (also through a symbolic link, unless ``follow_symlinks``) or that are not regular files.
    """
    if isinstance(data, DatasetIndex):
        return data
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"dataset {data} does not exist; pass an image folder ROOT/<name>/... or a manifest CSV")
    if data.is_dir():
        return _scan_folder(data, follow_symlinks=follow_symlinks)
    if data.suffix.lower() == ".csv":
        return _scan_manifest(data, follow_symlinks=follow_symlinks)
    raise DatasetError(
        f"dataset {data} is neither a folder nor a .csv manifest; pass ROOT (laid out as ROOT/<name>/**/*.jpg) "
        "or a CSV with columns path,name[,identity,image_id]"
    )


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _file_kind(mode: int) -> str:
    """The reason recorded for an entry named like an image that is not a regular file."""
    if _stat.S_ISDIR(mode):
        return "directory"
    if _stat.S_ISFIFO(mode):
        return "fifo"
    if _stat.S_ISSOCK(mode):
        return "socket"
    if _stat.S_ISCHR(mode):
        return "character_device"
    if _stat.S_ISBLK(mode):
        return "block_device"
    return "not_a_regular_file"


def _walk_folder(root: Path, *, follow_symlinks: bool):
    """Every regular image file under ``root`` (paths relative to it), what was skipped and why,
    and which images lie outside the root (reached through a followed link)."""
    root_real = os.path.realpath(root)
    images: list[str] = []
    outside: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()

    def walk(path: str, rel: PurePosixPath, via_outside: bool) -> None:
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                skipped.append((f"{rel.as_posix()}/", "folder already indexed through another path (symbolic link)"))
                return
            seen.add(key)
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            skipped.append((f"{rel.as_posix()}/", f"unreadable folder: {e.strerror or e}"))
            return
        for e in entries:
            r = rel / e.name
            is_image = _is_image_name(e.name)
            top = rel == PurePosixPath(".")
            outside_here = via_outside
            try:
                is_link = e.is_symlink()
            except OSError:
                is_link = False
            if is_link:
                real = os.path.realpath(e.path)
                if not os.path.exists(real):
                    if is_image:
                        skipped.append((r.as_posix(), "broken symbolic link"))
                    continue
                if not _inside(real, root_real):
                    if not follow_symlinks:
                        if is_image or os.path.isdir(real):
                            skipped.append((r.as_posix(), f"symbolic link to {real}, outside the dataset root "
                                                          "(--follow-symlinks allows it)"))
                        continue
                    outside_here = True
            try:
                st = os.stat(e.path)
            except OSError as err:
                if is_image:
                    skipped.append((r.as_posix(), f"cannot stat: {err.strerror or err}"))
                continue
            if _stat.S_ISDIR(st.st_mode):
                if is_image:
                    skipped.append((r.as_posix(), "directory (named like an image)"))
                    continue
                if e.name.startswith("."):
                    # .ipynb_checkpoints, .thumbnails, .Trash-1000: walked, they became a name
                    # (or an identity) of their own, or mixed the folder's depths.
                    skipped.append((f"{r.as_posix()}/", "hidden folder (its name starts with '.'), not indexed"))
                    continue
                walk(e.path, r, outside_here)
            elif is_image and not top:  # images directly under ROOT have no name: ignored (documented)
                if _stat.S_ISREG(st.st_mode):
                    images.append(r.as_posix())
                    if outside_here:
                        outside.append(r.as_posix())
                else:
                    skipped.append((r.as_posix(), f"{_file_kind(st.st_mode)}, not a regular file (never opened)"))

    walk(os.fspath(root), PurePosixPath("."), False)
    return images, skipped, outside


def _scan_folder(root: Path, *, follow_symlinks: bool = False) -> DatasetIndex:
    root = root.resolve()
    rel_paths, skipped, outside = _walk_folder(root, follow_symlinks=follow_symlinks)
    if not rel_paths:
        extra = f" ({len(skipped)} entries skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DatasetError(
            f"no images found under {root}: expected ROOT/<name>/[<identity>/]*.{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}}"
            + extra
        )
    parts = [PurePosixPath(p).parts for p in rel_paths]
    verbatim = [p[0] for p in parts]
    names = [normalize_name(v) for v in verbatim]
    empty = [rel_paths[i] for i, nm in enumerate(names) if not nm]
    if empty:
        raise DatasetError(f"{root}: name folder(s) whose name is only whitespace, e.g. {', '.join(empty[:_MAX_LISTED])}")
    deep = [len(p) >= 3 for p in parts]
    if all(deep):
        identities = [f"{names[i]}/{unicodedata.normalize('NFC', p[1])}" for i, p in enumerate(parts)]
    elif not any(deep):
        identities = None
    else:
        flat = [rel_paths[i] for i, d in enumerate(deep) if not d][:_MAX_LISTED]
        raise DatasetError(
            f"{root}: some images sit in ROOT/<name>/<identity>/ and others directly in ROOT/<name>/ "
            f"(e.g. {', '.join(flat)}); put every image in an identity folder, or none, "
            "or describe the dataset with a manifest CSV (path,name,identity)"
        )
    return _finish(root, rel_paths, rel_paths, names, identities, source="folder", verbatim=verbatim,
                   skipped=skipped, follow_symlinks=follow_symlinks, outside=outside, covariates={})


def _read_manifest(manifest: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line number, fields)`` rows; a row with more or fewer fields than the header is an error."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            rows, ragged = [], []
            for fields in reader:
                if not fields or not any(x.strip() for x in fields):
                    continue  # blank line
                if len(fields) != len(header):
                    ragged.append(f"line {reader.line_num}: {len(fields)} field(s), the header has {len(header)}")
                rows.append((reader.line_num, fields))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read manifest {manifest}: {e}; it must be a UTF-8 CSV with a header row") from None
    if ragged:
        shown = "; ".join(ragged[:_MAX_LISTED]) + (f"; ... {len(ragged) - _MAX_LISTED} more" if len(ragged) > _MAX_LISTED else "")
        raise DatasetError(f"manifest {manifest}: {len(ragged)} row(s) do not match the header: {shown}. Quote fields "
                           'that contain commas ("Smith, Anna") and give every row every column')
    return [c.strip() for c in header], rows


def _scan_manifest(manifest: Path, *, follow_symlinks: bool = False) -> DatasetIndex:
    from facestore.store.layout import check_model_name

    root = manifest.resolve().parent
    root_real = os.path.realpath(root)
    fields, raw_rows = _read_manifest(manifest)
    missing = [c for c in ("path", "name") if c not in fields]
    if missing:
        raise DatasetError(
            f"manifest {manifest} lacks column(s) {', '.join(missing)}; found {fields or 'no header'}. "
            "Required: path,name; optional: identity,image_id; any other column is a per-image covariate"
        )
    dup_cols = sorted({c for c in fields if fields.count(c) > 1})
    if dup_cols or "" in fields:
        raise DatasetError(f"manifest {manifest}: every column needs a unique, non-empty header "
                           f"(duplicates: {', '.join(dup_cols) or 'none'}; empty: {'yes' if '' in fields else 'no'})")
    if not raw_rows:
        raise DatasetError(f"manifest {manifest} has a header but no rows")
    col = {c: i for i, c in enumerate(fields)}
    cov_names = [c for c in fields if c not in MANIFEST_COLUMNS]
    for c in cov_names:
        try:
            check_model_name(c)
        except ValueError:
            raise DatasetError(f"manifest {manifest}: column {c!r} cannot be a covariate name (no slashes, leading "
                               "dots or spaces)") from None
    has_identity = "identity" in col
    has_id = "image_id" in col
    rel_paths, ids, names, verbatim, identities, problems = [], [], [], [], [], []
    cov_values: dict[str, list[str]] = {c: [] for c in cov_names}
    real_dirs: dict[str, str] = {}
    outside: list[str] = []
    for lineno, row in raw_rows:
        p, raw_name = row[col["path"]].strip(), row[col["name"]]
        name = normalize_name(raw_name)
        if not p or not name:
            problems.append(f"line {lineno}: empty path or name")
            continue
        rel = _relative_inside(root, p)
        if rel is None:
            problems.append(f"line {lineno}: path {p!r} escapes the dataset root {root}")
            continue
        full = os.path.join(root, rel)
        image_id = row[col["image_id"]].strip() if has_id and row[col["image_id"]].strip() else rel
        try:
            lst = os.lstat(full)
        except OSError:
            lst = None  # missing or unreachable: indexed, and the build records it
        if lst is not None:
            parent = os.path.dirname(full)
            if parent not in real_dirs:
                real_dirs[parent] = os.path.realpath(parent)
            real = os.path.realpath(full) if _stat.S_ISLNK(lst.st_mode) else os.path.join(real_dirs[parent],
                                                                                           os.path.basename(full))
            if not _inside(real, root_real):
                if not follow_symlinks:
                    problems.append(f"line {lineno}: path {p!r} resolves to {real}, outside the dataset root "
                                    "(a symbolic link); pass --follow-symlinks (follow_symlinks=True) to allow it")
                    continue
                outside.append(image_id)
            try:
                mode = os.stat(full).st_mode
            except OSError:
                mode = None  # a broken link: indexed as missing
            if mode is not None and not _stat.S_ISREG(mode):
                problems.append(f"line {lineno}: path {p!r} is a {_file_kind(mode).replace('_', ' ')}, not a regular "
                                "file (it is never opened)")
                continue
        rel_paths.append(rel)
        names.append(name)
        verbatim.append(raw_name)
        ids.append(image_id)
        if has_identity:
            ident = normalize_name(row[col["identity"]])
            if not ident:
                problems.append(f"line {lineno}: empty identity (the column exists, so every row needs one)")
            identities.append(ident)
        for c in cov_names:
            cov_values[c].append(row[col[c]].strip())
    if problems:
        shown = "; ".join(problems[:_MAX_LISTED]) + (f"; ... {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else "")
        raise DatasetError(f"manifest {manifest}: {len(problems)} bad row(s): {shown}")
    return _finish(root, ids, rel_paths, names, identities if has_identity else None, source="manifest",
                   verbatim=verbatim, skipped=[], follow_symlinks=follow_symlinks, outside=outside,
                   covariates={c: typed_column(v) for c, v in cov_values.items()})


def typed_column(values: list[str]) -> np.ndarray:
    """A covariate column: int64 when every value is an integer, float64 (NaN for empty) when
    every non-empty value is a number, else the strings as given."""
    present = [v for v in values if v != ""]
    if present:
        try:
            ints = [int(v) for v in present]
        except ValueError:
            ints = None
        if ints is not None and len(present) == len(values):
            return np.asarray(ints, dtype=np.int64)
        try:
            floats = [float(v) if v != "" else math.nan for v in values]
        except ValueError:
            floats = None
        if floats is not None:
            return np.asarray(floats, dtype=np.float64)
    return np.asarray(values, dtype=object).astype(str) if values else np.zeros(0, "<U1")


def _relative_inside(root: Path, p: str) -> str | None:
    candidate = Path(p)
    full = candidate if candidate.is_absolute() else root / candidate
    full = Path(os.path.normpath(full))
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        return None


def _finish(root, ids, rel_paths, names, identities, *, source, verbatim, skipped, follow_symlinks, outside,
            covariates) -> DatasetIndex:
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
    row_names = np.asarray(names, dtype=object)[order].astype(str)
    verb = np.asarray(verbatim, dtype=object)[order].astype(str)
    verb = np.where(verb == row_names, "", verb)
    return DatasetIndex(
        root=root,
        image_ids=ids_sorted,
        paths=paths.astype(str),
        row_names=row_names,
        identities=None if identities is None else np.asarray(identities, dtype=object)[order].astype(str),
        sizes=sizes,
        mtimes_ns=mtimes,
        source=source,
        verbatim_names=verb if verb.size else np.zeros(0, "<U1"),
        skipped=tuple((str(p), str(r)) for p, r in skipped),
        follow_symlinks=bool(follow_symlinks),
        outside_root=tuple(sorted(outside)),
        covariates={c: v[order] for c, v in covariates.items()},
    )

"""The store: a versioned, self-describing Zarr v3 directory of embeddings keyed by image ID.

``create_store`` / ``open_store`` return a :class:`Store`. The index (image IDs, paths, labels,
names, identities, content fingerprints) is written by :meth:`Store.sync_index`; each model has
its own group, written chunk by chunk by a :class:`~facestore.store.writer.ModelWriter`.
The format is specified member by member in ``docs/store-format.md``.

Every read is checked: chunk checksums and sizes (:mod:`facestore.store._codec`), array dtypes
and lengths against the format, index chunks present. Damage raises
:class:`~facestore.errors.StoreCorruptError` naming the member; it never reads as data.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import logging
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from facestore.errors import (
    DatasetChangedError,
    DatasetError,
    IncompleteModelError,
    ModelNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreExistsError,
    StoreFormatError,
    StoreNotFoundError,
    ViewNotFoundError,
)
from facestore.store import _codec, layout
from facestore.store._codec import as_str, read_rows, str_array  # noqa: F401  (read_rows: public here too)
from facestore.store.lock import StoreLock
from facestore.store.writer import ModelWriter

log = logging.getLogger("facestore.store")

_MAX_LISTED = 10
#: Entries of the dataset's skipped list kept in the index attrs (the count is always kept).
_MAX_SKIPPED_RECORDED = 1000
_LABEL_NEXT, _LABEL_OLD = "label.next", "label.old"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# Kept for callers of the old private name.
_str_array = str_array


@dataclass(frozen=True, eq=False)
class StoreIndex:
    """The rows of a store: one per image, in storage order (row ``i`` of every model group).

    ``verbatim_names``: a row's name as the dataset spelled it when that differs from the
    normalised name (NFC, stripped), else ``""``. ``covariates``: per-image covariates, name ->
    array in index order (strings, or numbers for numeric columns).
    """

    image_ids: np.ndarray
    paths: np.ndarray
    labels: np.ndarray  # int32, index into ``names``
    names: list[str]
    identities: np.ndarray | None
    sizes: np.ndarray
    mtimes_ns: np.ndarray
    content_hashes: np.ndarray
    verbatim_names: np.ndarray | None = None
    covariates: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def row_names(self) -> np.ndarray:
        """The name of every row (``names[labels]``)."""
        return np.asarray(self.names, dtype=object)[self.labels].astype(str) if len(self.labels) else str_array([])


@dataclass(frozen=True)
class SyncReport:
    """What :meth:`Store.sync_index` did.

    ``skipped``: ``(path, reason)`` of dataset entries that are not indexed (not a regular file,
    a symbolic link leaving the dataset root, ...); ``rehashed``: images whose content was
    fingerprinted again to check they did not change.
    """

    added: int
    total: int
    missing: list[str] = field(default_factory=list)  # in the store but no longer in the dataset
    new_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rehashed: int = 0


@dataclass(frozen=True, eq=False)
class TextEmbeddings:
    """Name x template text embeddings of a model with a text tower (zero-shot)."""

    names: list[str]
    templates: list[str]
    embeddings: np.ndarray  # float32 (C, T, D), unnormalised
    logit_scale: float
    logit_bias: float | None
    spec: dict[str, Any]


def _verify_hint(path) -> str:
    return f"run `facestore verify {path}` to list every problem"


class Store:
    """An open facestore store. Use :func:`open_store` or :func:`create_store`."""

    def __init__(self, path: str | os.PathLike, *, mode: str = "r") -> None:
        self.path = Path(path)
        self.mode = mode
        if not (self.path / "zarr.json").exists():
            raise StoreNotFoundError(
                f"no facestore store at {self.path}; create one with `facestore index --data DATA --store {self.path}` "
                f"or `facestore build --data DATA --store {self.path} --model NAME`"
            )
        attrs = self.attrs
        if attrs.get("encoding-type") != layout.ENCODING_TYPE:
            raise StoreFormatError(
                f"{self.path} is a Zarr group but not a facestore store (encoding-type {attrs.get('encoding-type')!r})"
            )
        version = str(attrs.get("encoding-version", "0"))
        try:
            major = int(version.split(".")[0])
        except ValueError:
            raise StoreCorruptError(f"{self.path}: encoding-version {version!r} is not a version; {_verify_hint(self.path)}") from None
        if major > layout.READABLE_MAJOR:
            raise StoreFormatError(
                f"{self.path} uses store format {version}, newer than this facestore reads "
                f"({layout.ENCODING_VERSION}); upgrade facestore (pip install -U facestore)"
            )
        #: A store of an older format: readable (no checksums to check), never written.
        self.legacy = major < layout.READABLE_MAJOR
        if self.legacy:
            if major not in layout.LEGACY_MAJORS:
                raise StoreFormatError(f"{self.path} uses store format {version}, which this facestore cannot read")
            if mode != "r":
                raise StoreFormatError(
                    f"{self.path} uses store format {version}; this facestore writes format {layout.ENCODING_VERSION} "
                    f"(checksummed chunks). Migrate it first: `facestore upgrade {self.path}` (it can still be read as is)"
                )
            warnings.warn(
                f"{self.path} uses store format {version}: opened read-only, and its chunks carry no checksums, so "
                f"damage cannot be detected; `facestore upgrade {self.path}` migrates it to {layout.ENCODING_VERSION}",
                RuntimeWarning, stacklevel=3,
            )
        self._index: StoreIndex | None = None

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n={self.n}, models={self.models})"

    def _root(self, mode: str = "r"):
        try:
            return zarr.open_group(str(self.path), mode=mode)
        except (PermissionError, MemoryError):
            raise
        except Exception as e:
            raise StoreCorruptError(f"{self.path}: the root metadata (zarr.json) cannot be read ({type(e).__name__}: "
                                    f"{e}); {_verify_hint(self.path)}") from None

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._root().attrs)

    @property
    def n(self) -> int:
        """Rows in the index (0 before the first sync)."""
        return int(self.attrs.get("n_images", 0))

    @property
    def data_root(self) -> Path | None:
        root = self.attrs.get("data_root")
        return Path(root) if root else None

    def _group(self, path: str, *, create: bool = False):
        root = self._root("r" if self.mode == "r" else "r+")
        try:
            return root[path]
        except KeyError:
            if not create:
                raise
            self._require_writable()
            _codec.check_no_symlink(self.path, self.path / path)
            return root.require_group(path)
        except (PermissionError, MemoryError):
            raise
        except Exception as e:  # a member whose zarr.json is not valid metadata
            raise StoreCorruptError(f"{self.path}: member {path!r} cannot be read ({type(e).__name__}: {e}); "
                                    f"{_verify_hint(self.path)}") from None

    def _require_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.path} was opened read-only; use open_store(path, mode='a') to write")

    def lock(self, key: str, *, owner: str = "") -> StoreLock:
        """The write lock of ``key`` (a model name, or ``"index"``); use as a context manager."""
        return StoreLock(self.path / layout.LOCKS / f"{key}.lock", owner=owner or f"facestore pid {os.getpid()}")

    # ------------------------------------------------------------------ index
    @property
    def index(self) -> StoreIndex:
        if self._index is None:
            self._index = self._read_index()
        return self._index

    def _index_group(self):
        try:
            return self._group(layout.INDEX)
        except KeyError:
            raise StoreCorruptError(
                f"{self.path}: the index group is missing although n_images is {self.n}; the store is damaged "
                f"({_verify_hint(self.path)}); make a new store from the dataset (`facestore index --data DATA --store NEW`)"
            ) from None

    def _index_array(self, g, name: str):
        try:
            return g[name]
        except KeyError:
            raise StoreCorruptError(f"{self.path}: index array {name!r} is missing; {_verify_hint(self.path)}") from None

    def _label_array(self, g):
        # Between the two renames of a relabelling append, only the old labels exist (see _swap_labels).
        for name in ("label", _LABEL_OLD):
            try:
                return g[name]
            except KeyError:
                continue
        return self._index_array(g, "label")

    def _index_column(self, arr, name: str, n: int) -> np.ndarray:
        want, got = layout.INDEX_COLUMNS[name], _codec.data_type(arr)
        if got != want:
            raise StoreCorruptError(f"{self.path}: index array {name!r} is {got}, the format specifies {want} "
                                    f"(edited metadata?); {_verify_hint(self.path)}")
        if arr.shape[0] < n:
            raise StoreCorruptError(f"{self.path}: index array {name!r} has {arr.shape[0]} rows but n_images is {n}; "
                                    f"{_verify_hint(self.path)}")
        return _codec.read(arr, n, what=f"{self.path}: index array {name!r}", base=self.path / arr.path,
                           require_chunks=not self.legacy)

    def _read_index(self) -> StoreIndex:
        n = self.n
        if n == 0:
            empty = str_array([])
            return StoreIndex(empty, empty, np.zeros(0, np.int32), [], None, np.zeros(0, np.int64),
                              np.zeros(0, np.int64), empty)
        g = self._index_group()
        gattrs = dict(g.attrs)

        def col(name):
            return self._index_column(self._index_array(g, name), name, n)

        label_arr = self._label_array(g)
        labels = self._index_column(label_arr, "label", n).astype(np.int32)
        names = list(label_arr.attrs.get("names", gattrs.get("names", [])))
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise StoreCorruptError(f"{self.path}: index labels point outside the names list ({len(names)} names, labels "
                                    f"{int(labels.min())}..{int(labels.max())}); {_verify_hint(self.path)}")
        has_identity = bool(gattrs.get("has_identity", False))
        verbatim = None
        if not self.legacy:
            verbatim = as_str(col("name_verbatim"))
        return StoreIndex(
            image_ids=as_str(col("image_id")),
            paths=as_str(col("path")),
            labels=labels,
            names=names,
            identities=as_str(col("identity")) if has_identity else None,
            sizes=col("size").astype(np.int64),
            mtimes_ns=col("mtime_ns").astype(np.int64),
            content_hashes=as_str(col("content_hash")),
            verbatim_names=verbatim,
            covariates=self._read_covariates(n),
        )

    def _read_covariates(self, n: int) -> dict[str, np.ndarray]:
        from facestore.store.covariates import read_covariates

        return read_covariates(self, n)

    def find_rows(self, ids) -> np.ndarray:
        """Row positions of image IDs, ``-1`` for IDs not in the index."""
        ids = np.asarray(ids).astype(str)
        if not len(ids) or not len(self.index):
            return np.full(len(ids), -1, np.int64)
        order = np.argsort(self.index.image_ids)
        sorted_ids = self.index.image_ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids
        return np.where(found, order[pos], -1).astype(np.int64)

    def rows_of(self, ids) -> np.ndarray:
        """Row positions of image IDs; unknown IDs raise ``KeyError`` listing some of them."""
        ids = np.asarray(ids).astype(str)
        rows = self.find_rows(ids)
        if (rows < 0).any():
            missing = ids[rows < 0]
            raise KeyError(
                f"{len(missing)} image ID(s) are not in the store index, e.g. {', '.join(missing[:_MAX_LISTED].tolist())}"
            )
        return rows

    def sync_index(self, dataset, *, workers: int = 8, rehash: bool = False, lock_wait_s: float = 0.0) -> SyncReport:
        """Write the index from a :class:`~facestore.dataset.DatasetIndex`, or append its new images.

        Rows already in the store keep their position. An image whose content fingerprint
        changed raises :class:`DatasetChangedError` before anything is written (never mix
        vectors of two versions of an image under one ID); images whose size or modification
        time changed are fingerprinted again, and ``rehash=True`` fingerprints every image
        (an edit that restored the modification time). Images that disappeared from the
        dataset stay in the store and are reported in ``missing``.

        ``lock_wait_s``: how long to wait for another live process's index lock (a dead
        holder's lock is broken at once).
        """
        self._require_writable()
        lock = self.lock("index", owner=f"index sync (pid {os.getpid()})")
        lock.acquire(wait_s=lock_wait_s)
        try:
            self._recover_label_swap()
            if self.n == 0:
                report = self._write_new_index(dataset, workers=workers)
            else:
                report = self._append_index(dataset, workers=workers, rehash=rehash)
        finally:
            lock.release()
        self._index = None
        if report.skipped:
            shown = "; ".join(f"{p} ({r})" for p, r in report.skipped[:_MAX_LISTED])
            more = f"; ... {len(report.skipped) - _MAX_LISTED} more" if len(report.skipped) > _MAX_LISTED else ""
            log.warning("%d dataset entr%s not indexed: %s%s (recorded in the index attrs; `facestore info --json`)",
                        len(report.skipped), "y" if len(report.skipped) == 1 else "ies", shown, more)
        return report

    def _columns(self, ds, rows: np.ndarray, hashes: np.ndarray) -> dict[str, np.ndarray]:
        k = len(rows)
        verbatim = getattr(ds, "verbatim_names", None)
        return {
            "image_id": ds.image_ids[rows], "path": ds.paths[rows],
            "identity": ds.identities[rows] if ds.identities is not None else str_array([""] * k),
            "name_verbatim": verbatim[rows] if verbatim is not None else str_array([""] * k),
            "size": ds.sizes[rows], "mtime_ns": ds.mtimes_ns[rows], "content_hash": hashes,
        }

    def _index_attrs(self, ds, names: list[str]) -> dict[str, Any]:
        skipped = [list(s) for s in getattr(ds, "skipped", ())]
        return {"names": names, "has_identity": ds.identities is not None, "source": ds.source,
                "skipped": skipped[:_MAX_SKIPPED_RECORDED], "n_skipped": len(skipped),
                "follow_symlinks": bool(getattr(ds, "follow_symlinks", False)),
                "outside_root": list(getattr(ds, "outside_root", ()))[:_MAX_SKIPPED_RECORDED]}

    def _write_new_index(self, ds, *, workers: int) -> SyncReport:
        n = len(ds)
        hashes = ds.content_hashes(workers=workers)
        _codec.check_no_symlink(self.path, self.path / layout.INDEX)
        root = self._root("r+")
        g = root.require_group(layout.INDEX)
        chunks = (layout.index_chunk_rows(n),)
        rows = np.arange(n)
        labels = ds.labels
        names = ds.names
        for name, values in {**self._columns(ds, rows, hashes), "label": labels}.items():
            kind = layout.INDEX_COLUMNS[name]
            arr = _codec.create_array(g, name, shape=(n,), dtype=str if kind == "string" else kind, chunks=chunks,
                                      overwrite=True)
            arr[:] = values
            if name == "label":
                arr.attrs["names"] = names
        g.attrs.update(self._index_attrs(ds, names))
        from facestore.store.covariates import write_dataset_covariates

        write_dataset_covariates(self, ds, rows, n_old=0)
        # The root attrs are the commit: until n_images is written the index reads as empty.
        root.attrs.update({
            "n_images": n,
            "data_root": str(ds.root),
            "dataset_fingerprint": _dataset_fingerprint(ds.image_ids, hashes),
            "index_fingerprint": _index_fingerprint(ds.image_ids, ds.paths, ds.row_names,
                                                    ds.identities, hashes),
            "appending": None,
            "updated": _now(),
        })
        return SyncReport(added=n, total=n, new_names=names, skipped=list(getattr(ds, "skipped", ())))

    def _append_index(self, ds, *, workers: int, rehash: bool) -> SyncReport:
        old = self._read_index()
        if (old.identities is None) != (ds.identities is None):
            have = "has" if old.identities is not None else "has no"
            raise DatasetError(
                f"the store's index {have} identities but the dataset {'has none' if ds.identities is None else 'has them'}; "
                "use the same layout (folder depth or manifest identity column) as the first build"
            )
        old_pos = {k: i for i, k in enumerate(old.image_ids.tolist())}
        in_store = np.fromiter((old_pos.get(k, -1) for k in ds.image_ids.tolist()), dtype=np.int64, count=len(ds))
        both = np.nonzero(in_store >= 0)[0]
        sp = in_store[both]
        # Cheap check first: same size and mtime -> same content. Hash what looks touched (or all, on request).
        touched = both if rehash else both[(ds.sizes[both] != old.sizes[sp]) | (ds.mtimes_ns[both] != old.mtimes_ns[sp])]
        changed: list[str] = []
        if len(touched):
            new_h = ds.content_hashes(touched, workers=workers)
            old_h = old.content_hashes[in_store[touched]]
            changed = ds.image_ids[touched][new_h != old_h].tolist()
        name_mismatch = ds.row_names[both] != old.row_names[sp]
        if name_mismatch.any():
            bad = ds.image_ids[both][name_mismatch][:_MAX_LISTED].tolist()
            raise DatasetChangedError(
                f"{int(name_mismatch.sum())} image(s) changed name since they were indexed, e.g. {', '.join(bad)}; "
                "labels of stored rows cannot change silently: build a new store for the relabelled dataset"
            )
        if changed:
            raise DatasetChangedError(
                f"{len(changed)} image(s) changed on disk since they were indexed (content fingerprint differs), "
                f"e.g. {', '.join(changed[:_MAX_LISTED])}. Their stored vectors describe the old files. Restore the "
                "originals, give the new files new image IDs, or build a new store; `facestore verify STORE` lists all"
            )
        new_rows = np.nonzero(in_store < 0)[0]
        missing = sorted(set(old.image_ids.tolist()) - set(ds.image_ids.tolist()))
        from facestore.store.covariates import plan_dataset_covariates, write_dataset_covariates

        n_old = len(old)
        covariate_plan = plan_dataset_covariates(self, ds, new_rows, n_old=n_old)  # conflicts fail before any write
        _codec.check_no_symlink(self.path, self.path / layout.INDEX)
        root = self._root("r+")
        g = root[layout.INDEX]
        names = sorted(set(old.names) | set(ds.row_names[new_rows].tolist()))
        new_names = sorted(set(names) - set(old.names))
        lookup = {nm: i for i, nm in enumerate(names)}
        n_new = n_old + len(new_rows)
        hashes = ds.content_hashes(new_rows, workers=workers) if len(new_rows) else str_array([])
        if len(new_rows):
            # Rows past n_images are invisible to readers; the marker tells verify an append is under way.
            root.attrs.update({"appending": n_new})
            for name, values in self._columns(ds, new_rows, hashes).items():
                arr = _codec.writable(self._index_array(g, name))
                arr.resize((n_new,))
                arr[n_old:n_new] = values
        all_names = np.concatenate([old.row_names, ds.row_names[new_rows]]) if len(new_rows) else old.row_names
        labels = np.fromiter((lookup[x] for x in all_names.tolist()), dtype=np.int32, count=n_new)
        if new_names:
            self._swap_labels(g, labels, names)
        elif len(new_rows):
            arr = _codec.writable(self._index_array(g, "label"))
            arr.resize((n_new,))
            arr[n_old:n_new] = labels[n_old:]
        # Refresh stat data of unchanged-content rows so the cheap check stays cheap next time.
        if len(touched):
            _codec.writable(g["mtime_ns"]).set_orthogonal_selection(in_store[touched], ds.mtimes_ns[touched])
            _codec.writable(g["size"]).set_orthogonal_selection(in_store[touched], ds.sizes[touched])
        g.attrs.update(self._index_attrs(ds, names))
        if len(new_rows):
            write_dataset_covariates(self, ds, new_rows, n_old=n_old, plan=covariate_plan)
        all_ids = np.concatenate([old.image_ids, ds.image_ids[new_rows]]) if len(new_rows) else old.image_ids
        all_hashes = np.concatenate([old.content_hashes, hashes]) if len(new_rows) else old.content_hashes
        all_paths = np.concatenate([old.paths, ds.paths[new_rows]]) if len(new_rows) else old.paths
        all_ident = None
        if old.identities is not None:
            all_ident = np.concatenate([old.identities, ds.identities[new_rows]]) if len(new_rows) else old.identities
        order = np.argsort(all_ids)
        root.attrs.update({
            "n_images": n_new,
            "data_root": str(ds.root),
            "dataset_fingerprint": _dataset_fingerprint(all_ids[order], all_hashes[order]),
            "index_fingerprint": _index_fingerprint(all_ids, all_paths, all_names, all_ident, all_hashes),
            "appending": None,
            "updated": _now(),
        })
        return SyncReport(added=len(new_rows), total=n_new, missing=missing, new_names=new_names,
                          skipped=list(getattr(ds, "skipped", ())), rehashed=len(touched))

    def _swap_labels(self, g, labels: np.ndarray, names: list[str]) -> None:
        """Replace the label array (and with it the names list) in one rename.

        New names re-sort the names list, so every row's label changes. The new labels are
        written whole beside the old ones, with the new names in their attrs, then swapped in by
        renaming directories; readers take the names from the label array's attrs, so labels
        and names always change together. ``_recover_label_swap`` finishes or undoes a swap cut
        short by a crash.
        """
        base = self.path / layout.INDEX
        arr = _codec.create_array(g, _LABEL_NEXT, shape=(len(labels),), dtype="int32", chunks=g["label"].chunks,
                                  overwrite=True)
        arr[:] = labels
        arr.attrs["names"] = names
        os.rename(base / "label", base / _LABEL_OLD)
        os.rename(base / _LABEL_NEXT, base / "label")  # the commit
        shutil.rmtree(base / _LABEL_OLD, ignore_errors=True)

    def _recover_label_swap(self) -> None:
        base = self.path / layout.INDEX
        if not base.exists():
            return
        if not (base / "label").exists() and (base / _LABEL_OLD).exists():
            os.rename(base / _LABEL_OLD, base / "label")  # cut between the two renames: undo
        shutil.rmtree(base / _LABEL_OLD, ignore_errors=True)
        shutil.rmtree(base / _LABEL_NEXT, ignore_errors=True)

    # ------------------------------------------------------------------ models
    def _children(self, rel: str) -> list[str]:
        """Sub-groups of the group at ``rel``, from the directory listing (so that one member with
        damaged metadata cannot hide the others); hidden names (temporaries) are never listed."""
        try:
            entries = list(os.scandir(self.path / rel))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
                      and os.path.exists(os.path.join(e.path, "zarr.json")))

    @property
    def models(self) -> list[str]:
        return self._children(layout.MODELS)

    def _model_group(self, model: str):
        try:
            return self._group(layout.model_path(model))
        except KeyError:
            raise ModelNotFoundError(self._unknown_model_message(model)) from None

    def _unknown_model_message(self, model: str) -> str:
        stored = self.models
        close = difflib.get_close_matches(model, stored, n=3, cutoff=0.6)
        msg = f"model {model!r} is not in the store {self.path}; stored: {', '.join(stored) or 'none'}."
        if close:
            msg += f" Did you mean {' or '.join(repr(c) for c in close)}?"
        from facestore.models import list_models

        if model in list_models():
            msg += f" Build it with `facestore build --store {self.path} --model {model} --data DATA`."
        elif not close:
            msg += " `facestore models` lists the models that can be built; `facestore import` stores vectors computed elsewhere."
        return msg

    def model_attrs(self, model: str) -> dict[str, Any]:
        return dict(self._model_group(model).attrs)

    def model_spec(self, model: str) -> dict[str, Any]:
        """The resolved spec stored with the vectors of ``model``."""
        return dict(self.model_attrs(model)["spec"])

    def views(self, model: str) -> dict[str, int]:
        return dict(self.model_attrs(model)["views"])

    def default_view(self, model: str) -> str:
        attrs = self.model_attrs(model)
        return attrs.get("default_view") or next(iter(attrs["views"]))

    def _status_array(self, model: str, g=None):
        g = self._model_group(model) if g is None else g
        try:
            arr = g[layout.STATUS]
        except KeyError:
            raise StoreCorruptError(f"model {model!r}: its status array is missing; {_verify_hint(self.path)}") from None
        if _codec.data_type(arr) != "uint8":
            raise StoreCorruptError(f"model {model!r}: status array is {_codec.data_type(arr)}, the format specifies "
                                    f"uint8; {_verify_hint(self.path)}")
        return arr

    def status(self, model: str) -> np.ndarray:
        """Per-row status codes (``layout.STATUS_CODES``), padded with pending up to ``n``.

        A status chunk that was never written (or was deleted) reads as pending: those rows are
        recomputed by the next build, never read as valid.
        """
        arr = self._status_array(model)
        st = _codec.read(arr, arr.shape[0], what=f"model {model!r} status").astype(np.uint8)
        if len(st) < self.n:
            st = np.concatenate([st, np.zeros(self.n - len(st), np.uint8)])
        return st[: self.n]

    def failures(self, model: str) -> list[tuple[str, str, str]]:
        """``(image_id, reason, detail)`` of every row recorded as failed."""
        g = self._model_group(model)
        st = self.status(model)
        rows = np.nonzero(st >= 2)[0]
        if not len(rows):
            return []
        detail = g[layout.STATUS_DETAIL]
        details = as_str(_codec.read(detail, detail.shape[0], what=f"model {model!r} status_detail"))[rows]
        ids = self.index.image_ids
        return [(ids[r], layout.STATUS_CODES.get(int(st[r]), str(st[r])), d) for r, d in zip(rows, details)]

    def is_complete(self, model: str) -> bool:
        """Whether the last build or import of ``model`` finished and no row is pending."""
        return self.incomplete_reason(model) is None

    def incomplete_reason(self, model: str, *, rows: np.ndarray | None = None, status: np.ndarray | None = None) -> str | None:
        """Why ``model`` (or its ``rows``) cannot be used as complete, or None when it can."""
        attrs = self.model_attrs(model)
        st = self.status(model) if status is None else status
        sel = st if rows is None else st[np.asarray(rows, dtype=np.int64)]
        pending = int((sel == layout.PENDING).sum())
        if pending:
            if rows is None:
                return f"{pending} of {len(sel)} rows of model {model!r} are not written yet (pending)"
            return f"{pending} of the {len(sel)} rows asked for are not written yet in model {model!r} (pending)"
        if not self.legacy and attrs.get("complete") is False:
            return (f"the last {'import' if attrs.get('kind') == 'imported' else 'build'} of model {model!r} did not "
                    "finish (the group is not marked complete; it may still be running)")
        return None

    def fix_command(self, model: str) -> str:
        """The command that finishes ``model``'s group: the build to resume, or the import to rerun."""
        attrs = self.model_attrs(model)
        if attrs.get("kind") == "imported":
            source = attrs.get("spec", {}).get("source") or "VECTORS.npy"
            return f"`facestore import {self.path} --model {model} --embeddings {source} --ids IDS` (it resumes)"
        data = self.data_root or "DATA"
        flags = "".join(f" {f}" for f in _build_flags(attrs))
        return f"`facestore build --data {data} --store {self.path} --model {model}{flags}` (it resumes)"

    def require_complete(self, model: str, *, rows: np.ndarray | None = None, status: np.ndarray | None = None) -> None:
        """Raise :class:`IncompleteModelError` unless ``model`` (or its ``rows``) is complete."""
        reason = self.incomplete_reason(model, rows=rows, status=status)
        if reason is not None:
            raise IncompleteModelError(
                f"{reason}. Finish it with {self.fix_command(model)}, or pass allow_incomplete=True "
                "(--allow-incomplete) to use only the rows written so far, knowingly (results record it)"
            )

    def summary(self, model: str) -> dict[str, Any]:
        """Counts by status, views and dims, dtype and spec of one model group."""
        st = self.status(model)
        counts = {layout.STATUS_CODES.get(int(c), str(c)): int(k) for c, k in zip(*np.unique(st, return_counts=True))}
        attrs = self.model_attrs(model)
        return {
            "model": model, "views": attrs["views"], "dtype": attrs["dtype"], "chunk_rows": attrs["chunk_rows"],
            "kind": attrs.get("kind", "extracted"), "rows": int(len(st)), "status": counts,
            "complete": self.incomplete_reason(model, status=st) is None,
            "text_template_sets": self.text_template_sets(model), "spec": attrs["spec"],
        }

    def _view_array(self, model: str, view: str, g, attrs):
        views = dict(attrs["views"])
        if view not in views:
            close = difflib.get_close_matches(view, list(views), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ViewNotFoundError(f"model {model!r} has no view {view!r}; its views: {', '.join(views)}.{hint}")
        try:
            arr = g[view]
        except KeyError:
            raise StoreCorruptError(f"model {model!r}: view {view!r} is recorded but its array is missing; "
                                    f"{_verify_hint(self.path)}") from None
        if _codec.data_type(arr) != attrs["dtype"] or arr.ndim != 2 or arr.shape[1] != int(views[view]):
            raise StoreCorruptError(
                f"model {model!r} view {view!r}: the array is {arr.shape} {_codec.data_type(arr)}, the group records "
                f"dim {views[view]} {attrs['dtype']} (edited metadata?); {_verify_hint(self.path)}")
        return arr

    def load(self, model: str, view: str | None = None, ids=None, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the rows written ``ok``, as ``(X, image_ids)``.

        ``ids`` selects and orders rows by image ID (IDs whose row is not ``ok`` are dropped, so
        compare the returned IDs). ``dtype=None`` keeps the stored dtype (fastest). Every chunk
        read is checked (size, crc32c): damage raises :class:`StoreCorruptError` naming the chunk.
        """
        g = self._model_group(model)
        attrs = dict(g.attrs)
        view = view or self.default_view(model)
        arr = self._view_array(model, view, g, attrs)
        st = self.status(model)
        rows = np.nonzero(st == layout.OK)[0] if ids is None else self.rows_of(ids)
        if ids is not None:
            rows = rows[st[rows] == layout.OK]
        if len(rows) and rows.max() >= arr.shape[0]:
            raise StoreCorruptError(f"model {model!r} view {view!r} has {arr.shape[0]} rows but rows up to "
                                    f"{int(rows.max())} are marked ok; {_verify_hint(self.path)}")
        X = read_rows(arr, rows, path=self.path / layout.model_path(model) / view, out_dtype=dtype,
                      what=f"model {model!r} view {view!r}")
        return X, self.index.image_ids[rows]

    def model_writer(self, model: str, *, spec: dict[str, Any], views: dict[str, int], dtype: str = "float16",
                     chunk_rows: int = layout.DEFAULT_CHUNK_ROWS, default_view: str | None = None,
                     kind: str = "extracted") -> ModelWriter:
        """Create (or reopen and validate) the group of ``model`` for writing; see :class:`ModelWriter`."""
        self._require_writable()
        return ModelWriter.open(self, layout.check_model_name(model), spec=spec, views=views, dtype=dtype,
                                chunk_rows=chunk_rows, default_view=default_view, kind=kind)

    def delete_model(self, model: str) -> None:
        """Remove the group of ``model`` (under its lock)."""
        self._require_writable()
        self._model_group(model)
        with self.lock(model, owner=f"delete {model}"):
            shutil.rmtree(self.path / layout.model_path(model))

    # ------------------------------------------------------------------ text embeddings
    def write_text_embeddings(self, model: str, *, template_set: str, names, templates, embeddings,
                              logit_scale: float, logit_bias: float | None, spec: dict[str, Any]) -> None:
        """Store name x template text embeddings ``(C, T, D)`` under the model's group."""
        self._require_writable()
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape[:2] != (len(names), len(templates)):
            raise ValueError(f"text embeddings have shape {emb.shape}, expected ({len(names)}, {len(templates)}, D)")
        g = self._group(f"{layout.model_path(layout.check_model_name(model))}/{layout.TEXT}", create=True)
        sub = g.require_group(layout.check_model_name(template_set))
        _codec.check_no_symlink(self.path, self.path / sub.path)
        arr = _codec.create_array(sub, "embeddings", shape=emb.shape, dtype="float32", chunks=emb.shape, overwrite=True)
        arr[:] = emb
        sub.attrs.update({"names": list(names), "templates": list(templates), "logit_scale": float(logit_scale),
                          "logit_bias": None if logit_bias is None else float(logit_bias), "spec": spec,
                          "created": _now()})

    def text_template_sets(self, model: str) -> list[str]:
        return self._children(f"{layout.model_path(model)}/{layout.TEXT}")

    def text_embeddings(self, model: str, template_set: str = "plan") -> TextEmbeddings:
        try:
            sub = self._group(f"{layout.model_path(model)}/{layout.TEXT}/{template_set}")
        except KeyError:
            have = self.text_template_sets(model)
            raise ModelNotFoundError(
                f"no text embeddings {template_set!r} for {model!r} in {self.path} (have: {', '.join(have) or 'none'}); "
                f"run `facestore text {self.path} --model {model}`"
            ) from None
        a = dict(sub.attrs)
        try:
            arr = sub["embeddings"]
        except KeyError:
            raise StoreCorruptError(f"text embeddings {template_set!r} of {model!r}: the array is missing; "
                                    f"rerun `facestore text {self.path} --model {model}`") from None
        emb = _codec.read(arr, arr.shape[0], what=f"text embeddings {template_set!r} of {model!r}",
                          base=self.path / arr.path, require_chunks=not self.legacy)
        return TextEmbeddings(names=list(a["names"]), templates=list(a["templates"]),
                              embeddings=np.asarray(emb, dtype=np.float32),
                              logit_scale=float(a["logit_scale"]), logit_bias=a.get("logit_bias"), spec=a["spec"])

    # ------------------------------------------------------------------ splits and identities
    def _save_rows(self, kind: str, name: str, values: np.ndarray, attrs: dict[str, Any], dtype) -> None:
        """Save a per-row array atomically: written whole into a hidden sibling, then renamed into place.

        The completion marker (``complete``) and the values' digest are written last, before the
        rename; a reader never sees a half-saved group under its name, and a group without the
        marker (a crash of an older writer, a hand edit) is refused, not used.
        """
        self._require_writable()
        layout.check_model_name(name)
        if len(values) != self.n:
            raise ValueError(f"{kind} {name!r} has {len(values)} rows; the store has {self.n}")
        parent = self._group(kind, create=True)
        base = self.path / kind
        _codec.check_no_symlink(self.path, base)
        _clean_leftovers(base, name)
        tmp_name = f".tmp-{name}-{uuid.uuid4().hex[:12]}"
        g = parent.create_group(tmp_name)
        arr = _codec.create_array(g, "values", shape=(len(values),), dtype=dtype,
                                  chunks=(layout.index_chunk_rows(len(values)),))
        arr[:] = values
        g.attrs.update({**attrs, "n_rows": int(len(values)), "created": _now(),
                        "values_sha256": _values_digest(values), "complete": True})
        final = base / name
        if final.exists():
            old = base / f".old-{name}-{uuid.uuid4().hex[:12]}"
            os.rename(final, old)
            os.rename(base / tmp_name, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(base / tmp_name, final)

    def _load_rows(self, kind: str, name: str, fill) -> tuple[np.ndarray, dict[str, Any]]:
        what = kind[:-1] if kind.endswith("s") else kind
        try:
            g = self._group(f"{kind}/{name}")
        except KeyError:
            have = self._list(kind)
            raise KeyError(f"no {what} {name!r} in {self.path}; have: {', '.join(have) or 'none'}") from None
        attrs = dict(g.attrs)
        if not self.legacy and attrs.get("complete") is not True:
            raise StoreCorruptError(
                f"{what} {name!r} in {self.path} was not saved completely (no completion marker: its save was "
                f"interrupted or it was edited by hand); make it again (saving it rewrites it) or delete "
                f"{self.path / kind / name}")
        try:
            arr = g["values"]
        except KeyError:
            raise StoreCorruptError(f"{what} {name!r} in {self.path} has no values array; make it again") from None
        values = _codec.read(arr, arr.shape[0], what=f"{what} {name!r}", base=self.path / arr.path,
                             require_chunks=not self.legacy)
        if values.dtype.kind not in "iuf":
            values = as_str(values)
        n_rows = attrs.get("n_rows")
        if n_rows is not None and len(values) != int(n_rows):
            raise StoreCorruptError(f"{what} {name!r} has {len(values)} rows but records n_rows={n_rows}; make it again")
        digest = attrs.get("values_sha256")
        if digest is not None and _values_digest(values) != digest:
            raise StoreCorruptError(f"{what} {name!r}: its values do not match their recorded digest (edited or "
                                    f"damaged); make it again")
        if len(values) > self.n:
            raise StoreCorruptError(f"{what} {name!r} has {len(values)} rows, more than the index's {self.n}; "
                                    f"{_verify_hint(self.path)}")
        if len(values) < self.n:  # rows appended after it was made are outside it
            values = np.concatenate([values, np.full(self.n - len(values), fill, dtype=values.dtype)])
        return values, attrs

    def _list(self, kind: str) -> list[str]:
        return self._children(kind)

    def save_split(self, name: str, assignment: np.ndarray, attrs: dict[str, Any]) -> None:
        """Save a split: ``assignment`` per row, 0 train, 1 val, 2 test, -1 not in the split (atomically)."""
        a = np.asarray(assignment, dtype=np.int8)
        if not np.isin(a, (-1, 0, 1, 2)).all():
            raise ValueError("split assignment values must be -1 (out), 0 (train), 1 (val) or 2 (test)")
        self._save_rows(layout.SPLITS, name, a, attrs, "int8")

    def load_split(self, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        values, attrs = self._load_rows(layout.SPLITS, name, -1)
        return values.astype(np.int8), attrs

    @property
    def splits(self) -> list[str]:
        return self._list(layout.SPLITS)

    def save_identities(self, name: str, identities: np.ndarray, attrs: dict[str, Any]) -> None:
        """Save derived identities (e.g. pseudo-identities from face-embedding clusters), one per row."""
        self._save_rows(layout.IDENTITIES, name, str_array(np.asarray(identities).astype(str)), attrs, str)

    def load_identities(self, name: str = "identity") -> tuple[np.ndarray, dict[str, Any]]:
        """``"identity"`` is the dataset's own; other names are derived sets saved with :meth:`save_identities`."""
        if name == "identity":
            if self.index.identities is None:
                raise KeyError(f"the dataset of {self.path} has no identities; derived sets: {', '.join(self.identity_sources) or 'none'}")
            return self.index.identities, {"source": "dataset"}
        values, attrs = self._load_rows(layout.IDENTITIES, name, "")
        return as_str(values), attrs

    @property
    def identity_sources(self) -> list[str]:
        own = ["identity"] if self.n and self.index.identities is not None else []
        return own + self._list(layout.IDENTITIES)

    # ------------------------------------------------------------------ covariates
    def add_covariate(self, name: str, values, *, attrs: dict[str, Any] | None = None) -> None:
        """Store a per-image covariate (strings or numbers, one per row, in index order) with its ``attrs``."""
        from facestore.store.covariates import save_covariate

        save_covariate(self, name, values, attrs=attrs or {})
        self._index = None

    @property
    def covariate_names(self) -> list[str]:
        from facestore.store.covariates import covariate_names

        return covariate_names(self)

    def covariate_attrs(self, name: str) -> dict[str, Any]:
        from facestore.store.covariates import covariate_attrs

        return covariate_attrs(self, name)

    def info(self) -> dict[str, Any]:
        """A JSON-able description of the whole store (``facestore info``)."""
        idx = self.index
        counts = np.bincount(idx.labels, minlength=len(idx.names)) if len(idx) else np.zeros(0, int)
        iattrs: dict[str, Any] = {}
        if self.n:
            iattrs = dict(self._index_group().attrs)
        covs = {}
        for c, v in idx.covariates.items():
            kind = "numeric" if v.dtype.kind in "iuf" else "string"
            covs[c] = {"kind": kind, **self.covariate_attrs(c)}
            if kind == "string":
                uniq, cnt = np.unique(v, return_counts=True)
                covs[c]["values"] = dict(zip(uniq.tolist()[:20], cnt.tolist()[:20]))
        return {
            "path": str(self.path), "attrs": self.attrs, "n_images": self.n, "n_names": len(idx.names),
            "n_identities": int(len(np.unique(idx.identities))) if idx.identities is not None else None,
            "images_per_name": {"min": int(counts.min()) if len(counts) else 0,
                                "max": int(counts.max()) if len(counts) else 0},
            "models": {m: {**{k: v for k, v in self.summary(m).items() if k != "spec"},
                           "failures": [{"image_id": i, "reason": r, "detail": d} for i, r, d in self.failures(m)]}
                       for m in self.models},
            "splits": self.splits, "identity_sources": self.identity_sources,
            "covariates": covs,
            "skipped": {"count": int(iattrs.get("n_skipped", 0)), "entries": iattrs.get("skipped", [])},
            "follow_symlinks": bool(iattrs.get("follow_symlinks", False)),
        }


def _build_flags(attrs: dict[str, Any]) -> list[str]:
    """The ``facestore build`` options that reproduce a model group's recorded settings, where they
    differ from the defaults: a resume with other ones is refused (the stored bits would change),
    so the command printed to finish a build must carry them."""
    from facestore.models.registry import get_spec, list_models

    spec = attrs.get("spec") or {}
    pipeline = spec.get("pipeline") or {}
    flags: list[str] = []
    if attrs.get("chunk_rows") not in (None, 8192):
        flags.append(f"--chunk-rows {attrs['chunk_rows']}")
    if attrs.get("dtype") not in (None, "float16"):
        flags.append(f"--dtype {attrs['dtype']}")
    if pipeline.get("batch_size") not in (None, 32):
        flags.append(f"--batch-size {pipeline['batch_size']}")
    if pipeline.get("decode") == "draft":
        flags.append("--decode draft")
    if pipeline.get("device_type") == "cuda":
        flags.append("--device cuda")
    if spec.get("precision") in ("bf16", "fp16"):  # fp32 is what --precision auto gives without bf16
        flags.append(f"--precision {spec['precision']}")
    name = str(spec.get("name"))
    defaults = dict(get_spec(name).options) if name in list_models() else {}
    for key, value in (spec.get("options") or {}).items():
        if key in ("arcface_align", "no_face") and defaults.get(key) != value:
            flags.append(f"--{key.replace('_', '-')} {value}")
    if (spec.get("weights") or {}).get("kind") == "local":
        flags.append("--weights DIR")  # only the folder's name and digest are recorded, not its path
    return flags


def _clean_leftovers(base: Path, name: str) -> None:
    """Remove what an interrupted atomic save of ``name`` left behind (old copies; temporaries over an hour old)."""
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return
    for e in entries:
        stale_tmp = e.name.startswith(f".tmp-{name}-") and time.time() - e.stat(follow_symlinks=False).st_mtime > 3600
        if e.name.startswith(f".old-{name}-") or stale_tmp:
            shutil.rmtree(e.path, ignore_errors=True)


def _values_digest(values: np.ndarray) -> str:
    v = np.asarray(values)
    h = hashlib.sha256()
    if v.dtype.kind in "iufb":
        h.update(str(v.dtype).encode())
        h.update(np.ascontiguousarray(v).tobytes())
    else:
        h.update("\0".join(as_str(v).tolist()).encode())
    return h.hexdigest()


def _dataset_fingerprint(image_ids: np.ndarray, hashes: np.ndarray) -> str:
    h = hashlib.sha256()
    for i, c in zip(image_ids.tolist(), hashes.tolist()):
        h.update(i.encode())
        h.update(b"\0")
        h.update(c.encode())
        h.update(b"\n")
    return h.hexdigest()


def _index_fingerprint(image_ids, paths, row_names, identities, hashes) -> str:
    """sha256 over every row's (image ID, path, name, identity, content hash), rows sorted by image ID.

    Recorded at every sync and recomputed by ``verify``: it ties the names list and the labels to
    the dataset they came from (two names swapped, a label edited, rows cut off all change it).
    """
    ids = np.asarray(image_ids).astype(str)
    order = np.argsort(ids, kind="stable")
    ident = np.asarray(identities).astype(str) if identities is not None else np.full(len(ids), "")
    cols = [ids, np.asarray(paths).astype(str), np.asarray(row_names).astype(str), ident, np.asarray(hashes).astype(str)]
    lines = ["\0".join(parts) for parts in zip(*(c[order].tolist() for c in cols))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def create_store(path: str | os.PathLike) -> Store:
    """Create an empty store directory. Raises :class:`StoreExistsError` (a ``FileExistsError``)
    if a store or another non-empty directory is already there."""
    path = Path(path)
    if (path / "zarr.json").exists():
        raise StoreExistsError(f"a store already exists at {path}; open it with open_store({str(path)!r}, mode='a')")
    if path.exists() and any(p.name != layout.LOCKS for p in path.iterdir()):
        raise StoreExistsError(f"{path} exists and is not empty; pick a new directory for the store")
    from facestore import __version__

    root = zarr.open_group(str(path), mode="a")
    root.attrs.update({
        "encoding-type": layout.ENCODING_TYPE,
        "encoding-version": layout.ENCODING_VERSION,
        "facestore_version": __version__,
        "created": _now(),
        "n_images": 0,
    })
    return Store(path, mode="a")


def open_store(path: str | os.PathLike, mode: str = "r", *, create: bool = False, wait_s: float = 60.0) -> Store:
    """Open a store: ``mode="r"`` read-only, ``"a"`` read/write; ``create=True`` creates it if absent.

    Several processes may create the same store at once (builds of two models started
    together): creation is serialised by a lock in the new directory, the others wait (at most
    ``wait_s``) and open what the first created. A dead creator's lock is broken at once.
    """
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
    path = Path(path)
    if create and not (path / "zarr.json").exists():
        if path.exists() and any(p.name != layout.LOCKS for p in path.iterdir()):
            raise StoreExistsError(f"{path} exists, is not empty and is not a facestore store; "
                                   "pass a new directory or an existing store")
        path.mkdir(parents=True, exist_ok=True)
        lock = StoreLock(path / layout.LOCKS / "create.lock", owner=f"store creation (pid {os.getpid()})")
        lock.acquire(wait_s=wait_s)
        try:
            if not (path / "zarr.json").exists():
                return create_store(path)
        finally:
            lock.release()
    return Store(path, mode=mode)


def index_dataset(data, store: str | os.PathLike | Store, *, follow_symlinks: bool = False, rehash: bool = False,
                  workers: int = 8, lock_wait_s: float = 600.0) -> SyncReport:
    """Create the store (if absent) and write or append its index from ``data``, without any model.

    What ``facestore index`` runs: a store whose embeddings are computed elsewhere can then be
    filled with ``facestore import``.
    """
    from facestore.dataset import scan_dataset

    ds = scan_dataset(data, follow_symlinks=follow_symlinks)
    st = store if isinstance(store, Store) else open_store(store, mode="a", create=True)
    return st.sync_index(ds, workers=workers, rehash=rehash, lock_wait_s=lock_wait_s)

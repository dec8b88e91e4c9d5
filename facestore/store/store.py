"""The store: a versioned, self-describing Zarr v3 directory of embeddings keyed by image ID.

``create_store`` / ``open_store`` return a :class:`Store`. The index (image IDs, paths, labels,
names, identities, content fingerprints) is written by :meth:`Store.sync_index`; each model has
its own group, written chunk by chunk by a :class:`~facestore.store.writer.ModelWriter`.
The format is specified member by member in ``docs/store-format.md``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from facestore.errors import (
    DatasetChangedError,
    DatasetError,
    ModelNotFoundError,
    StoreError,
    StoreFormatError,
    StoreNotFoundError,
)
from facestore.store import layout
from facestore.store.lock import StoreLock

_MAX_LISTED = 10


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _str_array(values) -> np.ndarray:
    return np.asarray(list(values), dtype=object).astype(str) if len(values) else np.zeros(0, dtype="<U1")


def as_str(a) -> np.ndarray:
    """A fixed-width unicode array from anything zarr returns (numpy StringDType included)."""
    a = np.asarray(a)
    if a.dtype.kind == "U":
        return a
    return a.astype(object).astype(str) if a.size else np.zeros(a.shape, dtype="<U1")


@dataclass(frozen=True, eq=False)
class StoreIndex:
    """The rows of a store: one per image, in storage order (row ``i`` of every model group)."""

    image_ids: np.ndarray
    paths: np.ndarray
    labels: np.ndarray  # int32, index into ``names``
    names: list[str]
    identities: np.ndarray | None
    sizes: np.ndarray
    mtimes_ns: np.ndarray
    content_hashes: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def row_names(self) -> np.ndarray:
        """The name of every row (``names[labels]``)."""
        return np.asarray(self.names, dtype=object)[self.labels].astype(str) if len(self.labels) else _str_array([])


@dataclass(frozen=True)
class SyncReport:
    """What :meth:`Store.sync_index` did."""

    added: int
    total: int
    missing: list[str] = field(default_factory=list)  # in the store but no longer in the dataset
    new_names: list[str] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class TextEmbeddings:
    """Name x template text embeddings of a model with a text tower (zero-shot)."""

    names: list[str]
    templates: list[str]
    embeddings: np.ndarray  # float32 (C, T, D), unnormalised
    logit_scale: float
    logit_bias: float | None
    spec: dict[str, Any]


class Store:
    """An open facestore store. Use :func:`open_store` or :func:`create_store`."""

    def __init__(self, path: str | os.PathLike, *, mode: str = "r") -> None:
        self.path = Path(path)
        self.mode = mode
        if not (self.path / "zarr.json").exists():
            raise StoreNotFoundError(
                f"no facestore store at {self.path}; create one with `facestore build --data DATA --store {self.path} --model NAME`"
            )
        self._root = zarr.open_group(str(self.path), mode="r" if mode == "r" else "r+")
        attrs = dict(self._root.attrs)
        if attrs.get("encoding-type") != layout.ENCODING_TYPE:
            raise StoreFormatError(
                f"{self.path} is a Zarr group but not a facestore store (encoding-type {attrs.get('encoding-type')!r})"
            )
        major = int(str(attrs.get("encoding-version", "0")).split(".")[0])
        if major > layout.READABLE_MAJOR:
            raise StoreFormatError(
                f"{self.path} uses store format {attrs['encoding-version']}, newer than this facestore reads "
                f"({layout.ENCODING_VERSION}); upgrade facestore (pip install -U facestore)"
            )
        self._index: StoreIndex | None = None

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n={self.n}, models={self.models})"

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(zarr.open_group(str(self.path), mode="r").attrs)

    @property
    def n(self) -> int:
        """Rows in the index (0 before the first sync)."""
        return int(self.attrs.get("n_images", 0))

    @property
    def data_root(self) -> Path | None:
        root = self.attrs.get("data_root")
        return Path(root) if root else None

    def _group(self, path: str, *, create: bool = False):
        root = zarr.open_group(str(self.path), mode="r" if self.mode == "r" else "r+")
        try:
            return root[path]
        except KeyError:
            if not create:
                raise
            self._require_writable()
            return root.require_group(path)

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

    def _read_index(self) -> StoreIndex:
        if self.n == 0:
            empty = _str_array([])
            return StoreIndex(empty, empty, np.zeros(0, np.int32), [], None, np.zeros(0, np.int64),
                              np.zeros(0, np.int64), empty)
        g = self._group(layout.INDEX)
        n = self.n

        def col(name):
            return np.asarray(g[name][:n])

        has_identity = bool(g.attrs.get("has_identity", False))
        return StoreIndex(
            image_ids=as_str(col("image_id")),
            paths=as_str(col("path")),
            labels=col("label").astype(np.int32),
            names=list(g.attrs["names"]),
            identities=as_str(col("identity")) if has_identity else None,
            sizes=col("size").astype(np.int64),
            mtimes_ns=col("mtime_ns").astype(np.int64),
            content_hashes=as_str(col("content_hash")),
        )

    def rows_of(self, ids) -> np.ndarray:
        """Row positions of image IDs; unknown IDs raise ``KeyError`` listing some of them."""
        ids = np.asarray(ids).astype(str)
        order = np.argsort(self.index.image_ids)
        sorted_ids = self.index.image_ids[order]
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
        found = (len(sorted_ids) > 0) & (sorted_ids[pos] == ids) if len(ids) else np.zeros(0, bool)
        if not np.all(found):
            missing = ids[~found]
            raise KeyError(
                f"{len(missing)} image ID(s) are not in the store index, e.g. {', '.join(missing[:_MAX_LISTED].tolist())}"
            )
        return order[pos].astype(np.int64)

    def sync_index(self, dataset, *, workers: int = 8) -> SyncReport:
        """Write the index from a :class:`~facestore.dataset.DatasetIndex`, or append its new images.

        Rows already in the store keep their position. An image whose content fingerprint
        changed raises :class:`DatasetChangedError` before anything is written (never mix
        vectors of two versions of an image under one ID). Images that disappeared from the
        dataset stay in the store and are reported in ``missing``.
        """
        self._require_writable()
        with self.lock("index", owner="index sync"):
            if self.n == 0:
                report = self._write_new_index(dataset, workers=workers)
            else:
                report = self._append_index(dataset, workers=workers)
        self._index = None
        return report

    def _write_new_index(self, ds, *, workers: int) -> SyncReport:
        hashes = ds.content_hashes(workers=workers)
        root = zarr.open_group(str(self.path), mode="r+")
        g = root.require_group(layout.INDEX)
        n = len(ds)
        chunks = (min(layout.INDEX_CHUNK_ROWS, max(n, 1)),)
        cols = {
            "image_id": ds.image_ids, "path": ds.paths, "label": ds.labels,
            "identity": ds.identities if ds.identities is not None else _str_array([""] * n),
            "size": ds.sizes, "mtime_ns": ds.mtimes_ns, "content_hash": hashes,
        }
        for name, values in cols.items():
            dtype = str if values.dtype.kind in "UTO" else values.dtype
            arr = g.create_array(name, shape=(n,), dtype=dtype, chunks=chunks, overwrite=True)
            arr[:] = values
        g.attrs.update({"names": ds.names, "has_identity": ds.identities is not None, "source": ds.source})
        root.attrs.update({
            "n_images": n,
            "data_root": str(ds.root),
            "dataset_fingerprint": _dataset_fingerprint(ds.image_ids, hashes),
            "updated": _now(),
        })
        return SyncReport(added=n, total=n, new_names=ds.names)

    def _append_index(self, ds, *, workers: int) -> SyncReport:
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
        # Cheap check first: same size and mtime -> same content. Hash only what looks touched.
        sp = in_store[both]
        touched = both[(ds.sizes[both] != old.sizes[sp]) | (ds.mtimes_ns[both] != old.mtimes_ns[sp])]
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
        root = zarr.open_group(str(self.path), mode="r+")
        g = root[layout.INDEX]
        names = sorted(set(old.names) | set(ds.row_names[new_rows].tolist()))
        new_names = sorted(set(names) - set(old.names))
        lookup = {nm: i for i, nm in enumerate(names)}
        n_old, n_new = len(old), len(old) + len(new_rows)
        if len(new_rows):
            hashes = ds.content_hashes(new_rows, workers=workers)
            cols = {
                "image_id": ds.image_ids[new_rows], "path": ds.paths[new_rows],
                "identity": ds.identities[new_rows] if ds.identities is not None else _str_array([""] * len(new_rows)),
                "size": ds.sizes[new_rows], "mtime_ns": ds.mtimes_ns[new_rows], "content_hash": hashes,
            }
            for name, values in cols.items():
                g[name].resize((n_new,))
                g[name][n_old:n_new] = values
            g["label"].resize((n_new,))
        all_names = np.concatenate([old.row_names, ds.row_names[new_rows]]) if len(new_rows) else old.row_names
        labels = np.fromiter((lookup[x] for x in all_names.tolist()), dtype=np.int32, count=n_new)
        if new_names or len(new_rows):
            g["label"][:] = labels
        # Refresh stat data of untouched-content rows so the cheap check stays cheap next time.
        if len(touched):
            g["mtime_ns"].set_orthogonal_selection(in_store[touched], ds.mtimes_ns[touched])
            g["size"].set_orthogonal_selection(in_store[touched], ds.sizes[touched])
        g.attrs.update({"names": names})
        all_ids = np.concatenate([old.image_ids, ds.image_ids[new_rows]]) if len(new_rows) else old.image_ids
        all_hashes = np.concatenate([old.content_hashes, hashes]) if len(new_rows) else old.content_hashes
        order = np.argsort(all_ids)
        root.attrs.update({
            "n_images": n_new,
            "data_root": str(ds.root),
            "dataset_fingerprint": _dataset_fingerprint(all_ids[order], all_hashes[order]),
            "updated": _now(),
        })
        return SyncReport(added=len(new_rows), total=n_new, missing=missing, new_names=new_names)

    # ------------------------------------------------------------------ models
    @property
    def models(self) -> list[str]:
        try:
            g = self._group(layout.MODELS)
        except KeyError:
            return []
        return sorted(g.group_keys())

    def _model_group(self, model: str):
        try:
            return self._group(layout.model_path(model))
        except KeyError:
            raise ModelNotFoundError(
                f"model {model!r} is not in the store {self.path}; stored: {', '.join(self.models) or 'none'}. "
                f"Build it with `facestore build --store {self.path} --model {model} --data DATA`"
            ) from None

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

    def status(self, model: str) -> np.ndarray:
        """Per-row status codes (``layout.STATUS_CODES``), padded with pending up to ``n``."""
        g = self._model_group(model)
        st = np.asarray(g[layout.STATUS][:]).astype(np.uint8)
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
        details = as_str(g[layout.STATUS_DETAIL].get_orthogonal_selection(rows))
        ids = self.index.image_ids
        return [(ids[r], layout.STATUS_CODES.get(int(st[r]), str(st[r])), d) for r, d in zip(rows, details)]

    def summary(self, model: str) -> dict[str, Any]:
        """Counts by status, views and dims, dtype and spec of one model group."""
        st = self.status(model)
        counts = {layout.STATUS_CODES.get(int(c), str(c)): int(k) for c, k in zip(*np.unique(st, return_counts=True))}
        attrs = self.model_attrs(model)
        return {
            "model": model, "views": attrs["views"], "dtype": attrs["dtype"], "chunk_rows": attrs["chunk_rows"],
            "kind": attrs.get("kind", "extracted"), "rows": int(len(st)), "status": counts,
            "complete": counts.get("pending", 0) == 0, "text_template_sets": self.text_template_sets(model),
            "spec": attrs["spec"],
        }

    def load(self, model: str, view: str | None = None, ids=None, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the rows written ``ok``, as ``(X, image_ids)``.

        ``ids`` selects and orders rows by image ID (IDs whose row is not ``ok`` are dropped, so
        compare the returned IDs). ``dtype=None`` keeps the stored dtype (fastest).
        """
        g = self._model_group(model)
        views = dict(g.attrs["views"])
        view = view or self.default_view(model)
        if view not in views:
            raise KeyError(f"model {model!r} has no view {view!r}; views: {', '.join(views)}")
        st = self.status(model)
        rows = np.nonzero(st == layout.OK)[0] if ids is None else self.rows_of(ids)
        if ids is not None:
            rows = rows[st[rows] == layout.OK]
        X = read_rows(g[view], rows, path=self.path / layout.model_path(model) / view, out_dtype=dtype)
        return X, self.index.image_ids[rows]

    def model_writer(self, model: str, *, spec: dict[str, Any], views: dict[str, int], dtype: str = "float16",
                     chunk_rows: int = layout.DEFAULT_CHUNK_ROWS, default_view: str | None = None,
                     kind: str = "extracted"):
        """Create (or reopen and validate) the group of ``model`` for writing; see :class:`ModelWriter`."""
        from facestore.store.writer import ModelWriter

        self._require_writable()
        return ModelWriter.open(self, layout.check_model_name(model), spec=spec, views=views, dtype=dtype,
                                chunk_rows=chunk_rows, default_view=default_view, kind=kind)

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
        arr = sub.create_array("embeddings", shape=emb.shape, dtype="float32", chunks=emb.shape, overwrite=True)
        arr[:] = emb
        sub.attrs.update({"names": list(names), "templates": list(templates), "logit_scale": float(logit_scale),
                          "logit_bias": None if logit_bias is None else float(logit_bias), "spec": spec,
                          "created": _now()})

    def text_template_sets(self, model: str) -> list[str]:
        try:
            return sorted(self._group(f"{layout.model_path(model)}/{layout.TEXT}").group_keys())
        except KeyError:
            return []

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
        return TextEmbeddings(names=list(a["names"]), templates=list(a["templates"]),
                              embeddings=np.asarray(sub["embeddings"][:], dtype=np.float32),
                              logit_scale=float(a["logit_scale"]), logit_bias=a.get("logit_bias"), spec=a["spec"])

    # ------------------------------------------------------------------ splits and identities
    def _save_rows(self, kind: str, name: str, values: np.ndarray, attrs: dict[str, Any], dtype) -> None:
        self._require_writable()
        layout.check_model_name(name)
        if len(values) != self.n:
            raise ValueError(f"{kind} {name!r} has {len(values)} rows; the store has {self.n}")
        g = self._group(kind, create=True).require_group(name)
        arr = g.create_array("values", shape=(len(values),), dtype=dtype,
                             chunks=(min(layout.INDEX_CHUNK_ROWS, max(len(values), 1)),), overwrite=True)
        arr[:] = values
        g.attrs.update({**attrs, "n_rows": int(len(values)), "created": _now()})

    def _load_rows(self, kind: str, name: str, fill) -> tuple[np.ndarray, dict[str, Any]]:
        try:
            g = self._group(f"{kind}/{name}")
        except KeyError:
            have = self._list(kind)
            raise KeyError(f"no {kind[:-1] if kind.endswith('s') else kind} {name!r} in {self.path}; have: {', '.join(have) or 'none'}") from None
        values = np.asarray(g["values"][:])
        if values.dtype.kind not in "iuf":
            values = as_str(values)
        if len(values) < self.n:  # rows appended after it was made are outside it
            values = np.concatenate([values, np.full(self.n - len(values), fill, dtype=values.dtype)])
        return values, dict(g.attrs)

    def _list(self, kind: str) -> list[str]:
        try:
            return sorted(self._group(kind).group_keys())
        except KeyError:
            return []

    def save_split(self, name: str, assignment: np.ndarray, attrs: dict[str, Any]) -> None:
        """Save a split: ``assignment`` per row, 0 train, 1 val, 2 test, -1 not in the split."""
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
        self._save_rows(layout.IDENTITIES, name, _str_array(np.asarray(identities).astype(str)), attrs, str)

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

    def info(self) -> dict[str, Any]:
        """A JSON-able description of the whole store (``facestore info``)."""
        idx = self.index
        counts = np.bincount(idx.labels, minlength=len(idx.names)) if len(idx) else np.zeros(0, int)
        return {
            "path": str(self.path), "attrs": self.attrs, "n_images": self.n, "n_names": len(idx.names),
            "n_identities": int(len(np.unique(idx.identities))) if idx.identities is not None else None,
            "images_per_name": {"min": int(counts.min()) if len(counts) else 0,
                                "max": int(counts.max()) if len(counts) else 0},
            "models": {m: {k: v for k, v in self.summary(m).items() if k != "spec"} for m in self.models},
            "splits": self.splits, "identity_sources": self.identity_sources,
        }


def _dataset_fingerprint(image_ids: np.ndarray, hashes: np.ndarray) -> str:
    h = hashlib.sha256()
    for i, c in zip(image_ids.tolist(), hashes.tolist()):
        h.update(i.encode())
        h.update(b"\0")
        h.update(c.encode())
        h.update(b"\n")
    return h.hexdigest()


def read_rows(arr: zarr.Array, rows: np.ndarray, *, path: Path, out_dtype=None) -> np.ndarray:
    """Gather rows of a 2-D row-chunked array, as ``out_dtype`` (default: the stored dtype).

    Uncompressed little-endian arrays (the default) are read straight from their chunk files by
    several threads: a chunk wholly inside a contiguous request is read into the output in place
    (no intermediate copy), and a dtype conversion happens per chunk in those threads. A chunk
    file that is missing while its rows are wanted raises :class:`StoreFormatError` instead of
    silently reading the fill value.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_rows, dim = arr.shape
    chunk_rows = arr.chunks[0]
    dtype = np.dtype(arr.dtype)
    out_dtype = dtype if out_dtype is None else np.dtype(out_dtype)
    out = np.empty((len(rows), dim), dtype=out_dtype)
    if not len(rows):
        return out
    codecs = [c.to_dict()["name"] for c in arr.metadata.codecs]
    fast = codecs == ["bytes"] and arr.chunks[1] == dim and dtype.byteorder in ("<", "=", "|")
    chunk_ids = rows // chunk_rows
    contiguous = bool(np.all(np.diff(rows) == 1))
    # Positions of ``rows`` grouped by chunk, found once (not one scan of ``rows`` per chunk).
    order = np.argsort(chunk_ids, kind="stable")
    uniq, starts = np.unique(chunk_ids[order], return_index=True)
    bounds = dict(zip(uniq.tolist(), zip(starts.tolist(), [*starts[1:].tolist(), len(rows)])))

    def one(c: int) -> None:
        f = path / "c" / str(c) / "0"
        if not f.exists():
            raise StoreFormatError(
                f"chunk file {f} is missing but its rows are marked written; the store is damaged. "
                "Run `facestore verify` and rebuild the model (its status rows for that chunk must be reset)"
            )
        first = c * chunk_rows
        if contiguous:
            lo, hi = max(int(rows[0]), first), min(int(rows[-1]) + 1, first + chunk_rows)
            dst = out[lo - rows[0]:hi - rows[0]]
            if fast and out_dtype == dtype:
                with open(f, "rb") as fh:
                    fh.seek((lo - first) * dim * dtype.itemsize)
                    if fh.readinto(memoryview(dst).cast("B")) != dst.nbytes:
                        raise StoreFormatError(f"chunk file {f} is shorter than its array metadata says")
                return
            block = np.fromfile(f, dtype=dtype).reshape(chunk_rows, dim) if fast else \
                np.asarray(arr[first:min(first + chunk_rows, n_rows)])
            dst[...] = block[lo - first:hi - first]
            return
        block = np.fromfile(f, dtype=dtype).reshape(chunk_rows, dim) if fast else \
            np.asarray(arr[first:min(first + chunk_rows, n_rows)])
        a, b = bounds[c]
        sel = order[a:b]
        out[sel] = block[rows[sel] - first]

    if len(uniq) == 1:
        one(int(uniq[0]))
    else:
        # Reads from the page cache are memory-bound: more threads than cores only add start-up cost.
        with ThreadPoolExecutor(max_workers=min(8, len(uniq), max(2, os.cpu_count() or 2))) as pool:
            list(pool.map(one, uniq.tolist()))
    return out


def create_store(path: str | os.PathLike) -> Store:
    """Create an empty store directory. Raises ``FileExistsError`` if a store is already there."""
    path = Path(path)
    if (path / "zarr.json").exists():
        raise FileExistsError(f"a store already exists at {path}; open it with open_store({str(path)!r}, mode='a')")
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; pick a new directory for the store")
    from facestore import __version__

    root = zarr.open_group(str(path), mode="w")
    root.attrs.update({
        "encoding-type": layout.ENCODING_TYPE,
        "encoding-version": layout.ENCODING_VERSION,
        "facestore_version": __version__,
        "created": _now(),
        "n_images": 0,
    })
    return Store(path, mode="a")


def open_store(path: str | os.PathLike, mode: str = "r", *, create: bool = False) -> Store:
    """Open a store: ``mode="r"`` read-only, ``"a"`` read/write; ``create=True`` creates it if absent."""
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
    if create and not (Path(path) / "zarr.json").exists():
        return create_store(path)
    return Store(path, mode=mode)

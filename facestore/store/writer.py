"""Chunk-aligned, resumable writes of one model group.

The unit of work and of writing is the chunk (``chunk_rows`` whole rows). ``write_chunk``
writes every view of a chunk first and its status last; zarr's local store replaces each chunk
file atomically, so a process killed at any moment leaves every chunk either committed (status
``ok``/failure) or pending (status 0, the fill value): a half-written row never reads as valid.
Resuming recomputes exactly the chunks that were in flight. Concurrent writers are safe as long
as each owns whole chunks (the build takes a lock per model; distributed ranks split chunks).

The group's ``complete`` attr is ``False`` from the moment a writer opens it with rows to write
until a write leaves no pending row in the whole group (with several ranks, whichever commits
last sees that), so readers can tell a finished build or import from one in progress or cut
short. Every chunk carries a crc32c checksum (:mod:`facestore.store._codec`), and the writer
refuses to write through a symbolic link inside the store.
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from facestore.errors import SpecMismatchError, StoreCorruptError, StoreError
from facestore.store import _codec, layout
from facestore.store._codec import as_str

#: Keys of a resolved spec whose change does not alter the stored vectors' meaning; a change is
#: warned about and recorded, not refused.
_SOFT_SPEC_KEYS = ("versions",)


def spec_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like specs (``"preprocessing.size: [224, 224] -> [256, 256]"``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{key}: (absent) -> {new[k]!r}")
            elif k not in new:
                out.append(f"{key}: {old[k]!r} -> (absent)")
            else:
                out.extend(spec_differences(old[k], new[k], key))
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return [] if list(old) == list(new) else [f"{prefix}: {list(old)!r} -> {list(new)!r}"]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


class ModelWriter:
    """Writes the embeddings of one model, chunk by chunk. Obtain one with ``Store.model_writer``."""

    def __init__(self, store, model: str, group) -> None:
        self.store = store
        self.model = model
        self.group = group
        a = dict(group.attrs)
        self.views: dict[str, int] = dict(a["views"])
        self.dtype = np.dtype(a["dtype"])
        self.chunk_rows = int(a["chunk_rows"])
        self.n = int(group[layout.STATUS].shape[0])
        self._dir = Path(store.path) / layout.model_path(model)
        _codec.check_no_symlink(Path(store.path), self._dir)
        self._arrays = {}
        for name in [*self.views, layout.STATUS, layout.STATUS_DETAIL]:
            try:
                arr = group[name]
            except KeyError:
                raise StoreCorruptError(f"model {model!r}: array {name!r} is missing from its group; run "
                                        f"`facestore verify {store.path}`") from None
            _codec.check_no_symlink(Path(store.path), self._dir / name)
            self._arrays[name] = _codec.writable(arr)
        for v, dim in self.views.items():
            arr = self._arrays[v]
            if _codec.data_type(arr) != a["dtype"] or arr.shape != (self.n, int(dim)):
                raise StoreCorruptError(
                    f"model {model!r} view {v!r} is {arr.shape} {_codec.data_type(arr)}, the group records "
                    f"({self.n}, {dim}) {a['dtype']} (edited metadata?); run `facestore verify {store.path}`")
        # Chunks this writer has not seen committed yet; checked against the disk as writes land.
        self._unfinished = set(self.pending_chunks())
        if not self._unfinished and a.get("complete") is not True:
            self._mark_complete()  # a crash between the last commit and the marker: finish it now
        elif self._unfinished and a.get("complete") is not False:
            group.attrs["complete"] = False

    @classmethod
    def open(cls, store, model: str, *, spec: dict[str, Any], views: dict[str, int], dtype: str,
             chunk_rows: int, default_view: str | None, kind: str) -> ModelWriter:
        import zarr

        from facestore import __version__

        n = store.n
        if n == 0:
            raise StoreError(f"{store.path} has an empty index; sync the dataset first (store.sync_index(scan_dataset(DATA)))")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive number of rows, got {chunk_rows}")
        views = {str(k): int(v) for k, v in views.items()}
        root = zarr.open_group(str(store.path), mode="r+")
        models = root.require_group(layout.MODELS)
        if model in models.group_keys():
            g = models[model]
            a = dict(g.attrs)
            wanted = {"views": views, "dtype": dtype, "chunk_rows": int(chunk_rows)}
            stored = {"views": a["views"], "dtype": a["dtype"], "chunk_rows": a["chunk_rows"]}
            hard_old = {k: v for k, v in a["spec"].items() if k not in _SOFT_SPEC_KEYS}
            hard_new = {k: v for k, v in spec.items() if k not in _SOFT_SPEC_KEYS}
            diffs = spec_differences(stored, wanted) + spec_differences(hard_old, hard_new, "spec")
            if diffs:
                raise SpecMismatchError(
                    f"model {model!r} in {store.path} was built with a different spec; refusing to mix vectors:\n  "
                    + "\n  ".join(diffs)
                    + f"\nUse the original settings to resume, or store this variant under another name "
                    f"(e.g. --model {model} into a new store), or delete {store.path / layout.MODELS / model} to rebuild."
                )
            soft = spec_differences({k: a["spec"].get(k) for k in _SOFT_SPEC_KEYS},
                                    {k: spec.get(k) for k in _SOFT_SPEC_KEYS})
            if soft:
                warnings.warn(f"model {model!r}: library versions differ from the first build ({'; '.join(soft)})",
                              RuntimeWarning, stacklevel=3)
            cur = g[layout.STATUS].shape[0]
            if cur > n:
                raise StoreCorruptError(f"model {model!r} has {cur} rows but the index {n}; the index was cut short "
                                        f"(edited n_images?): run `facestore verify {store.path}`")
            if cur < n:
                g.attrs["complete"] = False  # new images: the group is unfinished until they are written
                for v in views:
                    g[v].resize((n, views[v]))
                g[layout.STATUS].resize((n,))
                g[layout.STATUS_DETAIL].resize((n,))
            return cls(store, model, g)
        _codec.check_no_symlink(Path(store.path), Path(store.path) / layout.MODELS)
        g = models.create_group(model)
        for v, dim in views.items():
            layout.check_model_name(v)
            _codec.create_array(g, v, shape=(n, dim), dtype=dtype, chunks=(chunk_rows, dim), fill_value=0)
        _codec.create_array(g, layout.STATUS, shape=(n,), dtype="uint8", chunks=(chunk_rows,), fill_value=layout.PENDING)
        _codec.create_array(g, layout.STATUS_DETAIL, shape=(n,), dtype=str, chunks=(chunk_rows,))
        g.attrs.update({
            "complete": False,
            "encoding-type": "facestore-model",
            "encoding-version": layout.ENCODING_VERSION,
            "spec": spec,
            "views": views,
            "default_view": default_view or next(iter(views)),
            "dtype": dtype,
            "chunk_rows": int(chunk_rows),
            "kind": kind,
            "facestore_version": __version__,
            "status_codes": {str(k): v for k, v in layout.STATUS_CODES.items()},
        })
        return cls(store, model, g)

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.chunk_rows)

    def chunk_range(self, c: int) -> tuple[int, int]:
        """``(start, stop)`` rows of chunk ``c`` (the last chunk may be short)."""
        if not 0 <= c < self.n_chunks:
            raise IndexError(f"chunk {c} out of range (0..{self.n_chunks - 1})")
        start = c * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n)

    def chunk_rows_range(self, c: int) -> tuple[int, int]:
        """The name docs/design.md gives :meth:`chunk_range`."""
        return self.chunk_range(c)

    def status(self) -> np.ndarray:
        """Per-row status codes of the group (checked reads: damage raises, never reads as written)."""
        return _codec.read(self._arrays[layout.STATUS], self.n, what=f"model {self.model!r} status").astype(np.uint8)

    def pending_chunks(self) -> list[int]:
        """Chunks holding at least one row not yet written (ok or failed)."""
        st = self.status()
        pad = (-len(st)) % self.chunk_rows
        padded = np.concatenate([st, np.ones(pad, np.uint8)]) if pad else st
        return np.nonzero((padded.reshape(-1, self.chunk_rows) == layout.PENDING).any(axis=1))[0].tolist()

    def read_chunk(self, c: int) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
        """The stored views, status and details of chunk ``c`` (to merge new rows into it)."""
        start, stop = self.chunk_range(c)
        rows = np.arange(start, stop)
        st = _codec.read_range(self._arrays[layout.STATUS], start, stop, what=f"model {self.model!r} status")
        st = st.astype(np.uint8)
        emb = {}
        for v in self.views:
            if (st == layout.PENDING).all():  # nothing committed: the chunk file may not exist yet
                emb[v] = np.zeros((stop - start, self.views[v]), self.dtype)
                continue
            emb[v] = _codec.read_rows(self._arrays[v], rows, path=self._dir / v, what=f"model {self.model!r} view {v!r}")
        details = as_str(_codec.read_range(self._arrays[layout.STATUS_DETAIL], start, stop,
                                           what=f"model {self.model!r} status_detail")).tolist()
        return emb, st, details

    def write_chunk(self, c: int, embeddings: dict[str, np.ndarray], status: np.ndarray, details: list[str]) -> np.ndarray:
        """Write chunk ``c``: every view, then the details, then the status (the commit).

        Rows whose status is ok but whose values are not finite once cast to the store's dtype
        (e.g. float16 overflow) are recorded as ``nonfinite`` and zeroed: a stored ``ok`` row is
        always finite. Returns the status actually written.
        """
        start, stop = self.chunk_range(c)
        rows = stop - start
        status = np.asarray(status, dtype=np.uint8).copy()
        details = list(details)
        if status.shape != (rows,) or len(details) != rows:
            raise ValueError(f"chunk {c} has {rows} rows; got status {status.shape} and {len(details)} details")
        if set(embeddings) != set(self.views):
            raise ValueError(f"chunk {c}: views {sorted(embeddings)} do not match the group's {sorted(self.views)}")
        cast = {}
        for v, dim in self.views.items():
            x = np.asarray(embeddings[v])
            if x.shape != (rows, dim):
                raise ValueError(f"chunk {c}, view {v!r}: expected shape {(rows, dim)}, got {x.shape}")
            with np.errstate(over="ignore", invalid="ignore"):
                cast[v] = x.astype(self.dtype)
            bad = (status == layout.OK) & ~np.isfinite(cast[v]).all(axis=1)
            for r in np.nonzero(bad)[0]:
                status[r] = layout.STATUS_BY_REASON["nonfinite"]
                details[r] = f"view {v!r} has non-finite values in {self.dtype}"
        not_ok = status != layout.OK
        root = Path(self.store.path)
        for name in [*self.views, layout.STATUS, layout.STATUS_DETAIL]:
            _codec.check_no_symlink(root, _codec.chunk_file(self._dir / name, c, 2 if name in self.views else 1).parent)
        for v in self.views:
            cast[v][not_ok] = 0
            self._arrays[v][start:stop] = cast[v]
        self._arrays[layout.STATUS_DETAIL][start:stop] = np.asarray(details, dtype=object).astype(str)
        self._arrays[layout.STATUS][start:stop] = status
        self._unfinished.discard(c)
        self._check_finished()
        return status

    def _check_finished(self) -> None:
        """Mark the group complete once no chunk anywhere is pending (other ranks' chunks included).

        Each call re-reads only the first chunk still believed unfinished and stops at the first
        one that is: one small read per write, each chunk confirmed once.
        """
        while self._unfinished:
            c = min(self._unfinished)
            start, stop = self.chunk_range(c)
            st = _codec.read_range(self._arrays[layout.STATUS], start, stop, what=f"model {self.model!r} status")
            if (st == layout.PENDING).any():
                return
            self._unfinished.discard(c)
        self._mark_complete()

    def _mark_complete(self) -> None:
        self.group.attrs.update({"complete": True,
                                 "completed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})

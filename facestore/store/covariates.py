"""Per-image covariates in the index: ``index/covariates/<name>``, one value per row.

Covariates are attributes a probe can control for or stratify by (gender, age, the lexicon's
name gender). They come from a manifest's extra columns (written with the index and carried
through every append), from a CSV keyed by image ID or path (:func:`covariates_from_csv`), or
from a function of the names (:func:`add_name_gender`). String covariates use ``""`` for a
missing value, numeric ones ``NaN`` (an integer column that needs a missing value becomes
float64). Each array records where it came from in its attrs (``source``, ``version``,
``threshold``, ...). Whole-array writes are atomic (a hidden sibling renamed into place);
appended rows are written past ``n_images`` before the index commits them.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from facestore.errors import DatasetError, StoreCorruptError
from facestore.store import _codec, layout

_PREFIX = f"{layout.INDEX}/{layout.COVARIATES}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _group(store, *, create: bool = False):
    try:
        return store._group(_PREFIX, create=create)
    except KeyError:
        return None


def covariate_names(store) -> list[str]:
    """Names of the store's covariates, sorted."""
    if not store.n:
        return []
    g = _group(store)
    return [] if g is None else sorted(k for k in g.array_keys() if not k.startswith("."))


def covariate_attrs(store, name: str) -> dict[str, Any]:
    """The attrs of covariate ``name`` (source, version, threshold, kind, ...)."""
    g = _group(store)
    if g is None or name not in covariate_names(store):
        raise KeyError(f"no covariate {name!r} in {store.path}; have: {', '.join(covariate_names(store)) or 'none'}")
    return dict(g[name].attrs)


def missing_value(dtype: np.dtype):
    return "" if np.dtype(dtype).kind in "OTUS" else np.nan


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    """``values`` extended with the missing value to ``n`` rows (integers become float64 for NaN)."""
    k = len(values)
    if k >= n:
        return values[:n]
    if values.dtype.kind in "iuf":
        return np.concatenate([values.astype(np.float64), np.full(n - k, np.nan)])
    return np.concatenate([values.astype(object), np.full(n - k, "", dtype=object)]).astype(str)


def read_covariates(store, n: int) -> dict[str, np.ndarray]:
    """Every covariate as an array of ``n`` values in index order (rows added after it: missing)."""
    out: dict[str, np.ndarray] = {}
    g = _group(store) if n else None
    for name in covariate_names(store):
        arr = g[name]
        if arr.attrs.get("complete") is not True:
            raise StoreCorruptError(f"covariate {name!r} in {store.path} was not saved completely; add it again")
        k = min(arr.shape[0], n)
        v = _codec.read(arr, k, what=f"covariate {name!r}", base=Path(store.path) / arr.path, require_chunks=True)
        out[name] = _pad(v if v.dtype.kind in "iuf" else _codec.as_str(v), n)
    return out


def _storage(values) -> tuple[np.ndarray, Any]:
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return v.astype(np.int64), "int64"
    if v.dtype.kind == "f":
        return v.astype(np.float64), "float64"
    return _codec.as_str(v.astype(str)), str


def save_covariate(store, name: str, values, *, attrs: dict[str, Any]) -> None:
    """Write covariate ``name`` whole (at least ``n`` values, index order), atomically; replaces an existing one.

    Values past ``n`` are allowed only while an index append is under way (they belong to rows it
    has not committed yet).
    """
    store._require_writable()
    layout.check_model_name(name)
    values, dtype = _storage(values)
    if len(values) < store.n:
        raise ValueError(f"covariate {name!r} has {len(values)} values; the store has {store.n} images")
    g = _group(store, create=True)
    base = Path(store.path) / _PREFIX
    _codec.check_no_symlink(Path(store.path), base)
    tmp = f".tmp-{name}-{uuid.uuid4().hex[:12]}"
    arr = _codec.create_array(g, tmp, shape=(len(values),), dtype=dtype, chunks=(layout.index_chunk_rows(len(values)),))
    arr[:] = values
    arr.attrs.update({**attrs, "kind": "numeric" if dtype != str else "string", "created": _now(), "complete": True})
    final = base / name
    if final.exists():
        old = base / f".old-{name}-{uuid.uuid4().hex[:12]}"
        os.rename(final, old)
        os.rename(base / tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(base / tmp, final)


def plan_dataset_covariates(store, ds, rows: np.ndarray, *, n_old: int) -> list[tuple[str, np.ndarray, dict]]:
    """The dataset's covariate values for its ``rows`` (about to be appended after ``n_old`` index
    rows), checked against the stored covariates before anything of the sync is written.

    A stored covariate that came from the dataset but is absent from it now gets missing values
    for the new rows; a column whose values change kind (numbers vs strings) is an error.
    """
    have = set(covariate_names(store)) if n_old else set()
    cols = dict(getattr(ds, "covariates", {}) or {})
    plan = []
    for name, values in cols.items():
        new = np.asarray(values)[rows]
        if name in have:
            stored_numeric = _group(store)[name].attrs.get("kind") == "numeric"
            if stored_numeric != (new.dtype.kind in "iuf") and len(new):
                kind = "numeric" if stored_numeric else "string"
                raise DatasetError(f"covariate {name!r} is {kind} in the store but the dataset's new rows give "
                                   f"{'strings' if stored_numeric else 'numbers'}; keep one kind of value per column")
        plan.append((name, new, {"source": ds.source}))
    for name in sorted(have - set(cols)):
        attrs = dict(_group(store)[name].attrs)
        if attrs.get("from") == "names":
            # Derived from the names: the new rows get it from the same lexicon and threshold.
            values, prob = _name_gender(np.asarray(ds.row_names)[rows], threshold=attrs.get("threshold"))
            plan.append((name, prob if attrs.get("field") == "probability" else values, attrs))
        elif attrs.get("source") in ("manifest", "folder"):
            missing = np.full(len(rows), np.nan) if attrs.get("kind") == "numeric" else np.full(len(rows), "")
            plan.append((name, missing, attrs))
    return plan


def _name_gender(names, *, threshold: float | None):
    """Per-row ``(values, probability)`` of the lexicon for ``names``, and the full result."""
    from facestore.name_gender import infer_name_gender

    names = [str(x) for x in names]
    uniq = sorted(set(names))
    kw = {} if threshold is None else {"threshold": float(threshold)}
    result = infer_name_gender(uniq, **kw)
    pos = {nm: i for i, nm in enumerate(uniq)}
    idx = np.fromiter((pos[x] for x in names), dtype=np.int64, count=len(names))
    values = np.asarray(result.values).astype(str)
    prob = np.asarray(result.probability, dtype=np.float64)
    return values[idx] if len(idx) else values[:0], prob[idx] if len(idx) else prob[:0]


def write_dataset_covariates(store, ds, rows: np.ndarray, *, n_old: int, plan=None) -> None:
    """Write the dataset's covariates for ``rows``, appended after the first ``n_old`` index rows.

    Each covariate is rewritten whole and atomically (old values, then the new rows'); until the
    index commits the new rows, readers see only the first ``n_old`` values.
    """
    plan = plan_dataset_covariates(store, ds, rows, n_old=n_old) if plan is None else plan
    current = read_covariates(store, n_old) if n_old else {}
    for name, new, attrs in plan:
        new_v, _ = _storage(new)
        old_v = current.get(name)
        if old_v is None:  # a new column: old rows get the missing value
            old_v = _pad(new_v[:0], n_old)
            attrs = {**attrs, "added_at_row": int(n_old)}
        else:
            attrs = {k: v for k, v in _group(store)[name].attrs.items() if k not in ("kind", "created", "complete")}
        if old_v.dtype.kind in "iuf":
            full = np.concatenate([old_v, new_v])
            if full.dtype.kind == "f" or old_v.dtype.kind == "f" or new_v.dtype.kind == "f":
                full = full.astype(np.float64)
        else:
            full = np.concatenate([old_v.astype(object), new_v.astype(object)]).astype(str)
        save_covariate(store, name, full, attrs=attrs)


def covariates_from_csv(store, path: str | os.PathLike, *, replace: bool = False) -> dict[str, Any]:
    """Add covariates from a CSV with an ``image_id`` or ``path`` column; every other column is one covariate.

    Store images the file does not list get the missing value; IDs or paths the store does not
    know are an error (listed). An existing covariate of the same name is refused unless ``replace``.
    """
    from facestore.dataset import typed_column

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [c.strip() for c in (next(reader, None) or [])]
            rows = []
            for fields in reader:
                if not fields or not any(x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    raise DatasetError(f"{path}: line {reader.line_num} has {len(fields)} field(s), the header has "
                                       f"{len(header)}")
                rows.append(fields)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read covariates file {path}: {e}; it must be a UTF-8 CSV with a header row") from None
    key = "image_id" if "image_id" in header else "path" if "path" in header else None
    if key is None:
        raise DatasetError(f"{path} needs an image_id or a path column to match rows to the store's images; "
                           f"found {header or 'no header'}")
    names = [c for c in header if c not in ("image_id", "path")]
    if not names:
        raise DatasetError(f"{path} has no covariate column besides {key}")
    for c in names:
        try:
            layout.check_model_name(c)
        except ValueError:
            raise DatasetError(f"{path}: column {c!r} cannot be a covariate name (no slashes, leading dots or spaces)") from None
    existing = set(covariate_names(store)) & set(names)
    if existing and not replace:
        raise DatasetError(f"covariate(s) {', '.join(sorted(existing))} already in {store.path}; pass --replace "
                           "(replace=True) to overwrite them")
    ki = header.index(key)
    keys = np.asarray([r[ki].strip() for r in rows], dtype=object).astype(str) if rows else np.zeros(0, "<U1")
    if len(np.unique(keys)) != len(keys):
        raise DatasetError(f"{path}: some {key} values appear more than once; each image must appear once")
    index = store.index
    lookup_from = index.image_ids if key == "image_id" else index.paths
    pos = {k: i for i, k in enumerate(lookup_from.tolist())}
    where = np.fromiter((pos.get(k, -1) for k in keys.tolist()), dtype=np.int64, count=len(keys))
    if (where < 0).any():
        bad = keys[where < 0]
        raise DatasetError(f"{len(bad)} {key}(s) in {path} are not in the store, e.g. {', '.join(bad[:5].tolist())}")
    added = []
    for c in names:
        vals = typed_column([r[header.index(c)].strip() for r in rows])
        if vals.dtype.kind in "iu" and len(keys) < store.n:
            vals = vals.astype(np.float64)  # images the file does not list need NaN
        if vals.dtype.kind in "iuf":
            full = np.full(store.n, np.nan if vals.dtype.kind == "f" else 0, dtype=vals.dtype)
        else:
            full = np.full(store.n, "", dtype=object)
        full[where] = vals
        full = full.astype(str) if full.dtype == object else full
        store.add_covariate(c, full, attrs={"source": f"file:{path.resolve()}", "key": key})
        added.append(c)
    return {"covariates": added, "rows_matched": int(len(keys)), "rows_missing": int(store.n - len(keys))}


def add_name_gender(store, *, threshold: float | None = None, name: str = "name_gender") -> dict[str, Any]:
    """Add ``name_gender`` (``f``/``m``/``unknown`` per image, from its name) and
    ``name_gender_probability`` (the lexicon's P(female), NaN for a name it does not list), with
    the lexicon's source, version and threshold in their attrs; images appended later get them
    from the same lexicon and threshold. Returns a summary with the names left ``unknown``."""
    from facestore.name_gender import infer_name_gender

    index = store.index
    kw = {} if threshold is None else {"threshold": float(threshold)}
    result = infer_name_gender(list(index.names), **kw)
    values = np.asarray(result.values).astype(str)
    prob = np.asarray(result.probability, dtype=np.float64)
    labels = index.labels
    unknown = [str(u) for u in result.unknown]
    attrs = {"source": str(result.source), "version": str(result.version), "threshold": float(result.threshold),
             "from": "names", "unknown_names": unknown[:1000], "n_unknown_names": len(unknown)}
    store.add_covariate(name, values[labels] if len(labels) else values[:0], attrs={**attrs, "field": "values"})
    store.add_covariate(f"{name}_probability", prob[labels] if len(labels) else prob[:0],
                        attrs={**attrs, "field": "probability"})
    counts = {v: int((values == v).sum()) for v in ("f", "m", "unknown")}
    return {"covariates": [name, f"{name}_probability"], "names": counts, "unknown": unknown,
            "source": attrs["source"], "version": attrs["version"], "threshold": attrs["threshold"]}

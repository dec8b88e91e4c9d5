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
    return "" if np.dtype(dtype).kind in "OTU" else np.nan


def read_covariates(store, n: int) -> dict[str, np.ndarray]:
    """Every covariate as an array of ``n`` values in index order (rows added after it: missing)."""
    out: dict[str, np.ndarray] = {}
    for name in covariate_names(store):
        arr = _group(store)[name]
        if arr.attrs.get("complete") is not True:
            raise StoreCorruptError(f"covariate {name!r} in {store.path} was not saved completely; add it again")
        k = min(arr.shape[0], n)
        v = _codec.read(arr, k, what=f"covariate {name!r}", base=Path(store.path) / arr.path, require_chunks=True)
        if v.dtype.kind not in "iuf":
            v = _codec.as_str(v)
        if k < n:
            if v.dtype.kind in "iu":
                v = v.astype(np.float64)
            pad = np.full(n - k, missing_value(v.dtype), dtype=v.dtype if v.dtype.kind == "f" else object)
            v = np.concatenate([v.astype(object) if v.dtype.kind == "U" else v, pad])
            if v.dtype == object:
                v = v.astype(str)
        out[name] = v
    return out


def _storage(values: np.ndarray) -> tuple[np.ndarray, Any]:
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return v.astype(np.int64), "int64"
    if v.dtype.kind == "f":
        return v.astype(np.float64), "float64"
    return _codec.as_str(v.astype(str)), str


def save_covariate(store, name: str, values, *, attrs: dict[str, Any]) -> None:
    """Write covariate ``name`` whole (``n`` values, index order), atomically; replaces an existing one."""
    store._require_writable()
    layout.check_model_name(name)
    values, dtype = _storage(values)
    if len(values) != store.n:
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
    """What :func:`write_dataset_covariates` will write for the dataset's ``rows`` (checked first,
    so that a conflict fails before anything of the sync is written)."""
    have = set(covariate_names(store)) if n_old else set()
    cols = dict(getattr(ds, "covariates", {}) or {})
    plan = []
    for name, values in cols.items():
        new = np.asarray(values)[rows]
        if name in have:
            stored_numeric = dict(_group(store)[name].attrs).get("kind") == "numeric"
            if stored_numeric != (new.dtype.kind in "iuf"):
                kind = "numeric" if stored_numeric else "string"
                raise DatasetError(f"covariate {name!r} is {kind} in the store but the dataset's new rows give "
                                   f"{'strings' if stored_numeric else 'numbers'}; keep one kind of value per column")
        plan.append((name, new, {"source": ds.source}))
    for name in sorted(have - set(cols)):
        stored = _group(store)[name]
        kind = stored.attrs.get("kind")
        if dict(stored.attrs).get("source") in ("manifest", "folder"):
            missing = np.full(len(rows), np.nan) if kind == "numeric" else np.full(len(rows), "")
            plan.append((name, missing, {}))
    return plan


def write_dataset_covariates(store, ds, rows: np.ndarray, *, n_old: int, plan=None) -> None:
    """Write the dataset's covariates for ``rows``, appended after the first ``n_old`` index rows."""
    plan = plan_dataset_covariates(store, ds, rows, n_old=n_old) if plan is None else plan
    if not plan:
        return
    n_new = n_old + len(rows)
    have = set(covariate_names(store)) if n_old else set()
    for name, new, attrs in plan:
        if name not in have:
            # A new column (or the first sync): old rows get the missing value, the whole array at once.
            new_s, _ = _storage(new)
            if n_old and new_s.dtype.kind in "iu":
                new_s = new_s.astype(np.float64)
            head = np.full(n_old, missing_value(new_s.dtype), dtype=new_s.dtype if new_s.dtype.kind == "f" else object)
            full = np.concatenate([head, new_s.astype(object) if new_s.dtype.kind == "U" else new_s]) if n_old else new_s
            if full.dtype == object:
                full = full.astype(str)
            save_covariate(store, name, full, attrs={**attrs, "n_rows_at_creation": int(n_new)})
            continue
        g = _group(store)
        arr = _codec.writable(g[name])
        cur = np.asarray(read_covariates(store, n_old)[name])
        new_v, _ = _storage(new)
        if cur.dtype.kind == "i" and (new_v.dtype.kind == "f" or arr.shape[0] < n_old):
            # Integers that now need a missing value (or came as floats): rewrite as float64.
            full = np.concatenate([cur.astype(np.float64), new_v.astype(np.float64)])
            save_covariate(store, name, full, attrs={k: v for k, v in arr.attrs.items() if k not in ("kind", "created")})
            continue
        if arr.shape[0] < n_old:  # added later from a file, shorter than the index: fill the gap first
            arr.resize((n_old,))
            arr[arr.shape[0]:n_old] = np.full(n_old - arr.shape[0], missing_value(cur.dtype))
        arr.resize((n_new,))
        arr[n_old:n_new] = new_v.astype(cur.dtype) if cur.dtype.kind in "iuf" else new_v


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
            vals = vals.astype(np.float64)
        full = np.full(store.n, missing_value(vals.dtype), dtype=vals.dtype if vals.dtype.kind == "f" else object)
        full[where] = vals
        full = full.astype(str) if full.dtype == object else full
        store.add_covariate(c, full, attrs={"source": f"file:{path.resolve()}", "key": key})
        added.append(c)
    return {"covariates": added, "rows_matched": int(len(keys)), "rows_missing": int(store.n - len(keys))}


def add_name_gender(store, *, threshold: float | None = None, name: str = "name_gender") -> dict[str, Any]:
    """Add ``name_gender`` (``f``/``m``/``unknown`` per image, from its name) and
    ``name_gender_probability`` (the lexicon's P(female), NaN where unknown) with the lexicon's
    source, version and threshold in their attrs. Returns a summary with the unknown names."""
    from facestore.name_gender import infer_name_gender

    index = store.index
    kw = {} if threshold is None else {"threshold": threshold}
    result = infer_name_gender(list(index.names), **kw)
    values = np.asarray(result.values).astype(str)
    prob = np.asarray(result.probability, dtype=np.float64)
    labels = index.labels
    unknown = [str(u) for u in result.unknown]
    attrs = {"source": str(result.source), "version": str(result.version), "threshold": float(result.threshold),
             "from": "names", "unknown_names": unknown[:1000], "n_unknown_names": len(unknown)}
    store.add_covariate(name, values[labels] if len(labels) else values[:0], attrs=attrs)
    store.add_covariate(f"{name}_probability", prob[labels] if len(labels) else prob[:0], attrs=attrs)
    counts = {v: int((values == v).sum()) for v in ("f", "m", "unknown")}
    return {"covariates": [name, f"{name}_probability"], "names": counts, "unknown": unknown,
            "source": attrs["source"], "version": attrs["version"], "threshold": attrs["threshold"]}

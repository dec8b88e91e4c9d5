"""``facestore upgrade``: migrate a format-1 store to the current format (2.0.0) in place.

Every array is rewritten with the checksummed codec pipeline (into a hidden sibling, then
swapped in by renaming directories, so a crash leaves each array old or new, never half), the
index gains ``name_verbatim`` and its fingerprint, model groups record whether they are
complete, splits and derived identities get their completion marker and digest. The root's
``encoding-version`` is written last: until then the store still reads as format 1, and
running the upgrade again finishes it. No vector is recomputed; the values are copied as they
are (checksums can only vouch for them from now on: run ``facestore verify --data`` against the
images if in doubt).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from facestore.errors import StoreFormatError, StoreNotFoundError
from facestore.store import _codec, layout
from facestore.store.lock import StoreLock

_TMP, _OLD = ".upgrade-", ".upgrade-old-"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def upgrade_store(path: str | os.PathLike) -> dict[str, Any]:
    """Upgrade the store at ``path`` to format :data:`~facestore.store.layout.ENCODING_VERSION`.

    Returns ``{"from": version, "to": version, "arrays": n rewritten}``; a store already in the
    current format is left alone (``arrays`` 0). Refuses while any build holds a lock.
    """
    from facestore import __version__
    from facestore.store.store import _index_fingerprint

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreNotFoundError(f"no facestore store at {path}")
    root = zarr.open_group(str(path), mode="r+")
    attrs = dict(root.attrs)
    if attrs.get("encoding-type") != layout.ENCODING_TYPE:
        raise StoreFormatError(f"{path} is not a facestore store")
    version = str(attrs.get("encoding-version", "0"))
    major = int(version.split(".")[0])
    if major == layout.READABLE_MAJOR:
        return {"from": version, "to": version, "arrays": 0}
    if major not in layout.LEGACY_MAJORS:
        raise StoreFormatError(f"{path} uses store format {version}; this facestore upgrades only "
                               f"{', '.join(f'{m}.x' for m in layout.LEGACY_MAJORS)}")
    locks = [StoreLock(path / layout.LOCKS / "index.lock", owner="facestore upgrade")]
    models = _children(path / layout.MODELS)[1] if (path / layout.MODELS).is_dir() else []
    locks += [StoreLock(path / layout.LOCKS / f"{m}.lock", owner="facestore upgrade") for m in models]
    held = []
    try:
        for lk in locks:
            held.append(lk.acquire())
        n = int(attrs.get("n_images", 0))
        rewritten = _upgrade_group(path, root, "", n=n)
        if n and (path / layout.INDEX).is_dir():
            _upgrade_index(path, root, n)
        for m in models:
            g = root[f"{layout.MODELS}/{m}"]
            st = np.asarray(g[layout.STATUS][:])
            g.attrs.update({"complete": bool(len(st) >= n and (st[:n] != layout.PENDING).all()),
                            "encoding-version": layout.ENCODING_VERSION})
        for kind in (layout.SPLITS, layout.IDENTITIES):
            if (path / kind).is_dir():
                for name in _children(path / kind)[1]:
                    _mark_rows_group(root[f"{kind}/{name}"])
        fp = None
        if n:
            g = root[layout.INDEX]

            def col(name):
                a = np.asarray(g[name][:n])
                return a if a.dtype.kind in "iuf" else _codec.as_str(a)

            names = np.asarray(list(g.attrs.get("names", [])), dtype=object)
            row_names = names[col("label")].astype(str) if len(names) else np.zeros(n, "<U1")
            ident = col("identity") if g.attrs.get("has_identity") else None
            fp = _index_fingerprint(col("image_id"), col("path"), row_names, ident, col("content_hash"))
        root.attrs.update({"index_fingerprint": fp, "appending": None, "facestore_version": __version__,
                           "upgraded": {"from": version, "at": _now()},
                           "encoding-version": layout.ENCODING_VERSION})  # the commit
    finally:
        for lk in held:
            lk.release()
    return {"from": version, "to": layout.ENCODING_VERSION, "arrays": rewritten}


def _children(directory: Path) -> tuple[list[str], list[str]]:
    """Array and group names below a group's directory, read from the files (zarr's own listing
    warns about the non-zarr ``.locks`` folder); hidden names (temporaries) are skipped."""
    import json

    arrays, groups = [], []
    for e in sorted(os.scandir(directory), key=lambda e: e.name):
        meta = Path(e.path) / "zarr.json"
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False) or not meta.exists():
            continue
        kind = json.loads(meta.read_text()).get("node_type")
        (arrays if kind == "array" else groups).append(e.name)
    return arrays, groups


def _upgrade_group(store_path: Path, group, prefix: str, *, n: int) -> int:
    count = 0
    arrays, groups = _children(store_path / prefix if prefix else store_path)
    for name in arrays:
        count += _rewrite_array(store_path, group, name, rel=f"{prefix}{name}")
    for name in groups:
        count += _upgrade_group(store_path, group[name], f"{prefix}{name}/", n=n)
    return count


def _committed_chunks(group, name: str) -> np.ndarray | None:
    """For a model group's arrays: the chunks holding a written row (others stay absent = pending)."""
    if layout.STATUS not in group.array_keys() or name == layout.STATUS:
        return None
    st = np.asarray(group[layout.STATUS][:])
    cr = group[layout.STATUS].chunks[0]
    return np.unique(np.nonzero(st != layout.PENDING)[0] // cr)


def _rewrite_array(store_path: Path, group, name: str, *, rel: str) -> int:
    base = store_path / Path(group.path) if group.path else store_path
    tmp, old_dir = f"{_TMP}{name}", base / f"{_OLD}{name}"
    if not (base / name).exists() and old_dir.exists():
        os.rename(old_dir, base / name)  # cut between the two renames: undo
    shutil.rmtree(base / tmp, ignore_errors=True)
    shutil.rmtree(old_dir, ignore_errors=True)
    old = group[name]
    if _codec.is_checked(old):
        return 0
    is_str = _codec.data_type(old) == "string"
    new = _codec.create_array(group, tmp, shape=old.shape, dtype=str if is_str else str(old.dtype),
                              chunks=old.chunks, fill_value=old.metadata.fill_value)
    new.attrs.update(dict(old.attrs))
    cr = old.chunks[0]
    committed = _committed_chunks(group, name)
    if name == layout.STATUS:
        present = set(int(x) for x in os.listdir(base / name / "c")) if (base / name / "c").exists() else set()
        chunks = sorted(present)
    elif committed is not None:
        chunks = committed.tolist()
    else:
        chunks = range(_codec.n_chunks(old.shape[0], cr))
    for c in chunks:
        sl = slice(c * cr, min((c + 1) * cr, old.shape[0]))
        new[sl] = np.asarray(old[sl])
    os.rename(base / name, old_dir)
    os.rename(base / tmp, base / name)
    shutil.rmtree(old_dir, ignore_errors=True)
    return 1


def _upgrade_index(store_path: Path, root, n: int) -> None:
    g = root[layout.INDEX]
    if "name_verbatim" not in g.array_keys():
        arr = _codec.create_array(g, "name_verbatim", shape=(g["image_id"].shape[0],), dtype=str,
                                  chunks=g["image_id"].chunks)
        arr[:] = np.full(arr.shape[0], "", dtype=object).astype(str)
    g["label"].attrs["names"] = list(g.attrs.get("names", []))


def _mark_rows_group(g) -> None:
    from facestore.store.store import _values_digest

    values = np.asarray(g["values"][:])
    if values.dtype.kind not in "iuf":
        values = _codec.as_str(values)
    g.attrs.update({"n_rows": int(len(values)), "values_sha256": _values_digest(values), "complete": True})

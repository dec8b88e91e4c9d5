"""Embeddings in and out of a store: vectors computed elsewhere, and plain-numpy exports."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from facestore.store import layout


def read_ids(path: str | os.PathLike) -> np.ndarray:
    """Image IDs from a ``.npy`` array of strings or a text file with one ID per line."""
    path = Path(path)
    if path.suffix == ".npy":
        ids = np.load(path, allow_pickle=False)
    else:
        ids = np.asarray([line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()])
    return np.asarray(ids).astype(str)


def import_embeddings(store, model: str, *, embeddings: np.ndarray, ids, view: str = "embedding",
                      dtype: str = "float32", chunk_rows: int = layout.DEFAULT_CHUNK_ROWS,
                      allow_missing: bool = False, ignore_unknown_ids: bool = False,
                      spec: dict[str, Any] | None = None, source: str = "") -> dict[str, Any]:
    """Store vectors computed elsewhere (e.g. earlier ArcFace runs), keyed by image ID.

    IDs unknown to the store are an error unless ``ignore_unknown_ids`` (vectors for a superset
    of the store's images: the unknown ones are skipped and counted); store rows without a
    vector are an error unless ``allow_missing`` (they are then recorded as ``not_imported``).

    The import is resumable: the group is marked complete only when its last chunk is written,
    and importing the same vectors again writes just the chunks still pending. An unfinished
    import of *different* vectors is replaced (nothing of it was usable). Returns a summary.
    """
    emb = np.asarray(embeddings)
    ids = np.asarray(ids).astype(str)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"embeddings must be (N, D) with one row per ID; got {emb.shape} for {len(ids)} IDs")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("the IDs file lists some image IDs more than once; each ID must appear once")
    digest = hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()
    rows = store.find_rows(ids)
    unknown = rows < 0
    if unknown.any() and not ignore_unknown_ids:
        bad = ids[unknown]
        raise KeyError(
            f"{len(bad)} image ID(s) are not in the store index, e.g. {', '.join(bad[:5].tolist())}; import only the "
            "store's images, or pass ignore_unknown_ids=True (--ignore-unknown-ids) to skip the others"
        )
    known = ~unknown
    rows = rows[known]
    covered = np.zeros(store.n, dtype=bool)
    covered[rows] = True
    if not allow_missing and not covered.all():
        missing = store.index.image_ids[~covered]
        raise ValueError(
            f"{len(missing)} store image(s) have no imported vector, e.g. {', '.join(missing[:5].tolist())}; "
            "import vectors for every image, or pass allow_missing=True (--allow-missing) to record them as not_imported"
        )
    spec = dict(spec or {})
    spec.setdefault("name", model)
    spec.update({"family": "imported", "source": source or spec.get("source", "arrays"), "sha256": digest,
                 "views": {view: int(emb.shape[1])}})
    if model in store.models:
        attrs = store.model_attrs(model)
        same = attrs.get("spec", {}).get("sha256") == digest
        if attrs.get("kind") == "imported" and not same and not store.is_complete(model):
            store.delete_model(model)  # an interrupted import of other vectors: nothing in it is usable
    writer = store.model_writer(model, spec=spec, views={view: int(emb.shape[1])}, dtype=dtype,
                                chunk_rows=chunk_rows, kind="imported")
    reason = layout.STATUS_BY_REASON["not_imported"]
    src_of_row = np.full(store.n, -1, np.int64)
    src_of_row[rows] = np.nonzero(known)[0]
    with store.lock(model, owner=f"import {model}"):
        for c in writer.pending_chunks():
            start, stop = writer.chunk_range(c)
            src = src_of_row[start:stop]
            ok = src >= 0
            block = np.zeros((stop - start, emb.shape[1]), dtype=np.float32)
            block[ok] = emb[src[ok]]
            status = np.where(ok, layout.OK, reason).astype(np.uint8)
            details = ["" if k else "no vector in the imported file" for k in ok]
            writer.write_chunk(c, {view: block}, status, details)
    return {"model": model, "view": view, "imported": int(known.sum()), "not_imported": int((~covered).sum()),
            "ignored_unknown_ids": int(unknown.sum())}


def export_embeddings(store, model: str, *, out: str | os.PathLike, view: str | None = None) -> dict[str, Any]:
    """Write ``embeddings.npy`` (float32, ok rows), ``image_ids.npy``, ``labels.npy``, ``names.json``, ``spec.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    view = view or store.default_view(model)
    X, ids = store.load(model, view=view)
    labels = store.index.labels[store.rows_of(ids)]
    np.save(out / "embeddings.npy", X)
    np.save(out / "image_ids.npy", np.asarray(ids).astype(str))
    np.save(out / "labels.npy", labels.astype(np.int64))
    (out / "names.json").write_text(json.dumps(store.index.names, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "spec.json").write_text(json.dumps({"model": model, "view": view, "spec": store.model_spec(model)},
                                              indent=1, ensure_ascii=False), encoding="utf-8")
    return {"model": model, "view": view, "rows": int(len(ids)), "dim": int(X.shape[1]) if X.ndim == 2 else 0,
            "out": str(out)}

"""``facestore verify``: check that a store is complete, intact and still matches its dataset."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facestore.dataset import hash_files
from facestore.store import layout
from facestore.store.store import Store, open_store


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store. ``kind`` is a short code; ``message`` says how to fix it."""

    kind: str
    message: str
    model: str | None = None

    def __str__(self) -> str:
        where = f"[{self.model}] " if self.model else ""
        return f"{where}{self.kind}: {self.message}"


def verify_store(path: str | os.PathLike, *, data: str | os.PathLike | None = None, check_files: bool = True,
                 workers: int = 8) -> list[Problem]:
    """Every check of the store at ``path``; an empty list means the store is sound.

    Checks: format version; index columns of equal length and unique IDs; per model: every row
    written or recorded as failed, a chunk file present for every chunk with written rows,
    values finite, view shapes matching the recorded spec; and (``check_files``) every image's
    content fingerprint against the dataset at ``data`` (default: the root recorded at build time).
    """
    store = path if isinstance(path, Store) else open_store(path, mode="r")
    problems: list[Problem] = []
    idx = store.index
    n = store.n
    lengths = {k: len(v) for k, v in (("image_id", idx.image_ids), ("path", idx.paths), ("label", idx.labels),
                                       ("content_hash", idx.content_hashes))}
    if len(set(lengths.values()) | {n}) != 1:
        problems.append(Problem("index", f"index columns have different lengths {lengths} (n_images={n})"))
    if len(np.unique(idx.image_ids)) != len(idx.image_ids):
        problems.append(Problem("index", "image IDs are not unique"))
    if len(idx.labels) and (idx.labels.min() < 0 or idx.labels.max() >= len(idx.names)):
        problems.append(Problem("index", "labels point outside the names list"))
    for model in store.models:
        problems.extend(_verify_model(store, model))
    if check_files and n:
        problems.extend(_verify_files(store, data, workers=workers))
    return problems


def _verify_model(store: Store, model: str) -> list[Problem]:
    out: list[Problem] = []
    attrs = store.model_attrs(model)
    g = store._model_group(model)
    st = store.status(model)
    pending = int((st == layout.PENDING).sum())
    if pending:
        out.append(Problem("incomplete", f"{pending} of {len(st)} rows not written yet; resume with the same "
                                         "`facestore build` command", model))
    if g[layout.STATUS].shape[0] < store.n:
        out.append(Problem("incomplete", f"group has {g[layout.STATUS].shape[0]} rows, the index {store.n}: new images "
                                         "not built yet; re-run `facestore build`", model))
    views = dict(attrs.get("views", {}))
    if not views:
        out.append(Problem("spec", "the model group records no views", model))
    spec_views = attrs.get("spec", {}).get("views")
    if isinstance(spec_views, dict) and {k: int(v) for k, v in spec_views.items()} != {k: int(v) for k, v in views.items()}:
        out.append(Problem("spec", f"recorded spec views {spec_views} differ from the stored views {views}", model))
    chunk_rows = int(attrs["chunk_rows"])
    written = st != layout.PENDING
    ok = st == layout.OK
    for view, dim in views.items():
        try:
            arr = g[view]
        except KeyError:
            out.append(Problem("missing_array", f"view {view!r} is recorded but its array is missing", model))
            continue
        if arr.shape[1] != int(dim) or str(arr.dtype) != attrs["dtype"]:
            out.append(Problem("spec", f"view {view!r} is {arr.shape} {arr.dtype}, spec says dim {dim} {attrs['dtype']}", model))
        base = store.path / layout.model_path(model) / view / "c"
        missing_chunks = []
        for c in np.unique(np.nonzero(written)[0] // chunk_rows).tolist():
            if ok[c * chunk_rows:(c + 1) * chunk_rows].any() and not (base / str(c) / "0").exists():
                missing_chunks.append(c)
        if missing_chunks:
            out.append(Problem("missing_chunk", f"view {view!r}: chunk file(s) {missing_chunks[:10]} are missing while "
                                                "their rows are marked written; the vectors are lost. Delete the "
                                                f"model group ({store.path / layout.model_path(model)}) and rebuild it",
                               model))
            continue
        rows = np.nonzero(ok)[0]
        bad = 0
        for start in range(0, len(rows), 65536):
            X, _ = store.load(model, view=view, ids=store.index.image_ids[rows[start:start + 65536]], dtype=None)
            bad += int((~np.isfinite(X)).any(axis=1).sum())
        if bad:
            out.append(Problem("nonfinite", f"view {view!r}: {bad} rows marked ok hold non-finite values", model))
    return out


def _verify_files(store: Store, data, *, workers: int) -> list[Problem]:
    root = Path(data) if data is not None else store.data_root
    if root is not None and root.is_file():  # a manifest: paths are relative to its folder
        root = root.resolve().parent
    if root is None or not root.exists():
        return [Problem("dataset", f"dataset root {root} not found; pass --data PATH to check the images' fingerprints")]
    idx = store.index
    hashes = hash_files([os.path.join(root, p) for p in idx.paths], workers=workers)
    missing = idx.image_ids[(hashes == "") & (idx.content_hashes != "")]
    changed = idx.image_ids[(hashes != "") & (hashes != idx.content_hashes)]
    out = []
    if len(missing):
        out.append(Problem("missing_image", f"{len(missing)} indexed image(s) are missing from {root}, "
                                            f"e.g. {', '.join(missing[:5].tolist())}"))
    if len(changed):
        out.append(Problem("changed_image", f"{len(changed)} image(s) changed since they were embedded, "
                                            f"e.g. {', '.join(changed[:5].tolist())}; their stored vectors are stale"))
    return out

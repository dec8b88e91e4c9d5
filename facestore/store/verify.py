"""``facestore verify``: check that a store is complete, intact and still matches its dataset.

Every member is checked against the format (``docs/store-format.md``), and every problem is
collected (one damaged member never hides another):

- root: a readable format version (format 1: advise ``facestore upgrade``);
- index: every array present with the dtype the format specifies and ``n_images`` rows (an
  interrupted append is named as such), every chunk present, of the right size and checksum,
  unique IDs, labels within the names list, the names list sorted and equal in both places it
  is recorded, and the recorded index and dataset fingerprints equal to the ones recomputed;
- models: completion recorded, no pending row, views present with the recorded dtype and
  shape, every committed chunk present, of the right size and checksum, and finite in every
  ``ok`` row; the advice names the command that repairs it (resume the build, or rerun the
  import for imported groups);
- splits, derived identities, covariates and text embeddings: completion marker, values
  digest, lengths, chunks;
- the images (``check_files``): every content fingerprint against the dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facestore.dataset import hash_files
from facestore.errors import StoreCorruptError, StoreError
from facestore.store import _codec, layout
from facestore.store.store import Store, _dataset_fingerprint, _index_fingerprint, open_store


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store. ``kind`` is a short code; ``message`` says how to fix it."""

    kind: str
    message: str
    model: str | None = None
    #: Row-chunks the problem is about (damaged or missing chunks of a model group), for ``--repair``.
    chunks: tuple[int, ...] = ()

    def __str__(self) -> str:
        where = f"[{self.model}] " if self.model else ""
        return f"{where}{self.kind}: {self.message}"


#: Problem kinds that mean the store's bytes are damaged (not merely unfinished or stale).
DAMAGE_KINDS = frozenset({"missing_array", "missing_chunk", "damaged_chunk", "dtype", "length", "labels", "names",
                          "fingerprint", "nonfinite", "spec", "index", "unreadable", "split"})


def verify_store(path: str | os.PathLike, *, data: str | os.PathLike | None = None, check_files: bool = True,
                 workers: int = 8) -> list[Problem]:
    """Every check of the store at ``path`` (see the module docstring); an empty list means the store is sound."""
    store = path if isinstance(path, Store) else open_store(path, mode="r")
    problems: list[Problem] = []
    if store.legacy:
        problems.append(Problem("legacy_format", f"format {store.attrs.get('encoding-version')}: chunks carry no "
                                                 f"checksums, so damage cannot be detected; run `facestore upgrade "
                                                 f"{store.path}`"))
    index_ok = _verify_index(store, problems)
    for model in store.models:
        try:
            problems.extend(_verify_model(store, model))
        except (StoreError, KeyError, ValueError) as e:
            problems.append(Problem("unreadable", f"the model group cannot be read: {e}", model))
    for kind in (layout.SPLITS, layout.IDENTITIES):
        for name in store._list(kind):
            problems.extend(_verify_rows_group(store, kind, name))
    if index_ok:
        problems.extend(_verify_covariates(store))
        for model in store.models:
            problems.extend(_verify_text(store, model))
    if check_files and store.n and index_ok:
        problems.extend(_verify_files(store, data, workers=workers))
    return problems


# --------------------------------------------------------------------------- chunks of one array


def _check_chunks(store: Store, arr, *, rows: int, what: str, required: np.ndarray | None = None,
                  model: str | None = None, fix: str = "") -> list[Problem]:
    """Presence (of ``required`` chunks, default: all covering ``rows``), size and crc of every chunk file."""
    base = Path(store.path) / arr.path
    cr = arr.chunks[0]
    want = np.arange(_codec.n_chunks(rows, cr)) if required is None else np.asarray(required, dtype=np.int64)
    out = []
    wanted = set(want.tolist())
    gone = [] if store.legacy else [c for c in _codec.missing_chunks(base, arr, rows) if c in wanted]
    if gone:
        out.append(Problem("missing_chunk", f"{what}: chunk file(s) {gone[:10]} are missing (rows "
                                            f"{gone[0] * cr}-{min((gone[0] + 1) * cr, rows) - 1}"
                                            f"{' and others' if len(gone) > 1 else ''}); {fix}".rstrip("; "),
                           model, tuple(gone)))
    bad = []
    for c in range(_codec.n_chunks(rows, cr)):
        f = _codec.chunk_file(base, c, arr.ndim)
        if not f.exists():
            continue
        reason = _codec.file_problem(f, arr)
        if reason is None and not _codec.is_checked(arr):
            try:  # format 1: no checksum; at least the chunk must decode (zstd and vlen-utf8 errors)
                arr[c * cr:min((c + 1) * cr, arr.shape[0])]
            except (PermissionError, MemoryError):
                raise
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
        if reason is not None:
            bad.append((c, reason))
    for c, reason in bad[:10]:
        out.append(Problem("damaged_chunk", f"{what}: chunk {c} (rows {c * cr}-{min((c + 1) * cr, rows) - 1}) is "
                                            f"damaged: {reason}; {fix}".rstrip("; "), model, (c,)))
    if len(bad) > 10:
        out.append(Problem("damaged_chunk", f"{what}: {len(bad) - 10} more damaged chunk(s)", model,
                           tuple(c for c, _ in bad[10:])))
    return out


# --------------------------------------------------------------------------- index


def _verify_index(store: Store, problems: list[Problem]) -> bool:
    """Append the index's problems; True when it is sound enough to check what depends on it."""
    n = store.n
    attrs = store.attrs
    if n == 0:
        return True
    fix = "the index is damaged: make a new store from the dataset (`facestore index --data DATA --store NEW`)"
    try:
        g = store._index_group()
    except StoreCorruptError as e:
        problems.append(Problem("missing_array", str(e)))
        return False
    before = len(problems)
    appending = attrs.get("appending")
    cols = {}
    names_attr = list(g.attrs.get("names", []))
    label_names = None
    for name, want in layout.INDEX_COLUMNS.items():
        if store.legacy and name in layout.INDEX_COLUMNS_SINCE_2:
            continue
        try:
            arr = store._label_array(g) if name == "label" else g[name]
        except (KeyError, StoreCorruptError):
            problems.append(Problem("missing_array", f"index array {name!r} is missing; {fix}"))
            continue
        got = _codec.data_type(arr)
        if got != want:
            problems.append(Problem("dtype", f"index array {name!r} is {got}, the format specifies {want} (its "
                                             f"metadata was edited); {fix}"))
            continue
        length = arr.shape[0]
        if length != n:
            if appending is not None and length == int(appending):
                problems.append(Problem("interrupted_append", f"index array {name!r} has {length} rows, n_images "
                                                              f"{n}: an index sync was interrupted; rerun `facestore "
                                                              f"index` or `facestore build` to finish it"))
            elif length < n:
                problems.append(Problem("length", f"index array {name!r} has {length} rows but n_images is {n}; {fix}"))
                continue
            else:
                problems.append(Problem("length", f"index array {name!r} has {length} rows but n_images is {n} (the "
                                                  f"attr was edited, or rows were cut off); {fix}"))
        chunk_problems = _check_chunks(store, arr, rows=n, what=f"index array {name!r}", fix=fix)
        problems.extend(chunk_problems)
        if chunk_problems:
            continue
        try:
            values = _codec.read(arr, n, what=f"index array {name!r}")
        except StoreCorruptError as e:
            problems.append(Problem("damaged_chunk", str(e)))
            continue
        cols[name] = values if values.dtype.kind in "iuf" else _codec.as_str(values)
        if name == "label":
            label_names = list(arr.attrs.get("names", names_attr))
    names = label_names if label_names is not None else names_attr
    if names != sorted(set(names)):
        problems.append(Problem("names", f"the names list is not sorted and unique ({len(names)} names): it was "
                                         f"edited; {fix}"))
    if label_names is not None and not store.legacy and label_names != names_attr:
        problems.append(Problem("names", "the index's names list (index attrs) differs from the label array's "
                                         f"(label attrs): one was edited; {fix}"))
    if "image_id" in cols and len(np.unique(cols["image_id"])) != len(cols["image_id"]):
        problems.append(Problem("index", f"image IDs are not unique; {fix}"))
    if "label" in cols:
        lab = cols["label"]
        if len(lab) and (lab.min() < 0 or lab.max() >= len(names)):
            problems.append(Problem("labels", f"labels point outside the names list ({len(names)} names, labels "
                                              f"{int(lab.min())}..{int(lab.max())}); {fix}"))
    need = {"image_id", "path", "label", "content_hash"} | ({"identity"} if g.attrs.get("has_identity") else set())
    if len(problems) == before and need <= set(cols):
        ids, hashes = cols["image_id"], cols["content_hash"]
        order = np.argsort(ids)
        if attrs.get("dataset_fingerprint") not in (None, _dataset_fingerprint(ids[order], hashes[order])):
            problems.append(Problem("fingerprint", "the dataset fingerprint recorded at the last sync differs from "
                                                   f"the index's image IDs and content hashes (rows lost or edited); {fix}"))
        recorded = attrs.get("index_fingerprint")
        if recorded is not None:
            row_names = np.asarray(names, dtype=object)[cols["label"]].astype(str)
            ident = cols.get("identity") if g.attrs.get("has_identity") else None
            if recorded != _index_fingerprint(ids, cols["path"], row_names, ident, hashes):
                problems.append(Problem("fingerprint", "the index fingerprint recorded at the last sync differs from "
                                                       "the index's rows (names, labels, paths or identities were "
                                                       f"edited: e.g. two names swapped); {fix}"))
        elif not store.legacy:
            problems.append(Problem("fingerprint", f"the root attrs lack index_fingerprint; {fix}"))
    return len(problems) == before


# --------------------------------------------------------------------------- models


def _verify_model(store: Store, model: str) -> list[Problem]:
    out: list[Problem] = []
    attrs = store.model_attrs(model)
    g = store._model_group(model)
    fix = store.fix_command(model)
    kind = attrs.get("kind", "extracted")
    rebuild = (f"reset its rows with `facestore verify {store.path} --repair`, then run {fix}")
    try:
        status_arr = store._status_array(model, g)
    except StoreCorruptError as e:
        return [Problem("missing_array", f"{e}; delete the group ({store.path / layout.model_path(model)}) and "
                                         f"run {fix}", model)]
    rows = status_arr.shape[0]
    status_problems = _check_chunks(store, status_arr, rows=rows, what="status", model=model,
                                    required=np.zeros(0, np.int64), fix=rebuild)
    out.extend(status_problems)
    if rows > store.n:
        out.append(Problem("length", f"the group has {rows} rows but the index {store.n} (n_images was edited "
                                     "down, or index rows were lost)", model))
    if status_problems:
        return out
    st = store.status(model)
    pending = int((st == layout.PENDING).sum())
    what = "import" if kind == "imported" else "build"
    if pending:
        out.append(Problem("incomplete", f"{pending} of {len(st)} rows not written yet; finish the {what} with {fix}",
                           model))
    elif not store.legacy and attrs.get("complete") is not True:
        out.append(Problem("incomplete", f"the group does not record a finished {what}; rerun {fix}", model))
    views = dict(attrs.get("views", {}))
    if not views:
        out.append(Problem("spec", "the model group records no views", model))
    spec_views = attrs.get("spec", {}).get("views")
    if isinstance(spec_views, dict) and {k: int(v) for k, v in spec_views.items()} != {k: int(v) for k, v in views.items()}:
        out.append(Problem("spec", f"recorded spec views {spec_views} differ from the stored views {views}", model))
    cr = int(attrs["chunk_rows"])
    committed = np.unique(np.nonzero(st[:rows] != layout.PENDING)[0] // cr)
    with_ok = np.unique(np.nonzero(st[:rows] == layout.OK)[0] // cr)
    for view, dim in views.items():
        try:
            arr = g[view]
        except KeyError:
            out.append(Problem("missing_array", f"view {view!r} is recorded but its array is missing; delete the group "
                                                f"({store.path / layout.model_path(model)}) and run {fix}", model))
            continue
        if _codec.data_type(arr) != attrs["dtype"] or arr.ndim != 2 or arr.shape[1] != int(dim):
            out.append(Problem("dtype", f"view {view!r} is {arr.shape} {_codec.data_type(arr)}, the group records dim "
                                        f"{dim} {attrs['dtype']} (edited metadata); delete the group and run {fix}", model))
            continue
        if arr.shape[0] != rows:
            out.append(Problem("length", f"view {view!r} has {arr.shape[0]} rows, the status {rows}", model))
            continue
        required = with_ok if store.legacy else committed
        chunk_problems = _check_chunks(store, arr, rows=rows, what=f"view {view!r}", required=required, model=model,
                                       fix=rebuild)
        out.extend(chunk_problems)
        if any(p.kind == "missing_chunk" for p in chunk_problems):
            continue
        damaged = {c for p in chunk_problems for c in p.chunks}
        ok_rows = np.nonzero(st == layout.OK)[0]
        ok_rows = ok_rows[~np.isin(ok_rows // cr, list(damaged))] if damaged else ok_rows
        bad_rows: list[np.ndarray] = []
        path = Path(store.path) / layout.model_path(model) / view
        for start in range(0, len(ok_rows), 65536):
            sel = ok_rows[start:start + 65536]
            X = _codec.read_rows(arr, sel, path=path, what=f"model {model!r} view {view!r}")
            bad_rows.append(sel[(~np.isfinite(X)).any(axis=1)])
        bad = np.concatenate(bad_rows) if bad_rows else np.zeros(0, np.int64)
        if len(bad):
            chunks = tuple(np.unique(bad // cr).tolist())
            out.append(Problem("nonfinite", f"view {view!r}: {len(bad)} rows marked ok hold non-finite values (chunk(s) "
                                            f"{list(chunks[:10])}); {rebuild}", model, chunks))
    return out


def _verify_text(store: Store, model: str) -> list[Problem]:
    out = []
    for ts in store.text_template_sets(model):
        try:
            store.text_embeddings(model, ts)
        except (StoreError, KeyError, ValueError) as e:
            out.append(Problem("damaged_chunk", f"text embeddings {ts!r}: {e}", model))
    return out


# --------------------------------------------------------------------------- splits, identities, covariates


def _verify_rows_group(store: Store, kind: str, name: str) -> list[Problem]:
    what = kind[:-1]
    try:
        values, _ = store._load_rows(kind, name, -1 if kind == layout.SPLITS else "")
    except (StoreError, KeyError, ValueError) as e:
        remake = "(`probes split` with the same arguments remakes it)" if kind == layout.SPLITS else ""
        return [Problem("split" if kind == layout.SPLITS else "identities", f"{what} {name!r}: {e} {remake}".rstrip())]
    if kind == layout.SPLITS and not np.isin(values, (-1, 0, 1, 2)).all():
        return [Problem("split", f"split {name!r} holds values other than -1, 0, 1, 2")]
    return []


def _verify_covariates(store: Store) -> list[Problem]:
    from facestore.store.covariates import covariate_names, read_covariates

    if not covariate_names(store):
        return []
    try:
        read_covariates(store, store.n)
    except (StoreError, KeyError, ValueError) as e:
        return [Problem("damaged_chunk", f"covariates: {e}")]
    return []


# --------------------------------------------------------------------------- images


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


# --------------------------------------------------------------------------- repair


def repair_store(path: str | os.PathLike) -> dict[str, list[int]]:
    """Reset the rows of every damaged chunk of every model group to pending, so that the next
    build (or the same import) recomputes exactly those chunks.

    A damaged or missing view chunk, a damaged status chunk or non-finite ``ok`` rows lose their
    chunk's status, detail and view chunk files; nothing else is touched. The index, splits and
    covariates are not repaired here (they come from the dataset: make them again). Returns
    ``{model: chunks reset}``.
    """
    store = path if isinstance(path, Store) else open_store(path, mode="a")
    store._require_writable()
    reset: dict[str, list[int]] = {}
    for model in store.models:
        attrs = store.model_attrs(model)
        base = Path(store.path) / layout.model_path(model)
        with store.lock(model, owner=f"repair {model}"):
            done: set[int] = set()
            for _ in range(3):  # a damaged status chunk hides its views' problems until it is reset
                chunks = sorted({c for p in _verify_model(store, model) for c in p.chunks
                                 if p.kind in ("damaged_chunk", "missing_chunk", "nonfinite")} - done)
                if not chunks:
                    break
                for c in chunks:
                    for name in [*attrs["views"], layout.STATUS, layout.STATUS_DETAIL]:
                        f = _codec.chunk_file(base / name, c, 2 if name in attrs["views"] else 1)
                        _codec.check_no_symlink(Path(store.path), f.parent)
                        f.unlink(missing_ok=True)
                done |= set(chunks)
            if done:
                store._model_group(model).attrs["complete"] = False
                reset[model] = sorted(done)
    return reset

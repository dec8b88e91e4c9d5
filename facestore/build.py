"""The extraction pipeline: decode once -> each model's preprocessing -> forward -> whole-chunk writes.

The unit of work is the store *chunk* (``chunk_rows`` rows of every model group). Only chunks
with pending rows are processed. Within a chunk the rows are cut into fixed decode batches of
``batch_size`` rows, in row order; DataLoader workers decode each image once and apply every
model's preprocessor to the same pixels, and each model forwards its share of the batch. When
a chunk is complete it is written whole, views first and status last, so a build killed at any
moment leaves every chunk either committed or pending. A resumed build recomputes the pending
chunks with exactly the same batches, and so ends bitwise identical to an uninterrupted one.

Bad images are recorded per row with their reason (``truncated``, ``no_face``, ...) and
skipped; ``strict=True`` turns any recorded failure into a :class:`BuildError` after writing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from facestore.errors import BuildError, ImageDecodeError, PreprocessFailure

log = logging.getLogger("facestore.build")

DTYPES = ("float16", "float32")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class ModelBuildReport:
    """What one model's part of a build did.

    ``rows_written`` rows were computed and written as ok in this run, ``rows_skipped`` were
    already done (ok or recorded failures) before it; ``failures`` counts the failures recorded
    in this run by reason, ``failures_total`` every failure the model group holds afterwards.
    """

    model: str
    rows_written: int
    rows_skipped: int
    failures: dict[str, int]
    failures_total: dict[str, int]
    chunks_written: int
    forward_seconds: float
    images_per_s: float
    views: dict[str, int]
    runtime: dict[str, Any]


@dataclass(frozen=True)
class BuildReport:
    """The result of :func:`build_store`."""

    store: str
    n_rows: int
    rows_added: int
    models: tuple[ModelBuildReport, ...]
    rows_decoded: int
    seconds: float
    images_per_s: float
    device: str
    world_size: int = 1
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether any built model holds a recorded failure."""
        return any(m.failures_total for m in self.models)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A short human-readable summary (what the CLI prints at the end of a build)."""
        lines = [
            f"store {self.store}: {self.n_rows} images ({self.rows_added} new), "
            f"{self.rows_decoded} decoded in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s) "
            f"on {self.device}" + (f" x {self.world_size} ranks" if self.world_size > 1 else ""),
        ]
        for m in self.models:
            fails = ", ".join(f"{r} {n}" for r, n in sorted(m.failures.items())) or "none"
            rt = ", ".join(f"{k}={v}" for k, v in m.runtime.items())
            lines.append(
                f"  {m.model}: {m.rows_written} rows written, {m.rows_skipped} already done, "
                f"failures this run: {fails}; {m.images_per_s:.1f} images/s forward [{rt}]"
            )
            if m.failures_total and m.failures_total != m.failures:
                total = ", ".join(f"{r} {n}" for r, n in sorted(m.failures_total.items()))
                lines.append(f"    failures in the store: {total}")
        if all(m.rows_written == 0 and not m.failures for m in self.models) and self.rows_decoded == 0:
            lines.append("  nothing to do: every row of every model is already written")
        return "\n".join(lines)


# --------------------------------------------------------------------------- worker side


@dataclass
class DecodeTask:
    """One fixed decode batch: ``rows`` (store rows, ascending, all in ``chunk``) and which models need each."""

    chunk: int
    rows: np.ndarray  # int64 (R,)
    needs: dict[str, np.ndarray]  # model -> bool (R,)


@dataclass
class DecodedBatch:
    """What a worker hands back for a :class:`DecodeTask`.

    ``inputs[model]`` is the model's batch (stacked in the worker when the model uses the
    default ``torch.stack`` collate, else the list of items) for the rows ``ok_rows[model]``;
    ``failures[model]`` maps a row to ``(reason, detail)``.
    """

    chunk: int
    rows: np.ndarray
    inputs: dict[str, Any]
    ok_rows: dict[str, np.ndarray]
    failures: dict[str, dict[int, tuple[str, str]]]

    def pin_memory(self) -> DecodedBatch:
        # Called by the DataLoader's pin-memory thread on CUDA builds.
        for m, x in self.inputs.items():
            if hasattr(x, "pin_memory"):
                self.inputs[m] = x.pin_memory()
        return self


class ChunkDecoder:
    """The DataLoader dataset: item ``i`` is :class:`DecodeTask` ``i`` decoded and preprocessed."""

    def __init__(self, tasks: Sequence[DecodeTask], paths: Sequence[str],
                 preprocessors: Mapping[str, Callable[[np.ndarray], Any]], stack: Mapping[str, bool]) -> None:
        self.tasks = list(tasks)
        self.paths = paths
        self.preprocessors = dict(preprocessors)
        self.stack = dict(stack)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> DecodedBatch:
        from facestore.images import decode_image

        task = self.tasks[i]
        items: dict[str, list[Any]] = {m: [] for m in task.needs}
        ok_rows: dict[str, list[int]] = {m: [] for m in task.needs}
        failures: dict[str, dict[int, tuple[str, str]]] = {m: {} for m in task.needs}
        for j, row in enumerate(task.rows.tolist()):
            wanted = [m for m, need in task.needs.items() if need[j]]
            try:
                pixels = decode_image(self.paths[row])
            except ImageDecodeError as e:
                for m in wanted:
                    failures[m][row] = (e.reason, e.detail)
                continue
            for m in wanted:  # one decode, every model's own preprocessing
                try:
                    items[m].append(self.preprocessors[m](pixels))
                except PreprocessFailure as e:
                    failures[m][row] = (e.reason, e.detail)
                    continue
                ok_rows[m].append(row)
        inputs: dict[str, Any] = {}
        for m, xs in items.items():
            if xs and self.stack[m]:
                import torch

                inputs[m] = torch.stack(xs)
            elif xs:
                inputs[m] = xs
        return DecodedBatch(task.chunk, task.rows, inputs,
                            {m: np.asarray(r, dtype=np.int64) for m, r in ok_rows.items()}, failures)


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    import torch

    # Each worker decodes one image at a time; intra-op threads would only fight the forward pass.
    torch.set_num_threads(1)


def default_workers() -> int:
    """Decode workers: all cores but one (the forward pass needs one), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# --------------------------------------------------------------------------- main side


@dataclass
class _ModelRun:
    name: str
    encoder: Any
    writer: Any
    views: dict[str, int]
    stack: bool
    pending: dict[int, np.ndarray] = field(default_factory=dict)  # chunk -> bool mask of pending rows
    partial: set[int] = field(default_factory=set)  # chunks that already hold written rows
    rows_skipped: int = 0
    rows_written: int = 0
    chunks_written: int = 0
    failures: Counter = field(default_factory=Counter)
    forward_seconds: float = 0.0


@dataclass
class _ChunkBuffer:
    start: int
    values: dict[str, np.ndarray]
    status: np.ndarray
    details: list[str]


def _resolve_models(models: str | Sequence[str]) -> list[str]:
    from facestore.models import get_spec

    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise BuildError("no model to build: pass at least one --model NAME (`facestore models` lists them)")
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise BuildError(f"model(s) {', '.join(dupes)} given more than once; pass each --model once")
    for m in names:
        get_spec(m)  # unknown names fail here with the list of available ones
    return names


def _resolve_weights(weights: str | os.PathLike | Mapping[str, Any] | None, models: list[str]) -> dict[str, str | None]:
    if weights is None:
        return {m: None for m in models}
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(models))
        if unknown:
            raise BuildError(f"weights given for {', '.join(unknown)}, which is not built here (models: {', '.join(models)})")
        return {m: (os.fspath(weights[m]) if weights.get(m) is not None else None) for m in models}
    if len(models) != 1:
        raise BuildError(
            f"one weights path for {len(models)} models is ambiguous; pass --weights NAME=DIR for each model "
            f"that needs local weights (models: {', '.join(models)})"
        )
    return {models[0]: os.fspath(weights)}


def _resolve_options(options: Mapping[str, Any] | None, models: list[str]) -> dict[str, dict[str, Any]]:
    from facestore.models import get_spec

    options = dict(options or {})
    per_model: dict[str, dict[str, Any]] = {m: {} for m in models}
    for key, value in options.items():
        takers = [m for m in models if key in dict(get_spec(m).options)]
        if not takers:
            raise BuildError(f"option {key!r} applies to none of the models built ({', '.join(models)}); "
                             "it belongs to the models whose spec lists it (see `facestore models --json`)")
        for m in takers:
            per_model[m][key] = value
    return per_model


def _resolve_device(device: str) -> str:
    """The device string the build runs on (one resolution shared with every family)."""
    from facestore.models.runtime import resolve_device

    return str(resolve_device(device))


def _open_or_create(store: Any, *, create: bool, wait_s: float = 60.0) -> Any:
    """Open the store for writing; with ``create``, create it when absent.

    Two builds started together on a new store (two models at once) race to create it: the
    store serialises creation with a lock (the others wait at most ``wait_s``, and a dead
    creator's lock is broken at once) and every build then opens the same store.
    """
    from facestore.errors import StoreExistsError
    from facestore.store.store import Store, open_store

    if isinstance(store, Store):
        return store
    try:
        return open_store(Path(store), mode="a", create=create, wait_s=wait_s)
    except StoreExistsError as e:
        raise BuildError(f"{e}; pass a new directory or an existing store to --store") from None


def _poll(condition: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def _sync_index(st: Any, dataset: Any, *, wait_s: float = 3600.0) -> Any:
    """``st.sync_index`` that waits (at most ``wait_s``) while another live build holds the index lock.

    Every attempt applies the lock's stale detection (dead pid, reused pid, old heartbeat), so a
    holder that died is noticed at once instead of after the whole wait.
    """
    return st.sync_index(dataset, lock_wait_s=wait_s)


def _plan_model(run: _ModelRun, store: Any, chunk_owned: Callable[[int], bool]) -> None:
    status = run.writer.status()
    for c in run.writer.pending_chunks():
        if not chunk_owned(c):
            continue
        start, stop = run.writer.chunk_range(c)
        mask = status[start:stop] == 0
        if mask.any():
            run.pending[c] = mask
            if not mask.all():
                run.partial.add(c)
    owned_rows = 0
    for c in range(run.writer.n_chunks):
        if chunk_owned(c):
            start, stop = run.writer.chunk_range(c)
            owned_rows += stop - start
    run.rows_skipped = owned_rows - sum(int(m.sum()) for m in run.pending.values())


def plan_tasks(runs: Sequence[_ModelRun], writer_ranges: Callable[[int], tuple[int, int]], *,
               batch_size: int) -> list[DecodeTask]:
    """Fixed decode batches: per chunk (ascending), the rows any model needs, cut every ``batch_size``.

    The cut depends only on the chunk's pending rows, so a chunk recomputed after a crash gets
    exactly the batches it would have had: the forward pass sees the same inputs in the same
    batch shapes and produces the same bits.
    """
    chunks = sorted(set().union(*(r.pending for r in runs)))
    tasks = []
    for c in chunks:
        start, stop = writer_ranges(c)
        need = {r.name: r.pending.get(c, np.zeros(stop - start, dtype=bool)) for r in runs}
        union = np.logical_or.reduce(list(need.values()))
        local = np.flatnonzero(union)
        for b in range(0, len(local), batch_size):
            sel = local[b:b + batch_size]
            needs = {m: mask[sel] for m, mask in need.items() if mask[sel].any()}
            tasks.append(DecodeTask(chunk=c, rows=(sel + start).astype(np.int64), needs=needs))
    return tasks


def _new_buffer(run: _ModelRun, c: int) -> _ChunkBuffer:
    start, stop = run.writer.chunk_range(c)
    if c in run.partial:
        # A chunk that already holds rows (images appended to a partly filled last chunk):
        # keep what is there and fill in only the pending rows, then write the chunk back whole.
        values, status, details = run.writer.read_chunk(c)
        return _ChunkBuffer(start, {v: np.array(values[v], dtype=np.float32) for v in run.views},
                            np.array(status, dtype=np.uint8), list(details))
    n = stop - start
    return _ChunkBuffer(start, {v: np.zeros((n, d), dtype=np.float32) for v, d in run.views.items()},
                        np.zeros(n, dtype=np.uint8), [""] * n)


def _consume(run: _ModelRun, buf: _ChunkBuffer, batch: DecodedBatch) -> None:
    from facestore.store import layout

    for row, (reason, detail) in batch.failures.get(run.name, {}).items():
        buf.status[row - buf.start] = layout.status_code(reason)
        buf.details[row - buf.start] = f"{reason}: {detail}" if detail else reason
        run.failures[reason] += 1
    rows = batch.ok_rows.get(run.name)
    if rows is None or len(rows) == 0:
        return
    x = batch.inputs[run.name]
    t0 = time.perf_counter()
    out = run.encoder.encode(x if run.stack else run.encoder.collate(x))
    run.forward_seconds += time.perf_counter() - t0
    local = rows - buf.start
    for view, dim in run.views.items():
        if view not in out:
            raise BuildError(f"model {run.name!r} returned views {sorted(out)}, expected {sorted(run.views)}: "
                             "a bug in its family module")
        arr = out[view]
        arr = arr.detach().to("cpu").float().numpy() if hasattr(arr, "detach") else np.asarray(arr, dtype=np.float32)
        if arr.shape != (len(rows), dim):
            raise BuildError(f"model {run.name!r} view {view!r} gave shape {arr.shape}, expected {(len(rows), dim)} "
                             "(the resolved spec's dims): a bug in its family module or mismatched weights")
        finite = np.isfinite(arr).all(axis=1)
        buf.values[view][local[finite]] = arr[finite]
        if not finite.all():
            for j in np.flatnonzero(~finite):
                buf.values[view][local[j]] = 0.0
                buf.status[local[j]] = layout.status_code("nonfinite")
                buf.details[local[j]] = f"nonfinite: view {view} has NaN/inf values"
    ok = buf.status[local] == 0
    buf.status[local[ok]] = layout.OK
    run.rows_written += int(ok.sum())
    bad = int((~ok).sum())
    if bad:
        run.failures["nonfinite"] += bad


def _commit(run: _ModelRun, c: int, buf: _ChunkBuffer) -> None:
    if (buf.status == 0).any():
        rows = np.flatnonzero(buf.status == 0)[:5] + buf.start
        raise BuildError(f"internal error: chunk {c} of {run.name!r} would be written with pending rows {rows.tolist()}")
    wanted_ok = buf.status == 1
    written = np.asarray(run.writer.write_chunk(c, buf.values, buf.status, buf.details))
    # The writer demotes rows that overflow the store dtype (float16) to ``nonfinite``.
    demoted = int((wanted_ok & (written != 1)).sum())
    if demoted:
        run.rows_written -= demoted
        run.failures["nonfinite"] += demoted
    run.chunks_written += 1


def _failure_counts(store: Any, model: str) -> dict[str, int]:
    from facestore.store import layout

    codes = Counter(np.asarray(store.status(model)).tolist())
    return {layout.STATUS_CODES.get(k, f"code_{k}"): int(v) for k, v in sorted(codes.items()) if k not in (0, 1)}


def build_store(
    data: str | os.PathLike,
    store: Any,
    models: str | Sequence[str],
    *,
    weights: str | os.PathLike | Mapping[str, Any] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    workers: int | None = None,
    dtype: str = "float16",
    chunk_rows: int = 8192,
    precision: str = "auto",
    strict: bool = False,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> BuildReport:
    """Extract ``models`` for every image of ``data`` into ``store`` (created if absent); resumable.

    ``data`` is an image folder or manifest CSV (:func:`facestore.dataset.scan_dataset`); images
    new since the last build are appended to the index and only they are extracted. ``weights``
    is one local path (one model) or ``{model: path}``. ``options`` are family options such as
    ``{"arcface_align": "center"}``, passed to the models whose spec lists them. ``workers`` is
    the number of decode processes (``None``: :func:`default_workers`; 0 decodes in-process).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs this function; each computes the
    chunks it owns (:mod:`facestore.distributed`) and all return the same merged report.
    """
    from facestore.distributed import ProcessGroup, context_from_env

    names = _resolve_models(models)
    if batch_size < 1 or chunk_rows < 1:
        raise BuildError(f"batch_size and chunk_rows must be positive, got {batch_size} and {chunk_rows}")
    if dtype not in DTYPES:
        raise BuildError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if precision not in PRECISIONS:
        raise BuildError(f"precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)}")
    weight_paths = _resolve_weights(weights, names)
    model_options = _resolve_options(options, names)
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise BuildError(f"workers must be >= 0, got {workers}")

    ctx = context_from_env()
    import torch

    if ctx is None:
        dev = _resolve_device(device)
        return _build(data, store, names, weight_paths=weight_paths, model_options=model_options,
                      batch_size=batch_size, device=dev, workers=workers, dtype=dtype, chunk_rows=chunk_rows,
                      precision=precision, strict=strict, progress=progress, group=None)
    dev = ctx.device(device, cuda_available=torch.cuda.is_available())
    if dev.startswith("cuda"):
        _resolve_device(dev)
    with ProcessGroup(ctx, device=dev) as group:
        return _build(data, store, names, weight_paths=weight_paths, model_options=model_options,
                      batch_size=batch_size, device=dev, workers=workers, dtype=dtype, chunk_rows=chunk_rows,
                      precision=precision, strict=strict, progress=progress and ctx.is_main, group=group)


def _build(data, store, names, *, weight_paths, model_options, batch_size, device, workers, dtype, chunk_rows,
           precision, strict, progress, group) -> BuildReport:
    from facestore.dataset import scan_dataset
    from facestore.models import load_encoder
    from facestore.models.base import Encoder

    t_start = time.perf_counter()
    is_main = group is None or group.ctx.is_main
    rank_tag = f"rank {group.ctx.rank}: " if group is not None else ""
    dataset = scan_dataset(data)

    with contextlib.ExitStack() as stack:
        runs: list[_ModelRun] = []
        locks: list[Any] = []
        if is_main:
            setup_error: BaseException | None = None
            try:
                st = _open_or_create(store, create=True)
                rows_added = int(_sync_index(st, dataset).added)
                for m in names:
                    # One writer per model group: a second build of the same model fails here.
                    locks.append(stack.enter_context(st.lock(m, owner=f"facestore build (pid {os.getpid()})")))
                for m in names:
                    runs.append(_load_run(m, st, load_encoder, Encoder, weight_paths[m], device, precision,
                                          model_options[m], dtype, chunk_rows))
            except Exception as e:  # any failure: the other ranks must hear of it, not wait at a barrier
                if group is None:
                    raise
                setup_error = e
            if group is not None:
                # Tell the other ranks whether to go on, so that no rank waits forever at a barrier.
                group.broadcast_from_main(f"{type(setup_error).__name__}: {setup_error}" if setup_error else None)
                if setup_error is not None:
                    raise setup_error
        else:
            message = group.broadcast_from_main(None)
            if message:
                raise BuildError(f"rank 0 could not set up the build: {message}")
            st = _open_or_create(store, create=False)
            rows_added = 0
            for m in names:
                runs.append(_load_run(m, st, load_encoder, Encoder, weight_paths[m], device, precision,
                                      model_options[m], dtype, chunk_rows))

        # The index row -> the file on disk (the store keeps paths relative to the dataset root).
        paths = _row_paths(st, dataset)
        owned = (lambda c: True) if group is None else group.ctx.owns
        for run in runs:
            _plan_model(run, st, owned)
            rt = run.encoder.runtime()
            log.info("%s%s runs on %s", rank_tag, run.name, ", ".join(f"{k}={v}" for k, v in rt.items()) or device)

        error: str | None = None
        try:
            rows_decoded = _run_chunks(runs, paths, batch_size=batch_size, workers=workers, device=device,
                                       progress=progress, locks=locks, desc=f"{rank_tag}extract")
        except Exception as e:  # reported to every rank through the final gather
            if group is None:
                raise
            log.exception("%sextraction failed", rank_tag)
            error, rows_decoded = f"rank {group.ctx.rank}: {type(e).__name__}: {e}", 0
        seconds = time.perf_counter() - t_start

        local = {
            "rows_decoded": rows_decoded,
            "error": error,
            "models": {r.name: {"rows_written": r.rows_written, "rows_skipped": r.rows_skipped,
                                "failures": dict(r.failures), "chunks_written": r.chunks_written,
                                "forward_seconds": r.forward_seconds} for r in runs},
        }
        parts = [local] if group is None else group.gather(local)
        errors = [p["error"] for p in parts if p["error"]]
        if errors:
            raise BuildError("distributed build failed: " + "; ".join(errors))
        model_reports = []
        for run in runs:
            per = [p["models"][run.name] for p in parts]
            fails: Counter = Counter()
            for p in per:
                fails.update(p["failures"])
            fwd = max(p["forward_seconds"] for p in per)
            written = sum(p["rows_written"] for p in per)
            model_reports.append(ModelBuildReport(
                model=run.name,
                rows_written=written,
                rows_skipped=sum(p["rows_skipped"] for p in per),
                failures=dict(sorted(fails.items())),
                failures_total=_failure_counts(st, run.name),
                chunks_written=sum(p["chunks_written"] for p in per),
                forward_seconds=fwd,
                images_per_s=(written / fwd) if fwd > 0 else 0.0,
                views=dict(run.views),
                runtime=run.encoder.runtime(),
            ))
        decoded = sum(p["rows_decoded"] for p in parts)
        report = BuildReport(
            store=str(getattr(st, "path", store)),
            n_rows=int(st.n),
            rows_added=int(group.broadcast_from_main(rows_added) if group is not None else rows_added),
            models=tuple(model_reports),
            rows_decoded=decoded,
            seconds=seconds,
            images_per_s=decoded / seconds if seconds > 0 else 0.0,
            device=device,
            world_size=1 if group is None else group.ctx.world_size,
            versions=_versions(),
        )
    if is_main:
        # DEBUG: the CLI prints the summary itself; a notebook has ``report.summary()``.
        log.debug("%s", report.summary())
    if strict and report.failed:
        fails = "; ".join(f"{m.model}: " + ", ".join(f"{r} {n}" for r, n in m.failures_total.items())
                          for m in report.models if m.failures_total)
        raise BuildError(f"--strict: the build recorded failures ({fails}). They are stored with their reasons "
                         "(`facestore info STORE`); fix or remove those images, or build without --strict")
    return report


def _row_paths(st: Any, dataset: Any) -> list[str]:
    root = Path(dataset.root)
    return [os.fspath(root / p) for p in np.asarray(st.index.paths).tolist()]


def _load_run(name, st, load_encoder, encoder_base, weights, device, precision, options, dtype, chunk_rows) -> _ModelRun:
    encoder = load_encoder(name, weights=weights, device=device, precision=precision, options=options)
    spec = encoder.resolved_spec()
    views = {str(v): int(d) for v, d in spec["views"].items()}
    writer = st.model_writer(name, spec=spec, views=views, dtype=dtype, chunk_rows=chunk_rows,
                             default_view=spec.get("default_view"))
    # The default collate is torch.stack, which a worker can do itself (one shared-memory
    # tensor per batch instead of one per image); a custom collate runs in the main process.
    stack = type(encoder).collate is encoder_base.collate
    return _ModelRun(name=name, encoder=encoder, writer=writer, views=views, stack=stack)


def _run_chunks(runs: list[_ModelRun], paths: list[str], *, batch_size: int, workers: int, device: str,
                progress: bool, locks: list[Any], desc: str) -> int:
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    tasks = plan_tasks(runs, runs[0].writer.chunk_range, batch_size=batch_size)
    if not tasks:
        return 0
    total = sum(len(t.rows) for t in tasks)
    by_name = {r.name: r for r in runs}
    dataset = ChunkDecoder(tasks, paths, {r.name: r.encoder.preprocessor() for r in runs},
                           {r.name: r.stack for r in runs})
    loader = DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
        pin_memory=device.startswith("cuda"), worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )
    buffers: dict[str, _ChunkBuffer] = {}
    current: int | None = None
    decoded = 0
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        with torch.inference_mode():
            for batch in loader:
                if batch.chunk != current:
                    if current is not None:
                        _finish_chunk(runs, current, buffers, locks)
                    current = batch.chunk
                    buffers = {r.name: _new_buffer(r, current) for r in runs if current in r.pending}
                for m in batch.failures:  # every model that needs a row of this batch
                    _consume(by_name[m], buffers[m], batch)
                decoded += len(batch.rows)
                bar.update(len(batch.rows))
            if current is not None:
                _finish_chunk(runs, current, buffers, locks)
    finally:
        bar.close()
    return decoded


def _finish_chunk(runs: list[_ModelRun], c: int, buffers: dict[str, _ChunkBuffer], locks: list[Any]) -> None:
    for run in runs:
        if c in run.pending:
            _commit(run, c, buffers[run.name])
    for lock in locks:
        # A heartbeat per chunk: another host judges the lock stale by its age.
        lock.heartbeat()


def _versions() -> dict[str, str]:
    from facestore.models.base import library_versions

    return library_versions("facestore", "torch", "numpy", "zarr")

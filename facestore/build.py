"""The extraction pipeline: decode once -> pixels per distinct preprocessing -> device -> forward -> whole-chunk writes.

The unit of work is the store *chunk* (``chunk_rows`` rows of every model group). Only chunks
with pending rows are processed. Each model's pending rows of a chunk are cut, in row order,
into fixed batches of ``batch_size`` rows; models with the same pending rows (every model of a
fresh build) share those batches. DataLoader workers decode each image once (torchvision's
libjpeg-turbo for plain JPEGs, PIL otherwise: identical pixels, :mod:`facestore.images`) and
compute each *distinct* preprocessing's pixels once, as ``uint8`` wherever the model's reference
preprocessing allows it; models with equal preprocessors (``dinov2-small`` + ``dinov2-base``)
share the same pixels, copied to the device once. The main process copies a batch's pixels to
the device (pinned memory, non-blocking, on a side CUDA stream one batch ahead), each model
normalises them there and forwards, and a writer thread commits finished chunks (views, then
details, then status) while the next chunk is computed; its errors surface in the build.

A build killed at any moment leaves every chunk either committed or pending. A resumed build
recomputes the pending chunks with exactly the same batches: a model's batches depend only on
its own pending rows and ``batch_size``, never on ``--workers`` or on the other models in the
command. What does change the bits (batch size, draft decoding, CPU vs CUDA) is recorded in the
model's spec (``spec["pipeline"]``), so a resume with other settings is refused, naming them.

Bad images are recorded per row with their reason (``truncated``, ``no_face``, ...) and
skipped; ``strict=True`` turns any recorded failure into a :class:`BuildError` after writing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from facestore.errors import BuildError, BuildUsageError, FacestoreError, ImageDecodeError, PreprocessFailure

log = logging.getLogger("facestore.build")

DTYPES = ("float16", "float32")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODE_MODES = ("auto", "pil", "draft")

#: How a model's rows become forward batches; recorded with ``batch_size`` in ``spec["pipeline"]``.
BATCHING_RULE = ("per chunk, the model's own pending rows in row order, cut every batch_size rows; "
                 "rows that fail to decode or preprocess are dropped from their batch")


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
    #: How the run was made (batch size, decoder, workers, prefetch, shared preprocessings).
    pipeline: dict[str, Any] = field(default_factory=dict)

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
        p = self.pipeline
        if p.get("workers") is not None and self.rows_decoded:
            shared = [" + ".join(g) for g in p.get("preprocessing_groups", []) if len(g) > 1]
            lines.append(f"  pipeline: batch {p.get('batch_size')}, {p['workers']} decode worker(s) of "
                         f"{p.get('usable_cores')} usable cores, decoder {p.get('decode')}"
                         + (f", shared pixels: {'; '.join(shared)}" if shared else ""))
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
        if any(m.failures_total for m in self.models):
            lines.append(f"  `facestore info {self.store}` names the failed images and why")
        if all(m.rows_written == 0 and not m.failures for m in self.models) and self.rows_decoded == 0:
            lines.append("  nothing to do: every row of every model is already written")
        return "\n".join(lines)


# --------------------------------------------------------------------------- worker side


@dataclass
class DecodeTask:
    """One fixed decode batch: ``rows`` (store rows, ascending, all in ``chunk``), needed by every model in ``models``."""

    chunk: int
    rows: np.ndarray  # int64 (R,)
    models: tuple[str, ...]


@dataclass
class DecodedBatch:
    """What a worker hands back for a :class:`DecodeTask`.

    ``inputs[g]`` holds preprocessing group ``g``'s pixels (stacked in the worker when its
    models use the default ``torch.stack`` collate, else the list of items) for the rows
    ``ok_rows[g]``; ``failures[model]`` maps a row to ``(reason, detail)``; ``worker_info[g]``
    says what the group's preprocessor ran on in that worker (ArcFace's detector providers).
    """

    chunk: int
    rows: np.ndarray
    models: tuple[str, ...]
    inputs: dict[int, Any]
    ok_rows: dict[int, np.ndarray]
    failures: dict[str, dict[int, tuple[str, str]]]
    worker_info: dict[int, dict[str, Any]] = field(default_factory=dict)

    def pin_memory(self) -> DecodedBatch:
        # Called by the DataLoader's pin-memory thread on CUDA builds: page-locked pixels are
        # what lets the host-to-device copy run asynchronously.
        for g, x in self.inputs.items():
            if hasattr(x, "pin_memory"):
                self.inputs[g] = x.pin_memory()
        return self


class ChunkDecoder:
    """The DataLoader dataset: item ``i`` is :class:`DecodeTask` ``i`` decoded and preprocessed.

    ``preprocessors[g]`` is the worker stage of preprocessing group ``g``, shared by the models
    ``members[g]``: it runs once per image for all of them.
    """

    def __init__(self, tasks: Sequence[DecodeTask], paths: Sequence[str],
                 preprocessors: Mapping[int, Callable[[np.ndarray], Any]], members: Mapping[int, Sequence[str]],
                 stack: Mapping[int, bool], *, decoder: str = "auto", draft_size: int | None = None) -> None:
        self.tasks = list(tasks)
        self.paths = paths
        self.preprocessors = dict(preprocessors)
        self.members = {g: tuple(m) for g, m in members.items()}
        self.stack = dict(stack)
        self.decoder = decoder
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> DecodedBatch:
        from facestore.images import decode_image

        task = self.tasks[i]
        wanted = set(task.models)
        groups = [g for g, ms in self.members.items() if wanted.intersection(ms)]
        items: dict[int, list[Any]] = {g: [] for g in groups}
        ok_rows: dict[int, list[int]] = {g: [] for g in groups}
        failures: dict[str, dict[int, tuple[str, str]]] = {m: {} for m in task.models}
        for row in task.rows.tolist():
            try:
                pixels = decode_image(self.paths[row], decoder=self.decoder, draft_size=self.draft_size)
            except ImageDecodeError as e:
                for m in task.models:
                    failures[m][row] = (e.reason, e.detail)
                continue
            for g in groups:  # one decode; each distinct preprocessing once
                try:
                    items[g].append(self.preprocessors[g](pixels))
                except PreprocessFailure as e:
                    for m in self.members[g]:
                        if m in wanted:
                            failures[m][row] = (e.reason, e.detail)
                    continue
                ok_rows[g].append(row)
        inputs: dict[int, Any] = {}
        for g, xs in items.items():
            if xs and self.stack[g]:
                import torch

                inputs[g] = torch.stack(xs)
            elif xs:
                inputs[g] = xs
        info = {}
        for g in groups:
            get = getattr(self.preprocessors[g], "runtime_info", None)
            if get is not None and get() is not None:
                info[g] = get()
        return DecodedBatch(task.chunk, task.rows, task.models, inputs,
                            {g: np.asarray(r, dtype=np.int64) for g, r in ok_rows.items()}, failures, info)


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    import torch

    # One worker per core: intra-op thread pools in workers would only fight each other and the
    # forward pass. (OpenCV's pool is left alone: resizing it in a forked child waits forever on
    # the parent's pool threads, which do not exist there.)
    torch.set_num_threads(1)


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (``cpu.max``, v2; ``cfs_quota_us``, v1), or None.

    The tightest limit along the process's cgroup path is taken (a container's own cgroup, or a
    systemd slice on a host).
    """
    root = Path(root)
    limits: list[float] = []
    own = ""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().strip("/")
    except OSError:
        pass
    parts = [p for p in own.split("/") if p]
    for depth in range(len(parts), -1, -1):
        f = root.joinpath(*parts[:depth], "cpu.max")
        try:
            quota, period = f.read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and float(period) > 0:
            limits.append(float(quota) / float(period))
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = float((v1 / "cpu.cfs_quota_us").read_text())
            period_us = float((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us > 0 and period_us > 0:
            limits.append(quota_us / period_us)
    return min(limits) if limits else None


def usable_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by its cgroup CPU quota.

    ``os.cpu_count()`` counts the machine's cores, not the ones a container or ``taskset`` grants.
    A fractional quota rounds down (1.5 cores cannot keep two busy processes fed), to at least 1.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def default_workers(*, cores: int | None = None, processes_per_node: int = 1) -> int:
    """Decode workers: the usable cores, shared by this node's build processes, less one each for the main process."""
    cores = usable_cores() if cores is None else int(cores)
    return max(0, cores // max(1, processes_per_node) - 1)


def shm_free_bytes(path: str = "/dev/shm") -> int | None:
    """Free bytes of the shared-memory filesystem DataLoader workers hand their batches through."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def fit_shared_memory(*, workers: int, batch_bytes: int, prefetch: int = 4,
                      free_bytes: int | None = None) -> tuple[int, int]:
    """``(workers, prefetch_factor)`` whose batches in flight fit in half of ``/dev/shm``'s free space.

    Each worker keeps ``prefetch`` batches outstanding in shared memory. A container's default
    64 MB ``/dev/shm`` holds fewer than two 256 x 224 x 224 uint8 batches; overflowing it kills
    workers with a bus error in the middle of a build. The prefetch depth is lowered first, then
    the worker count (neither changes a single bit of the vectors); the batch size is never
    changed behind the user's back (it does change the bits).
    """
    if workers == 0:
        return 0, prefetch
    free = shm_free_bytes() if free_bytes is None else free_bytes
    if free is None:
        return workers, prefetch
    budget = free // 2

    def need(w: int, p: int) -> int:
        return (w * p + 1) * batch_bytes

    w, p = workers, prefetch
    while p > 1 and need(w, p) > budget:
        p -= 1
    while w > 1 and need(w, p) > budget:
        w -= 1
    mib = 2 ** 20
    if need(w, p) > budget:
        raise BuildError(
            f"/dev/shm has {free / mib:.0f} MiB free, but one decode batch needs {batch_bytes / mib:.1f} MiB and "
            f"{w} worker(s) keep {w * p + 1} in flight; pass a smaller --batch-size, or --workers 0 (decode in "
            "this process, no shared memory), or give the machine more shared memory (docker run --shm-size=8g)"
        )
    if (w, p) != (workers, prefetch):
        log.warning("/dev/shm has %.0f MiB free: running %d decode worker(s) with prefetch depth %d (asked %d, %d) "
                    "so that batches in flight fit; enlarge /dev/shm (docker --shm-size) to use every core",
                    free / mib, w, p, workers, prefetch)
    return w, p


# --------------------------------------------------------------------------- main side


@dataclass
class _ModelRun:
    name: str
    encoder: Any
    writer: Any
    views: dict[str, int]
    stack: bool
    group: int = -1  # preprocessing group
    pending: dict[int, np.ndarray] = field(default_factory=dict)  # chunk -> bool mask of pending rows
    partial: set[int] = field(default_factory=set)  # chunks that already hold written rows
    rows_skipped: int = 0
    rows_written: int = 0
    rows_demoted: int = 0  # ok rows the writer turned nonfinite (float16 overflow); writer thread only
    chunks_written: int = 0  # writer thread only
    failures: Counter = field(default_factory=Counter)
    forward_seconds: float = 0.0
    worker_runtime: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _PixelGroup:
    """Models whose preprocessors are equal: their pixels are computed and copied to the device once."""

    gid: int
    preprocessor: Any
    members: list[str]
    stack: bool
    device: str | None


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
        raise BuildUsageError("no model to build: pass at least one --model NAME (`facestore models` lists them)")
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise BuildUsageError(f"model(s) {', '.join(dupes)} given more than once; pass each --model once")
    for m in names:
        get_spec(m)  # unknown names fail here with the list of available ones
    return names


def _resolve_weights(weights: str | os.PathLike | Mapping[str, Any] | None, models: list[str]) -> dict[str, str | None]:
    if weights is None:
        return {m: None for m in models}
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(models))
        if unknown:
            raise BuildUsageError(f"weights given for {', '.join(unknown)}, which is not built here (models: {', '.join(models)})")
        return {m: (os.fspath(weights[m]) if weights.get(m) is not None else None) for m in models}
    if len(models) != 1:
        raise BuildUsageError(
            f"one weights path for {len(models)} models is ambiguous; pass --weights NAME=DIR for each model "
            f"that needs local weights (models: {', '.join(models)})"
        )
    return {models[0]: os.fspath(weights)}


def _resolve_options(options: Mapping[str, Any] | None, models: list[str]) -> dict[str, dict[str, Any]]:
    from facestore.models import get_spec, list_models

    options = dict(options or {})
    per_model: dict[str, dict[str, Any]] = {m: {} for m in models}
    for key, value in options.items():
        takers = [m for m in models if key in dict(get_spec(m).options)]
        if not takers:
            owners = [m for m in list_models() if key in dict(get_spec(m).options)]
            raise BuildUsageError(
                f"option {key!r} (--{key.replace('_', '-')}) applies to none of the models built "
                f"({', '.join(models)}); it applies to {', '.join(owners) or 'no registry model'}: drop it, or "
                "build those models with it")
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
    except StoreExistsError as e:  # a usage error (exit 2), said once; "--store" is the option to change
        raise StoreExistsError(f"{e} to --store") from None


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


def _chunk_range(writer: Any, c: int) -> tuple[int, int]:
    # ModelWriter's public name for a chunk's rows (``chunk_rows_range`` in docs/design.md).
    get = getattr(writer, "chunk_rows_range", None) or writer.chunk_range
    return get(c)


def _plan_model(run: _ModelRun, chunk_owned: Callable[[int], bool], *, chunk_rows: int) -> None:
    status = run.writer.status()
    n = len(status)
    for c in run.writer.pending_chunks():
        if not chunk_owned(c):
            continue
        start, stop = _chunk_range(run.writer, c)
        mask = status[start:stop] == 0
        if mask.any():
            run.pending[c] = mask
            if not mask.all():
                run.partial.add(c)
    owned_rows = sum(min(start + chunk_rows, n) - start for start in range(0, n, chunk_rows)
                     if chunk_owned(start // chunk_rows))
    run.rows_skipped = owned_rows - sum(int(m.sum()) for m in run.pending.values())


def plan_tasks(runs: Sequence[_ModelRun], writer_ranges: Callable[[int], tuple[int, int]], *,
               batch_size: int) -> list[DecodeTask]:
    """Fixed decode batches: per chunk (ascending), each model's own pending rows, cut every ``batch_size``.

    The cut depends only on the model's own pending rows of the chunk and on ``batch_size``,
    never on which other models share the command or on ``--workers``: a chunk recomputed after a
    crash, alone or beside other models, gets exactly the batches it would have had, so the
    forward pass sees the same inputs in the same batch shapes and produces the same bits.
    Models with the same pending rows (every model of a fresh build or resume) share one task,
    so each image is decoded once for all of them; only a partly filled chunk whose models hold
    different rows is decoded once per distinct set of rows.
    """
    chunks = sorted(set().union(*(r.pending for r in runs)))
    tasks = []
    for c in chunks:
        start, _ = writer_ranges(c)
        by_rows: dict[bytes, tuple[np.ndarray, list[str]]] = {}
        for r in runs:
            if c in r.pending:
                mask = r.pending[c]
                by_rows.setdefault(mask.tobytes(), (mask, []))[1].append(r.name)
        for mask, models in by_rows.values():
            local = np.flatnonzero(mask)
            for b in range(0, len(local), batch_size):
                rows = (local[b:b + batch_size] + start).astype(np.int64)
                tasks.append(DecodeTask(chunk=c, rows=rows, models=tuple(models)))
    return tasks


def _group_preprocessors(runs: Sequence[_ModelRun]) -> list[_PixelGroup]:
    """One group per distinct preprocessor (``==``); models in a group share their pixels."""
    groups: list[_PixelGroup] = []
    for run in runs:
        pre = run.encoder.preprocessor()
        device = run.encoder.input_device()
        for g in groups:
            if run.stack and g.stack and g.device == device and g.preprocessor == pre:
                g.members.append(run.name)
                run.group = g.gid
                break
        else:
            run.group = len(groups)
            groups.append(_PixelGroup(gid=run.group, preprocessor=pre, members=[run.name], stack=run.stack,
                                      device=device))
    return groups


def _new_buffer(run: _ModelRun, c: int, stored: tuple[dict[str, np.ndarray], np.ndarray, list[str]] | None
                ) -> _ChunkBuffer:
    start, stop = _chunk_range(run.writer, c)
    if stored is not None:
        # A chunk that already holds rows (images appended to a partly filled last chunk):
        # keep what is there and fill in only the pending rows, then write the chunk back whole.
        values, status, details = stored
        return _ChunkBuffer(start, {v: np.array(values[v], dtype=np.float32) for v in run.views},
                            np.array(status, dtype=np.uint8), list(details))
    n = stop - start
    return _ChunkBuffer(start, {v: np.zeros((n, d), np.float32) for v, d in run.views.items()},
                        np.zeros(n, np.uint8), [""] * n)


def _consume(run: _ModelRun, buf: _ChunkBuffer, batch: DecodedBatch) -> None:
    from facestore.store import layout

    for row, (reason, detail) in batch.failures.get(run.name, {}).items():
        buf.status[row - buf.start] = layout.status_code(reason)
        buf.details[row - buf.start] = f"{reason}: {detail}" if detail else reason
        run.failures[reason] += 1
    rows = batch.ok_rows.get(run.group)
    if rows is None or len(rows) == 0:
        return
    x = batch.inputs[run.group]
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
    """Write chunk ``c`` of ``run`` (in the writer thread: it touches only writer-thread counters)."""
    if (buf.status == 0).any():
        rows = np.flatnonzero(buf.status == 0)[:5] + buf.start
        raise BuildError(f"internal error: chunk {c} of {run.name!r} would be written with pending rows {rows.tolist()}")
    wanted_ok = buf.status == 1
    written = np.asarray(run.writer.write_chunk(c, buf.values, buf.status, buf.details))
    # The writer demotes rows that overflow the store dtype (float16) to ``nonfinite``.
    run.rows_demoted += int((wanted_ok & (written != 1)).sum())
    run.chunks_written += 1


class _StoreWriter:
    """Every store write of a build, in one background thread, in submission order.

    The forward pass of chunk ``c + 1`` runs while chunk ``c`` is cast and written. One thread
    keeps each chunk's views -> details -> status order (``ModelWriter.write_chunk``) and the
    chunks' own order; at most ``max_pending`` commits wait, which bounds the memory held. An
    error in the thread is raised in the build at the next submit (or at :meth:`close`), so a
    failed write stops the build instead of vanishing.
    """

    def __init__(self, *, max_pending: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facestore-writer")
        self._pending: deque[Future] = deque()
        self._max = max(1, max_pending)
        self._failed: BaseException | None = None  # the first error of the thread (writer thread only)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        # Once a write failed, the writes queued behind it must not run: a crash leaves the chunks
        # after the failed one pending, as a kill would, and the build reports the first error.
        if self._failed is not None:
            raise self._failed
        try:
            return fn(*args)
        except BaseException as e:
            self._failed = e
            raise

    def _raise_done(self) -> None:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise_done()
        while len(self._pending) >= self._max:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._guarded, fn, *args))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the writer thread after every write submitted so far; return its result."""
        self._raise_done()
        return self._pool.submit(self._guarded, fn, *args).result()

    def close(self, *, raise_errors: bool = True) -> None:
        """Wait for every submitted write; raise the first error unless the build is failing already."""
        try:
            while self._pending:
                f = self._pending.popleft()
                if raise_errors:
                    f.result()
                else:
                    f.exception()
        finally:
            self._pool.shutdown(wait=True)


def _device_batches(batches: Iterable[DecodedBatch], groups: Sequence[_PixelGroup]) -> Iterator[DecodedBatch]:
    """Copy each batch's shared pixels to the device one batch ahead, on a side CUDA stream.

    The copy of batch ``i + 1`` (pinned memory, ``non_blocking``) overlaps the forward passes of
    batch ``i``; the compute stream waits on the copy's event before using it. A group's pixels
    are copied once for all its models. Without a CUDA group the batches pass through unchanged
    (each encoder's ``.to(device)`` is then a no-op on the CPU).
    """
    targets = {g.gid: g.device for g in groups if g.stack and g.device and g.device.startswith("cuda")}
    if not targets:
        yield from batches
        return
    import torch

    streams = {d: torch.cuda.Stream(device=torch.device(d)) for d in set(targets.values())}
    events: dict[int, Any] = {}

    def send(batch: DecodedBatch) -> DecodedBatch:
        for gid, dev in targets.items():
            x = batch.inputs.get(gid)
            if x is None:
                continue
            with torch.cuda.stream(streams[dev]):
                batch.inputs[gid] = x.to(dev, non_blocking=True)
        events[id(batch)] = {dev: s.record_event() for dev, s in streams.items()}
        return batch

    def ready(batch: DecodedBatch) -> DecodedBatch:
        for dev, event in events.pop(id(batch)).items():
            torch.cuda.current_stream(torch.device(dev)).wait_event(event)
        for gid, dev in targets.items():
            x = batch.inputs.get(gid)
            if x is not None:
                # Allocated on the copy stream, used on the compute stream: keep the allocator from reusing it early.
                x.record_stream(torch.cuda.current_stream(torch.device(dev)))
        return batch

    ahead: DecodedBatch | None = None
    for batch in batches:
        batch = send(batch)
        if ahead is not None:
            yield ready(ahead)
        ahead = batch
    if ahead is not None:
        yield ready(ahead)


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
    decode: str = "auto",
) -> BuildReport:
    """Extract ``models`` for every image of ``data`` into ``store`` (created if absent); resumable.

    ``data`` is an image folder or manifest CSV (:func:`facestore.dataset.scan_dataset`); images
    new since the last build are appended to the index and only they are extracted. ``weights``
    is one local path (one model) or ``{model: path}``. ``options`` are family options such as
    ``{"arcface_align": "center"}``, passed to the models whose spec lists them. ``workers`` is
    the number of decode processes (``None``: :func:`default_workers`, the usable cores less one;
    0 decodes in-process). ``decode`` is ``"auto"`` (torchvision for plain JPEGs, PIL otherwise:
    identical pixels), ``"pil"`` (the same pixels, PIL only) or ``"draft"`` (PIL's DCT-scaled JPEG
    decoding: faster, different pixels, recorded).

    ``batch_size``, ``decode="draft"`` and the device type change the stored bits and are
    recorded in each model's spec (``spec["pipeline"]``): resuming with other values is refused,
    naming them; ``workers`` and the other models of the command never change a bit.

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
    if decode not in DECODE_MODES:
        raise BuildError(f"decode {decode!r} is not supported; use one of {', '.join(DECODE_MODES)}")
    weight_paths = _resolve_weights(weights, names)
    model_options = _resolve_options(options, names)
    ctx = context_from_env()
    if workers is None:
        workers = default_workers(processes_per_node=1 if ctx is None else ctx.local_world_size)
    workers = int(workers)
    if workers < 0:
        raise BuildError(f"workers must be >= 0, got {workers}")
    settings = dict(batch_size=batch_size, workers=workers, dtype=dtype, chunk_rows=chunk_rows, precision=precision,
                    strict=strict, decode=decode)

    import torch

    if ctx is None:
        dev = _resolve_device(device)
        return _build(data, store, names, weight_paths=weight_paths, model_options=model_options, device=dev,
                      progress=progress, group=None, **settings)
    dev = ctx.device(device, cuda_available=torch.cuda.is_available())
    if dev.startswith("cuda"):
        _resolve_device(dev)
    with ProcessGroup(ctx, device=dev) as group:
        return _build(data, store, names, weight_paths=weight_paths, model_options=model_options, device=dev,
                      progress=progress and ctx.is_main, group=group, **settings)


def _build(data, store, names, *, weight_paths, model_options, batch_size, device, workers, dtype, chunk_rows,
           precision, strict, progress, group, decode) -> BuildReport:
    from facestore.dataset import scan_dataset
    from facestore.models import load_encoder

    t_start = time.perf_counter()
    is_main = group is None or group.ctx.is_main
    rank_tag = f"rank {group.ctx.rank}: " if group is not None else ""
    dataset = scan_dataset(data)

    def load_all() -> dict[str, Any]:
        return {m: load_encoder(m, weights=weight_paths[m], device=device, precision=precision,
                                options=model_options[m]) for m in names}

    with contextlib.ExitStack() as stack:
        runs: list[_ModelRun] = []
        locks: list[Any] = []
        if is_main:
            setup_error: BaseException | None = None
            try:
                # Models first: a missing or unreadable weights folder, an offline hub or a bad
                # device fails here, before a store directory exists, so a failed first build
                # leaves nothing half-made behind.
                encoders = load_all()
                st = _open_or_create(store, create=True)
                rows_added = int(_sync_index(st, dataset).added)
                for m in names:
                    # One writer per model group: a second build of the same model fails here.
                    locks.append(stack.enter_context(st.lock(m, owner=f"facestore build (pid {os.getpid()})")))
                draft_size = _draft_size(names, encoders, decode)
                for m in names:
                    runs.append(_make_run(m, st, encoders[m], batch_size=batch_size, decode=decode,
                                          draft_size=draft_size, dtype=dtype, chunk_rows=chunk_rows))
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
            encoders = load_all()
            st = _open_or_create(store, create=False)
            rows_added = 0
            draft_size = _draft_size(names, encoders, decode)
            for m in names:
                runs.append(_make_run(m, st, encoders[m], batch_size=batch_size, decode=decode,
                                      draft_size=draft_size, dtype=dtype, chunk_rows=chunk_rows))
        groups = _group_preprocessors(runs)

        # The index row -> the file on disk (the store keeps paths relative to the dataset root).
        paths = _row_paths(st, dataset)
        owned = (lambda c: True) if group is None else group.ctx.owns
        for run in runs:
            _plan_model(run, owned, chunk_rows=chunk_rows)
            rt = run.encoder.runtime()
            log.info("%s%s runs on %s", rank_tag, run.name, ", ".join(f"{k}={v}" for k, v in rt.items()) or device)
        shared = [g for g in groups if len(g.members) > 1]
        for g in shared:
            log.info("%s%s share one preprocessing: pixels computed and copied once", rank_tag, " + ".join(g.members))

        error: str | None = None
        pipeline: dict[str, Any] = {}
        try:
            rows_decoded, pipeline = _run_chunks(runs, groups, paths, batch_size=batch_size, workers=workers,
                                                 device=device, progress=progress, locks=locks, decode=decode,
                                                 draft_size=draft_size, desc=f"{rank_tag}extract")
        except Exception as e:  # reported to every rank through the final gather
            if group is None:
                if isinstance(e, FacestoreError):
                    raise
                done = ", ".join(f"{r.name} {r.chunks_written}" for r in runs)
                raise BuildError(
                    f"the build stopped: {type(e).__name__}: {e}. The chunks committed in this run ({done}) are kept "
                    f"in {getattr(st, 'path', store)}; run the same command again to resume from the first pending "
                    "chunk (`facestore info STORE` shows what is done)"
                ) from e
            log.exception("%sextraction failed", rank_tag)
            error, rows_decoded = f"rank {group.ctx.rank}: {type(e).__name__}: {e}", 0
        seconds = time.perf_counter() - t_start

        local = {
            "rows_decoded": rows_decoded,
            "error": error,
            "models": {r.name: {"rows_written": r.rows_written - r.rows_demoted, "rows_skipped": r.rows_skipped,
                                "failures": dict(r.failures + Counter({"nonfinite": r.rows_demoted})),
                                "chunks_written": r.chunks_written, "forward_seconds": r.forward_seconds,
                                "worker_runtime": r.worker_runtime} for r in runs},
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
            runtime = run.encoder.runtime()
            seen = [info for p in per for info in p["worker_runtime"]]
            if seen:
                # What the preprocessor really ran on in the decode workers (ArcFace's detector).
                runtime["detector_ran_on"] = sorted({"+".join(i.get("providers", [])) for i in seen})
            model_reports.append(ModelBuildReport(
                model=run.name,
                rows_written=written,
                rows_skipped=sum(p["rows_skipped"] for p in per),
                failures=dict(sorted((k, v) for k, v in fails.items() if v)),
                failures_total=_failure_counts(st, run.name),
                chunks_written=sum(p["chunks_written"] for p in per),
                forward_seconds=fwd,
                images_per_s=(written / fwd) if fwd > 0 else 0.0,
                views=dict(run.views),
                runtime=runtime,
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
            pipeline=pipeline,
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


def _draft_size(names: list[str], encoders: Mapping[str, Any], decode: str) -> int | None:
    """The draft-decoding size of the command: the largest side any model needs (None: full decode)."""
    if decode != "draft":
        return None
    sides = []
    for m in names:
        side = getattr(encoders[m].preprocessor(), "draft_min_side", lambda: None)()
        if side is None:
            log.warning("--decode draft: %s needs the full-resolution image; every image is decoded in full", m)
            return None
        sides.append(int(side))
    return max(sides)


def pipeline_record(encoder: Any, *, batch_size: int, decode: str, draft_size: int | None) -> dict[str, Any]:
    """What of the pipeline changes the bits of ``encoder``'s vectors: stored as ``spec["pipeline"]``.

    ``decode="auto"`` and ``"pil"`` give the same pixels and are both recorded as ``"full"``;
    ``--workers`` and the other models of a command never change a bit and are not recorded.
    A batch-invariant model (exact arithmetic) records no batch size or device.
    """
    rec: dict[str, Any] = {"decode": "draft" if decode == "draft" and draft_size else "full"}
    if rec["decode"] == "draft":
        rec["draft_size"] = int(draft_size)
    if not getattr(encoder, "batch_invariant", False):
        rec["batch_size"] = int(batch_size)
        rec["batching"] = BATCHING_RULE
        rec["device_type"] = str(encoder.runtime().get("device", "cpu")).split(":")[0]
    return rec


def _make_run(name: str, st: Any, encoder: Any, *, batch_size: int, decode: str, draft_size: int | None,
              dtype: str, chunk_rows: int) -> _ModelRun:
    from facestore.models.base import Encoder

    spec = encoder.resolved_spec()
    record = pipeline_record(encoder, batch_size=batch_size, decode=decode, draft_size=draft_size)
    if name in st.models and "pipeline" not in st.model_spec(name):
        # Built before the pipeline was recorded: the stored spec cannot say which batch size made
        # its vectors, so resuming it is allowed as before (and warned about), not refused.
        log.warning("%s: this store's vectors were built before facestore recorded the batch size and decoder; "
                    "resume with the batch size of the first build to keep them bitwise reproducible", name)
    else:
        spec["pipeline"] = record
    views = {str(v): int(d) for v, d in spec["views"].items()}
    writer = st.model_writer(name, spec=spec, views=views, dtype=dtype, chunk_rows=chunk_rows,
                             default_view=spec.get("default_view"))
    # The default collate is torch.stack, which a worker can do itself (one shared-memory
    # tensor per batch instead of one per image); a custom collate runs in the main process.
    stack = type(encoder).collate is Encoder.collate
    return _ModelRun(name=name, encoder=encoder, writer=writer, views=views, stack=stack)


def _run_chunks(runs: list[_ModelRun], groups: list[_PixelGroup], paths: list[str], *, batch_size: int,
                workers: int, device: str, progress: bool, locks: list[Any], decode: str, draft_size: int | None,
                desc: str) -> tuple[int, dict[str, Any]]:
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    tasks = plan_tasks(runs, lambda c: _chunk_range(runs[0].writer, c), batch_size=batch_size)
    pipeline: dict[str, Any] = {"batch_size": batch_size, "decode": decode, "draft_size": draft_size,
                                "workers": workers, "usable_cores": usable_cores(),
                                "preprocessing_groups": [list(g.members) for g in groups]}
    if not tasks:
        return 0, pipeline
    total = sum(len(t.rows) for t in tasks)
    by_name = {r.name: r for r in runs}
    batch_bytes = sum(batch_size * int(getattr(g.preprocessor, "output_nbytes", 3 * 224 * 224 * 4)) for g in groups)
    workers, prefetch = fit_shared_memory(workers=min(workers, len(tasks)), batch_bytes=batch_bytes)
    # A CUDA session in a worker (ArcFace's detector) cannot start in a process forked from one
    # that has initialised CUDA: such workers are spawned.
    spawn = workers > 0 and any(getattr(g.preprocessor, "uses_cuda_in_workers", False) for g in groups)
    pipeline.update(workers=workers, prefetch=prefetch, worker_start="spawn" if spawn else "default")
    dataset = ChunkDecoder(tasks, paths, {g.gid: g.preprocessor for g in groups},
                           {g.gid: g.members for g in groups}, {g.gid: g.stack for g in groups},
                           # "draft" without a size (a model needs full resolution) is a full PIL decode.
                           decoder="draft" if draft_size else ("pil" if decode == "draft" else decode),
                           draft_size=draft_size)
    loader = DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
        pin_memory=device.startswith("cuda"), worker_init_fn=_worker_init if workers else None,
        prefetch_factor=prefetch if workers else None, persistent_workers=False,
        multiprocessing_context="spawn" if spawn else None,
    )
    log.info("%s: %d decode worker(s) (of %d usable cores), batch %d, prefetch %d, decoder %s", desc, workers, pipeline["usable_cores"], batch_size,
             prefetch if workers else 0, "draft" if draft_size else ("torchvision/PIL" if decode == "auto" else decode))
    writer = _StoreWriter()
    buffers: dict[str, _ChunkBuffer] = {}
    current: int | None = None
    decoded = 0
    seen: set[tuple[int, tuple]] = set()
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True, smoothing=0.1)
    failed = True
    try:
        with torch.inference_mode():
            for batch in _device_batches(loader, groups):
                if batch.chunk != current:
                    if current is not None:
                        _finish_chunk(writer, runs, current, buffers, locks)
                    current = batch.chunk
                    buffers = {r.name: _new_buffer(r, current, writer.call(r.writer.read_chunk, current)
                                                   if current in r.partial else None)
                               for r in runs if current in r.pending}
                for gid, info in batch.worker_info.items():
                    key = (gid, tuple(sorted((k, str(v)) for k, v in info.items())))
                    if key not in seen:
                        seen.add(key)
                        members = [m for m in groups[gid].members if m in batch.models]
                        log.info("%s in a decode worker runs on %s", " + ".join(members), info)
                        for m in members:
                            by_name[m].worker_runtime.append(dict(info))
                for m in batch.models:
                    _consume(by_name[m], buffers[m], batch)
                decoded += len(batch.rows)
                bar.update(len(batch.rows))
            if current is not None:
                _finish_chunk(writer, runs, current, buffers, locks)
        failed = False
    finally:
        bar.close()
        writer.close(raise_errors=not failed)
    return decoded, pipeline


def _finish_chunk(writer: _StoreWriter, runs: list[_ModelRun], c: int, buffers: dict[str, _ChunkBuffer],
                  locks: list[Any]) -> None:
    def job() -> None:
        for run in runs:
            if c in run.pending:
                _commit(run, c, buffers[run.name])
        for lock in locks:
            lock.heartbeat()  # the lock's timer refreshes it too; a commit is a sure sign of life

    writer.submit(job)


def _versions() -> dict[str, str]:
    from facestore.models.base import library_versions

    return library_versions("facestore", "torch", "numpy", "zarr")

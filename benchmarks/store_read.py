"""Store read speed: loading N x D float16 embeddings from the store vs ``np.load`` of the same bytes.

Target (issue 2): store / np.load throughput ratio >= 0.5 at 434,528 x 768.

Since store format 2.0.0 every chunk read is checked (file size and crc32c trailer), so the
store pays one crc32c pass over the bytes that ``np.load`` does not (google_crc32c, about
3 GB/s per core here; it holds the GIL, so reader threads do not verify in parallel).

    python benchmarks/store_read.py                # the full 434,528 x 768 (about 670 MB on disk twice)
    python benchmarks/store_read.py --rows 50000   # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from facestore import create_store
from facestore.dataset import DatasetIndex


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=434_528)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--chunk-rows", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the temporary store (default: a temp dir)")
    args = ap.parse_args()

    tmp = Path(args.dir or tempfile.mkdtemp(prefix="facestore-bench-"))
    try:
        run(args, tmp)
    finally:
        if args.dir is None:  # about 1.3 GB at full size: never leave it behind
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    n, d = args.rows, args.dim
    rng = np.random.default_rng(0)
    ids = np.char.add("img", np.arange(n).astype(str)).astype(str)
    ids.sort()
    ds = DatasetIndex(root=tmp, image_ids=ids, paths=ids, row_names=np.full(n, "name"), identities=None,
                      sizes=np.full(n, -1, np.int64), mtimes_ns=np.full(n, -1, np.int64), source="manifest")
    store = create_store(tmp / "bench.zarr")
    store.sync_index(ds, workers=1)
    w = store.model_writer("bench", spec={"name": "bench"}, views={"v": d}, dtype="float16", chunk_rows=args.chunk_rows)
    t0 = time.perf_counter()
    for c in range(w.n_chunks):
        a, b = w.chunk_range(c)
        w.write_chunk(c, {"v": rng.standard_normal((b - a, d), dtype=np.float32)}, np.ones(b - a, np.uint8), [""] * (b - a))
    write_s = time.perf_counter() - t0
    X, _ = store.load("bench", view="v", dtype=None)
    npy = tmp / "same.npy"
    np.save(npy, X)
    del X

    t_np = _best(lambda: np.load(npy), args.repeat)
    t_store = _best(lambda: store.load("bench", view="v", dtype=None), args.repeat)
    t_np32 = _best(lambda: np.load(npy).astype(np.float32), args.repeat)
    t_store32 = _best(lambda: store.load("bench", view="v"), args.repeat)
    gb = n * d * 2 / 1e9
    rows = [
        ("np.load float16 (baseline)", t_np, 1.0),
        ("store.load dtype=None (float16)", t_store, t_np / t_store),
        ("np.load + astype(float32) (baseline)", t_np32, 1.0),
        ("store.load (float32, default)", t_store32, t_np32 / t_store32),
    ]
    lines = [
        f"# store_read: {n:,} x {d} float16 ({gb:.2f} GB), chunk_rows={args.chunk_rows}",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; page cache warm; best of {args.repeat}",
        f"write (whole-chunk writes): {write_s:.2f} s ({gb / write_s:.2f} GB/s)",
        "",
        "| read | seconds | GB/s | throughput ratio vs baseline |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {t:.3f} | {gb / t:.2f} | {r:.2f} |" for name, t, r in rows]
    lines += ["", f"target: store.load / np.load >= 0.5 -> {'met' if t_np / t_store >= 0.5 else 'NOT met'} "
                  f"({t_np / t_store:.2f})"]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "store_read.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()

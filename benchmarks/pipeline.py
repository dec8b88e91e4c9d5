"""Extraction pipeline throughput against the decode floor, with weight-free models.

The decode floor is ``decode_image`` alone in ``--workers`` processes: no pipeline can beat it.
``build_store`` is then timed for ``pixels-32``, ``random-vit-tiny`` and both in one run (one
decode feeds both). On a GPU machine the forward pass is cheap, so this measures the pipeline
itself (decode workers, preprocessing, batching, whole-chunk writes).

    python benchmarks/pipeline.py --images 600 --workers 1               # CPU, a minute
    python benchmarks/pipeline.py --images 6000 --workers 15 --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.md"


def _write(args) -> None:
    from extract import write_chips

    root, i, n = args
    write_chips(root / f"name{i % 20:02d}" / f"p{i:05d}", n, seed=i)


def _decode(path: str) -> int:
    from facestore.images import decode_image

    return decode_image(path).shape[0]


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    from facestore.build import build_store

    tmp = Path(tempfile.mkdtemp(prefix="facestore-pipe-"))
    try:
        root = tmp / "chips"
        per = 50
        with Pool(max(1, args.workers)) as pool:
            pool.map(_write, [(root, i, per) for i in range(max(1, args.images // per))])
        paths = [str(p) for p in sorted(root.rglob("*.jpg"))]
        t = time.perf_counter()
        with Pool(max(1, args.workers)) as pool:
            pool.map(_decode, paths, chunksize=64)
        floor = len(paths) / (time.perf_counter() - t)
        rows = [("decode only (the floor)", floor)]
        for k, models in enumerate((["pixels-32"], ["random-vit-tiny"], ["pixels-32", "random-vit-tiny"])):
            t = time.perf_counter()
            build_store(root, tmp / f"s{k}.zarr", models, device=args.device, workers=args.workers,
                        batch_size=args.batch_size, chunk_rows=2048, progress=False)
            rows.append((f"build_store {' + '.join(models)}", len(paths) / (time.perf_counter() - t)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"# pipeline: {len(paths):,} chips of 512x512 JPEG, {args.workers} workers, batch {args.batch_size}, "
        f"device {args.device}",
        f"machine: {platform.machine()}, {os.cpu_count()} cores. Command: `python benchmarks/pipeline.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| run | images/s (wall, start-up included) | share of the decode floor |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {ips:,.0f} | {ips / floor:.2f} |" for name, ips in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    return text


if __name__ == "__main__":
    main()

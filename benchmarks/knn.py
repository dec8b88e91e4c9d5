"""kNN search: faiss IndexFlatIP (probes.knn) vs scikit-learn NearestNeighbors(brute, cosine), same k.

Prints a table with the time ratio and neighbour agreement, writes benchmarks/results/knn.md.
Full size: 100,000 x 768 database, 10,000 queries, k=200. ``--quick``: 20,000 x 768, 2,000 queries.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--k", type=int, default=200)
    args = ap.parse_args(argv)
    from sklearn.neighbors import NearestNeighbors

    from probes.knn import knn_search

    n_db, n_q, dim = (20_000, 2_000, 768) if args.quick else (100_000, 10_000, 768)
    rng = np.random.default_rng(0)
    db = rng.normal(size=(n_db, dim)).astype(np.float32)
    q = rng.normal(size=(n_q, dim)).astype(np.float32)
    t0 = time.perf_counter()
    res = knn_search(db, q, k=args.k, device="auto")
    t_faiss = time.perf_counter() - t0
    t0 = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute", metric="cosine").fit(db)
    _, idx = nn.kneighbors(q)
    t_sk = time.perf_counter() - t0
    agree = float(np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(res.indices, idx)]))
    table = "\n".join([
        f"# kNN search: {n_db:,} x {dim} database, {n_q:,} queries, k={args.k}",
        "",
        "| method | seconds | ratio vs sklearn |",
        "|---|---|---|",
        f"| sklearn NearestNeighbors(brute, cosine) | {t_sk:.2f} | 1.00x |",
        f"| faiss IndexFlatIP ({res.device}) on L2-normalised | {t_faiss:.2f} | {t_sk / t_faiss:.2f}x faster |",
        "",
        f"neighbour-set agreement at k={args.k}: {agree:.4f}",
    ])
    print(table)
    out = Path(__file__).parent / "results" / "knn.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()

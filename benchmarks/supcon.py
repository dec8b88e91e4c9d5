"""SupCon head training throughput (samples/s) on frozen features, against a plain cross-entropy
MLP of the same shape trained on the same batches in the same run (the baseline).

Writes benchmarks/results/supcon.md. Full: 50,000 x 768, 500 classes, 2 epochs, batch 1024.
``--quick``: 10,000 x 768, 100 classes, 1 epoch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    import torch

    from probes.supcon import MPerClassSampler, SupConHead, projection_mlp, resolve_torch_device

    n, C, epochs = (10_000, 100, 1) if args.quick else (50_000, 500, 2)
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, n)
    X = (rng.normal(size=(C, 768))[y] * 0.3 + rng.normal(size=(n, 768))).astype(np.float32)
    head = SupConHead(2048, out_dim=128, epochs=epochs, batch_size=1024, m_per_class=4, device=args.device).fit(X, y)
    sps_supcon = head.samples_per_second_
    dev = resolve_torch_device(args.device)
    model = torch.nn.Sequential(projection_mlp(768, 2048, 128), torch.nn.Linear(128, C)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    Xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    sampler = MPerClassSampler(y, m=4, batch_size=head.batch_size_)  # the batches the head used
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for b in sampler:
            idx = torch.as_tensor(b, device=dev)
            loss = torch.nn.functional.cross_entropy(model(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(b)
    sps_ce = seen / (time.perf_counter() - t0)
    table = "\n".join([
        f"# SupCon head throughput: {n:,} x 768, {C} classes, {epochs} epoch(s), batch {head.batch_size_}, MLP 768-2048-128, {dev}",
        "",
        "| method | samples/s | ratio vs cross-entropy MLP |",
        "|---|---|---|",
        f"| cross-entropy MLP (baseline) | {sps_ce:,.0f} | 1.00x |",
        f"| SupCon head (SupConLoss, m-per-class) | {sps_supcon:,.0f} | {sps_supcon / sps_ce:.2f}x |",
    ])
    print(table)
    out = Path(__file__).parent / "results" / "supcon.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()

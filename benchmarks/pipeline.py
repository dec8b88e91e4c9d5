"""The extraction pipeline stage by stage, against the decode floor, in one run on one machine.

512x512 JPEG chips (smooth gradients plus sensor-like noise, 60-100 KB each, like photos'). Every
stage runs on the same ``--workers`` DataLoader workers and the same fixed batches, so the ratios
compare like with like:

- decode only, PIL (what the pipeline used before) and ``decoder="auto"`` (torchvision's
  libjpeg-turbo for plain JPEGs, identical pixels): the floor no pipeline can beat;
- decode + preprocess: the workers' whole job, uint8 pixels stacked per batch (what crosses the
  pipe now) and the previous float32 normalised batches;
- full builds (``build_store``: workers, shared memory, device copy, forward, chunk writes) of
  ``pixels-32``, ``dinov2-base`` and the three-model command ``clip-vit-b-32 + dinov2-base +
  siglip-base``, against the three models built by separate commands;
- forward only, per model, on pixel batches already on the device (the other ceiling).

On the CPU the models are tiny random ones of the real architectures by default (the pipeline,
not the CPU forward pass, is what is measured); ``--real-size`` uses random weights of the real
sizes (for the GPU check, ``benchmarks/gpu_check.sh``). The machine's load average is printed
beside the figures: the CPU box is shared.

    python benchmarks/pipeline.py --images 1000 --workers 1                      # CPU, ~3 minutes
    python benchmarks/pipeline.py --images 20000 --workers 15 --device cuda --real-size --batch-size 256 \
        --out /tmp/gpu/pipeline_cuda.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.md"
THREE = ("clip-vit-b-32", "dinov2-base", "siglip-base")


def _write(args) -> None:
    from extract import write_chips

    root, i, n = args
    write_chips(root / f"name{i % 20:02d}" / f"p{i:05d}", n, seed=i)


def make_weights(root: Path, *, real_size: bool) -> dict[str, Path | None]:
    """Weights folders for every model the benchmark builds (random; nothing is downloaded)."""
    if real_size:
        from extract import make_clip, make_dinov2, make_siglip

        return {"dinov2-base": make_dinov2(root / "dinov2-base", size="base"), "clip-vit-b-32": make_clip(root / "clip"),
                "siglip-base": make_siglip(root / "siglip"), "pixels-32": None}
    from tests.tiny import make_weights as tiny

    return {m: tiny(m, root) for m in (*THREE, "pixels-32")}


class _Stage:
    """DataLoader dataset: batch ``i`` of paths decoded (and optionally preprocessed and stacked), as a worker would."""

    def __init__(self, batches, decoder, preprocessor=None):
        self.batches, self.decoder, self.preprocessor = batches, decoder, preprocessor

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        import torch

        from facestore.images import decode_image

        images = [decode_image(p, decoder=self.decoder) for p in self.batches[i]]
        if self.preprocessor is None:
            return len(images)
        return torch.stack([self.preprocessor(im) for im in images])


def _identity(x):
    return x


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def stage_rate(paths, *, workers, batch, decoder, preprocessor=None) -> float:
    """Images/s of decoding (and preprocessing) every path on ``workers`` DataLoader workers, start-up included."""
    import torch
    from torch.utils.data import DataLoader

    batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    loader = DataLoader(_Stage(batches, decoder, preprocessor), batch_size=None, num_workers=workers,
                        collate_fn=_identity, worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None)
    t = time.perf_counter()
    n = 0
    for out in loader:
        n += out if isinstance(out, int) else out.shape[0]
        if isinstance(out, torch.Tensor):
            del out
    return n / (time.perf_counter() - t)


def per_core_costs(paths, *, pixels, floats, draft_size) -> list[tuple[str, float]]:
    """CPU milliseconds per image of each worker stage in this process (CPU time: robust to other jobs' load)."""
    import torch

    from facestore.images import decode_image

    torch.set_num_threads(1)
    stages = {
        "decode, PIL": lambda p: decode_image(p, decoder="pil"),
        "decode, auto (torchvision)": lambda p: decode_image(p),
        "decode (PIL) + float32 normalised pixels (before)": lambda p: floats(decode_image(p, decoder="pil")),
        "decode (auto) + uint8 pixels (now)": lambda p: pixels(decode_image(p)),
        f"decode draft {draft_size} + uint8 pixels (--decode draft)":
            lambda p: pixels(decode_image(p, decoder="draft", draft_size=draft_size)),
    }
    out = []
    for name, fn in stages.items():
        fn(paths[0])
        t = time.process_time()
        for p in paths:
            fn(p)
        out.append((name, (time.process_time() - t) / len(paths) * 1e3))
    return out


def draft_difference(paths, *, pixels, draft_size) -> dict[str, float]:
    """How far ``--decode draft`` moves the model's uint8 pixels from a full decode (grey levels)."""
    from facestore.images import decode_image

    diffs = []
    for p in paths:
        full = pixels(decode_image(p)).numpy().astype(np.int16)
        draft = pixels(decode_image(p, decoder="draft", draft_size=draft_size)).numpy().astype(np.int16)
        diffs.append(np.abs(full - draft))
    d = np.stack(diffs)
    return {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": float(d.max()),
            "share_changed": float((d > 0).mean())}


def build_rate(data, store, models, weights, *, device, workers, batch) -> tuple[float, dict]:
    from facestore.build import build_store

    t = time.perf_counter()
    report = build_store(data, store, list(models), weights={m: w for m, w in weights.items() if m in models and w},
                         device=device, workers=workers, batch_size=batch, chunk_rows=8192, progress=False)
    dt = time.perf_counter() - t
    shutil.rmtree(store, ignore_errors=True)
    return report.n_rows / dt, report.pipeline


def forward_rate(model, weights, paths, *, device, batch, repeats=8) -> float:
    """Images/s of ``encoder.encode`` alone, on one pixel batch already on the device (warm)."""
    import torch

    from facestore.images import decode_image
    from facestore.models import load_encoder

    enc = load_encoder(model, weights=None if weights is None else str(weights), device=device)
    pre = enc.preprocessor()
    x = torch.stack([pre(decode_image(p)) for p in (paths * (batch // len(paths) + 1))[:batch]])
    dev = enc.input_device()
    if dev:
        x = x.to(dev)
    enc.encode(x)  # warm-up: allocator, kernels
    if dev and dev.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        enc.encode(x)
    if dev and dev.startswith("cuda"):
        torch.cuda.synchronize()
    return repeats * batch / (time.perf_counter() - t)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=None, help="decode workers [default: usable cores - 1]")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--real-size", action="store_true", help="random weights of the real sizes (GPU)")
    ap.add_argument("--skip-separate", action="store_true", help="skip the three separate builds")
    ap.add_argument("--repeats", type=int, default=1,
                    help="best of N for the decode/preprocess stages (a shared machine's load comes and goes)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from facestore.build import default_workers, usable_cores
    from facestore.models import load_encoder
    from facestore.models.preprocess import ImagePreprocessor

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    workers = default_workers() if args.workers is None else args.workers
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="facestore-pipe-"))
    rows: list[tuple[str, float, str]] = []
    notes: list[str] = []
    try:
        root = tmp / "chips"
        per = 50
        t = time.perf_counter()
        with Pool(max(1, usable_cores())) as pool:
            pool.map(_write, [(root, i, per) for i in range(max(1, args.images // per))])
        paths = [str(p) for p in sorted(root.rglob("*.jpg"))]
        notes.append(f"wrote {len(paths):,} chips in {time.perf_counter() - t:.0f} s")
        weights = make_weights(tmp / "w", real_size=args.real_size)
        dino = load_encoder("dinov2-base", weights=str(weights["dinov2-base"]), device="cpu")
        pixels_stage = dino.preprocessor()  # what the workers compute now: uint8 (3, 224, 224)
        float_stage = ImagePreprocessor(dino.preprocessing)  # what they computed before: float32, normalised
        sample = paths[:200]
        core = per_core_costs(sample, pixels=pixels_stage, floats=float_stage, draft_size=256)
        draft = draft_difference(sample[:50], pixels=pixels_stage, draft_size=256)
        kw = dict(workers=workers, batch=args.batch_size)

        def best(**stage):
            # Interleaving would be fairer still; best-of-N is what a loaded shared machine allows.
            return max(stage_rate(paths, **kw, **stage) for _ in range(max(1, args.repeats)))

        floor_pil = best(decoder="pil")
        floor = best(decoder="auto")
        rows += [("decode only, PIL (the previous floor)", floor_pil, "decode"),
                 ("decode only, auto: torchvision for plain JPEGs (the floor)", floor, "decode")]
        rows.append(("decode + dinov2 preprocessing, float32 normalised (previous worker output)",
                     best(decoder="pil", preprocessor=float_stage), "worker"))
        rows.append(("decode + dinov2 preprocessing, uint8 pixels (worker output now)",
                     best(decoder="auto", preprocessor=pixels_stage), "worker"))
        del dino
        builds = {}
        for models in (("pixels-32",), ("dinov2-base",), THREE):
            ips, pipe = build_rate(root, tmp / "s.zarr", models, weights, device=device, **kw)
            builds[models] = ips
            shared = [" + ".join(g) for g in pipe.get("preprocessing_groups", []) if len(g) > 1]
            rows.append((f"build_store {' + '.join(models)} (one command)"
                         + (f"; shared pixels: {', '.join(shared)}" if shared else ""), ips, "build"))
        if not args.skip_separate:
            per_model = [builds[(m,)] if (m,) in builds else
                         build_rate(root, tmp / "s.zarr", (m,), weights, device=device, **kw)[0] for m in THREE]
            separate = 1.0 / sum(1.0 / r for r in per_model)  # the three commands back to back
            rows.append((f"build_store {' + '.join(THREE)}, three separate commands", separate, "build"))
        fwd = {m: forward_rate(m, weights[m], paths[:16], device=device, batch=args.batch_size) for m in THREE}
        for m, r in fwd.items():
            rows.append((f"forward only, {m} (pixels already on the device)", r, "forward"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    from facestore.doctor import doctor_report

    rep = doctor_report()
    cpu = rep["torch"]
    gpu = ", ".join(d["name"] for d in cpu.get("devices", [])) or "none"
    lines = [
        f"# Pipeline stages against the decode floor ({datetime.date.today().isoformat()})",
        "",
        f"{len(paths):,} chips of 512x512 JPEG, {workers} decode worker(s) (usable cores {usable_cores()}), batch "
        f"{args.batch_size}, device {device} (GPU: {gpu}), {'random real-size' if args.real_size else 'tiny random'} "
        f"weights. Machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu.get('cpu_capability')}), torch "
        f"{torch.__version__}. Load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} (1 min). "
        f"Command: `python benchmarks/pipeline.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| stage | images/s (wall, start-up included) | vs decode floor |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {ips:,.1f} | {ips / floor:.2f} |" for name, ips, _ in rows]
    base = core[0][1]
    lines += ["", "Worker stages per core, CPU time in this process (200 chips; not slowed by other jobs' waits):", "",
              "| worker stage | ms / image | images/s per core | cost vs PIL decode |", "|---|---|---|---|"]
    lines += [f"| {name} | {ms:.2f} | {1e3 / ms:,.0f} | {ms / base:.2f} |" for name, ms in core]
    lines += ["", f"`--decode draft` (DCT-scaled decode to >= 256 px) vs a full decode, dinov2's uint8 224x224 pixels "
              f"over 50 chips: mean |diff| {draft['mean']:.2f} grey levels, 99th percentile {draft['p99']:.0f}, "
              f"max {draft['max']:.0f}; {draft['share_changed']:.1%} of values differ."]
    slowest = min(fwd.values())
    three = builds[THREE]
    lines += [
        "",
        f"- dinov2-base build / decode floor: **{builds[('dinov2-base',)] / floor:.2f}** (target >= 0.70, ideally 0.90); "
        f"against the PIL decode floor (the issue's 4,136 images/s was PIL's): {builds[('dinov2-base',)] / floor_pil:.2f}",
        f"- worker job (decode + uint8 pixels) / decode floor, per core: {core[1][1] / core[3][1]:.2f} "
        f"(the most any build can reach on these workers)",
        f"- three-model command / min(slowest forward {slowest:,.0f}, decode floor {floor:,.0f}): "
        f"**{three / min(slowest, floor):.2f}** (target >= 0.70)",
        f"- torchvision vs PIL decoding: {floor / floor_pil:.2f}x; " + "; ".join(notes),
    ]
    if not args.skip_separate:
        lines.append(f"- three models in one command vs three commands: {three / separate:.2f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()

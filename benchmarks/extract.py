"""Extraction speed: ``build_store`` vs the plan's naive loop vs the bare forward pass.

512x512 JPEG chips, random weights of the real architecture sizes (nothing is downloaded):

- (a) ``build_store`` images/s end to end (scan, decode in workers, preprocess, forward, write);
- (b) the plan's naive loop: PIL open, ``AutoImageProcessor`` per batch, fp32 forward, a list of
  CLS vectors, ``np.save``;
- (c) forward only, on pre-decoded, pre-processed tensors, at the precision (a) used;
- (d) decoding alone on the same workers (the floor; ``benchmarks/pipeline.py`` has every stage).

Targets (issue 2): a/b >= 2.0 and a/c >= 0.85. Rows per family at real size (ours vs the
naive per-library loop: HF processor per batch, open_clip preprocess per image, timm transforms
per image), and a multi-model row: three models in one run (one decode) vs three runs.

    python benchmarks/extract.py            # about 3-5 minutes on 2 cores
    python benchmarks/extract.py --quick    # fewer images, main rows only
    python benchmarks/extract.py --device cuda --images 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "extract.md"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_chips(root: Path, n: int, *, size: int = 512, seed: int = 0) -> list[Path]:
    """Smooth gradients plus sensor-like noise: JPEG sizes and decode times like photos' (~60-100 KB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0, 255, size=(3, 3))
        img = np.stack([a[k] * xx + b[k] * yy + c[k] * np.sin(6 * xx * yy + k) for k in range(3)], axis=-1)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        folder = root / f"name{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=92)
        paths.append(p)
    return sorted(paths)


# ------------------------------------------------------------------ random real-size weights


def make_dinov2(out: Path, *, size: str) -> Path:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    dims = {"small": (384, 6), "base": (768, 12)}[size]
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=dims[0], num_attention_heads=dims[1], num_hidden_layers=12,
                             patch_size=14, image_size=518)).save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                      resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def make_siglip(out: Path) -> Path:
    """SigLIP base (patch 16, 224 px: SiglipConfig's defaults) with random weights and its image processor."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    # In-vocabulary special ids (the defaults name CLIP's, outside SigLIP's 32,000 tokens).
    config = SiglipConfig(text_config={"pad_token_id": 1, "bos_token_id": 1, "eos_token_id": 1})
    SiglipModel(config).save_pretrained(out)
    SiglipImageProcessor(size={"height": 224, "width": 224}, resample=3, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(out)
    return out


def make_clip(out: Path) -> Path:
    import open_clip
    import torch

    from facestore.models.openclip import write_local_dir

    model_cfg = open_clip.get_model_config("ViT-B-32")
    tag = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    pre = {"size": 224, "mode": "RGB", "mean": list(tag["mean"]), "std": list(tag["std"]),
           "interpolation": tag["interpolation"], "resize_mode": tag["resize_mode"]}
    cfg = dict(model_cfg, quick_gelu=True)
    torch.manual_seed(0)
    return write_local_dir(out, model=open_clip.model.CLIP(**cfg), model_cfg=cfg, preprocess_cfg=pre)


def make_resnet(out: Path) -> Path:
    import timm
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("resnet50", pretrained=False).eval(), out, safe_serialization=True)
    return out


# ------------------------------------------------------------------ measurements


def ours(data: Path, models: list[str], weights: dict, *, device: str, batch: int, workers: int | None) -> float:
    from facestore.build import build_store

    store = Path(tempfile.mkdtemp(prefix="fs-bench-")) / "s"
    t = time.perf_counter()
    report = build_store(data, store, models, weights=weights, batch_size=batch, device=device, workers=workers,
                         progress=False)
    dt = time.perf_counter() - t
    shutil.rmtree(store.parent)
    return report.n_rows / dt


def naive_hf(paths: list[Path], weights: Path, *, device: str, batch: int) -> float:
    """The plan's loop (experiment 3.1)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    t = time.perf_counter()
    model = AutoModel.from_pretrained(weights).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(weights)
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            images = [Image.open(p).convert("RGB") for p in paths[i:i + batch]]
            inputs = processor(images, return_tensors="pt").to(device)
            out.append(model(**inputs).last_hidden_state[:, 0].cpu().numpy())
    np.save(Path(tempfile.mkdtemp()) / "emb.npy", np.concatenate(out))
    return len(paths) / (time.perf_counter() - t)


def naive_open_clip(paths: list[Path], weights: Path, *, device: str, batch: int) -> float:
    """open_clip's documented loop: ``preprocess`` per PIL image, ``encode_image`` per batch."""
    import open_clip
    import torch
    from PIL import Image

    t = time.perf_counter()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{weights}", device=device)
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + batch]]).to(device)
            out.append(model.encode_image(x).cpu().numpy())
    np.save(Path(tempfile.mkdtemp()) / "emb.npy", np.concatenate(out))
    return len(paths) / (time.perf_counter() - t)


def naive_timm(paths: list[Path], weights: Path, *, device: str, batch: int) -> float:
    """timm's documented loop: data-config transforms per PIL image, ``forward_head(pre_logits)``."""
    import timm
    import torch
    from PIL import Image

    t = time.perf_counter()
    model = timm.create_model(f"local-dir:{weights}", pretrained=True).to(device).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i:i + batch]]).to(device)
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).cpu().numpy())
    np.save(Path(tempfile.mkdtemp()) / "emb.npy", np.concatenate(out))
    return len(paths) / (time.perf_counter() - t)


def forward_only(paths: list[Path], model: str, weights: Path, *, device: str, batch: int) -> tuple[float, str]:
    """Images/s of ``encoder.encode`` alone on pre-decoded, pre-processed batches (same precision as ours)."""
    from facestore.images import decode_image
    from facestore.models import load_encoder

    enc = load_encoder(model, weights=str(weights), device=device)
    pre = enc.preprocessor()
    batches = [enc.collate([pre(np.array(decode_image(p))) for p in paths[i:i + batch]])
               for i in range(0, len(paths), batch)]
    enc.encode(batches[0])  # warm-up (allocator, oneDNN kernels), as the build's first batch is
    t = time.perf_counter()
    for x in batches:
        enc.encode(x)
    return len(paths) / (time.perf_counter() - t), enc.runtime().get("precision", "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="chips for the main rows")
    ap.add_argument("--family-images", type=int, default=32, help="chips for each per-family row")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="32 chips, main rows only")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    n = 32 if args.quick else args.images
    tmp = Path(tempfile.mkdtemp(prefix="fs-extract-bench-"))
    rows: list[tuple[str, str, float, float, str]] = []
    try:
        paths = write_chips(tmp / "chips", n)
        dino_s = make_dinov2(tmp / "w" / "dinov2-small", size="small")
        bs = args.batch_size
        a = ours(tmp / "chips", ["dinov2-small"], {"dinov2-small": dino_s}, device=device, batch=bs,
                 workers=args.workers)
        b = naive_hf(paths, dino_s, device=device, batch=bs)
        c, precision = forward_only(paths, "dinov2-small", dino_s, device=device, batch=bs)
        from facestore.build import default_workers
        from pipeline import stage_rate

        workers = default_workers() if args.workers is None else args.workers
        floor = stage_rate([str(p) for p in paths], workers=workers, batch=bs, decoder="auto")
        rows += [
            ("(a) build_store, dinov2-small size", "(b) plan's naive loop (fp32)", a, b, ">= 2.0"),
            ("(a) build_store, dinov2-small size", f"(c) forward only ({precision})", a, c, ">= 0.85"),
            ("(a) build_store, dinov2-small size", f"(d) decode only, {workers} worker(s) (the floor)", a, floor,
             "GPU: >= 0.70"),
        ]
        if not args.quick:
            fam = write_chips(tmp / "fam", args.family_images, seed=1)
            dino_b = make_dinov2(tmp / "w" / "dinov2-base", size="base")
            clip = make_clip(tmp / "w" / "clip")
            resnet = make_resnet(tmp / "w" / "resnet50")
            for model, w, naive, label in (
                ("dinov2-base", dino_b, naive_hf, "HF processor per batch"),
                ("clip-vit-b-32", clip, naive_open_clip, "open_clip preprocess per image"),
                ("resnet50", resnet, naive_timm, "timm transforms per image"),
            ):
                ya = ours(tmp / "fam", [model], {model: w}, device=device, batch=bs, workers=args.workers)
                yb = naive(fam, w, device=device, batch=bs)
                rows.append((f"build_store, {model}", f"naive: {label}", ya, yb, ">= 2.0"))
            three = {"dinov2-small": dino_s, "clip-vit-b-32": clip, "resnet50": resnet}
            one_run = ours(tmp / "chips", list(three), three, device=device, batch=bs, workers=args.workers)
            per = [ours(tmp / "chips", [m], {m: w}, device=device, batch=bs, workers=args.workers)
                   for m, w in three.items()]
            separate = 1.0 / sum(1.0 / r for r in per)  # images/s of the three runs back to back
            rows.append(("3 models in one run (one decode)", "3 separate runs", one_run, separate, "> 1.0"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    from facestore.doctor import doctor_report

    cpu = doctor_report()["torch"]
    load = os.getloadavg()
    header = (f"# Extraction benchmark\n\nLoad average at the end (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / "
              f"{load[2]:.1f} (the CPU box is shared). Machine: {platform.machine()}, {os.cpu_count()} CPUs "
              f"({cpu.get('cpu_capability')}, CPU bf16: {cpu.get('cpu_bf16')}), torch {torch.__version__}, "
              f"device {device}, batch {args.batch_size}, {n} main chips of 512x512 JPEG, random weights at "
              f"real size. Command: `python benchmarks/extract.py {' '.join(sys.argv[1:])}`\n\n")
    table = ["| ours | baseline | ours images/s | baseline images/s | ratio | target |", "|---|---|---|---|---|---|"]
    for name_a, name_b, ya, yb, target in rows:
        table.append(f"| {name_a} | {name_b} | {ya:.2f} | {yb:.2f} | {ya / yb:.2f} | {target} |")
    text = header + "\n".join(table) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()

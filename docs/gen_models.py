"""Generate docs/models.md from the model registry (facestore.models.registry).

    python docs/gen_models.py           # rewrite docs/models.md
    python docs/gen_models.py --check   # exit 1 if docs/models.md is out of date

The table is data from the registry, never typed by hand, so it cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facestore.models import get_spec, list_models

OUT = Path(__file__).with_name("models.md")


def _preprocessing(p) -> str:
    if p.resize == "shortest_edge":
        geom = f"short side to {p.resize_to}, centre crop {p.crop[0]}x{p.crop[1]}"
    elif p.resize == "squash":
        geom = f"resize to {p.size[0]}x{p.size[1]} (no crop)"
    else:
        geom = f"{p.size[0]}x{p.size[1]} {p.resize} crop (family-specific)"
    mean = ", ".join(f"{v:.3g}" for v in p.mean)
    std = ", ".join(f"{v:.3g}" for v in p.std)
    return f"{geom}, {p.interpolation}; {p.channel_order}; mean ({mean}), std ({std})"


def _pipe(spec) -> tuple[str, str]:
    """What crosses from the decode workers to the device for ``spec``, and why, from the family's own classes."""
    from facestore.models.hf_vit import _RESIZE_DTYPE
    from facestore.models.pixels import PixelsPreprocessor
    from facestore.models.preprocess import PixelPreprocessor

    if spec.family == "arcface":
        return ("uint8", "the aligned 112x112 crop; (x - 127.5) / 127.5 is applied in the main process before "
                         "`session.run` (onnxruntime takes host arrays)")
    if spec.family == "pixels":
        pre = PixelsPreprocessor(spec.preprocessing.size)
        return ("float32", f"area averages are not integers; {pre.output_nbytes / 1024:.0f} KB per image")
    # The crop's offset rounding (floor or round by family) changes which pixels, never their dtype.
    pre = PixelPreprocessor(spec.preprocessing, resize_dtype=_RESIZE_DTYPE.get(spec.family, "uint8"))
    if pre.output_dtype == "uint8":
        return ("uint8", f"resized and cropped in the worker ({pre.output_nbytes / 1024:.0f} KB per image); "
                         "normalised on the device")
    return ("float32", "its reference processor rescales to float before resizing; a uint8 resize would differ by up "
                       f"to 1/255 at edges ({pre.output_nbytes / 1024:.0f} KB per image, 0..255 scale, normalised on "
                       "the device)")


def render() -> str:
    """The whole of docs/models.md."""
    lines = [
        "# Models",
        "",
        "Generated from the registry (`facestore/models/registry.py`) by `python docs/gen_models.py`;",
        "do not edit by hand. `facestore models [PATTERN]` prints the same records on the command line.",
        "The preprocessing shown is the registry's reference; each family resolves the exact values from the",
        "model's own configuration at load time and the store records the resolved spec with the vectors.",
        "",
        "| name | family | source | views (dim) | preprocessing | licence |",
        "|---|---|---|---|---|---|",
    ]
    specs = [get_spec(n) for n in list_models()]
    for s in specs:
        views = "; ".join(f"`{v.name}` {v.dim}" + (" (default)" if v.name == s.default_view else "") for v in s.views)
        flags = []
        if s.gated:
            flags.append("gated")
        if s.text:
            flags.append("text tower")
        source = f"`{s.source}`" + (f" ({', '.join(flags)})" if flags else "")
        lines.append(f"| `{s.name}` | {s.family} | {source} | {views} | {_preprocessing(s.preprocessing)} "
                     f"| {s.licence} |")
    lines += ["", "## Descriptions", ""]
    for s in specs:
        lines.append(f"- `{s.name}`: {s.description}. Pooling: {s.pooling or 'n/a'}.")
        for v in s.views:
            lines.append(f"  - `{v.name}` ({v.dim}): {v.description}")
    lines += [
        "",
        "## Pixels through the worker pipe",
        "",
        "What the decode workers hand to the main process per image (`facestore build`): `uint8` wherever the",
        "reference preprocessing allows it, normalised on the device inside `Encoder.encode`. Models with equal",
        "pixel preprocessing in one command share the same pixels (computed and copied once).",
        "",
        "| name | pixels | why |",
        "|---|---|---|",
    ]
    for s in specs:
        dtype, why = _pipe(s)
        lines.append(f"| `{s.name}` | {dtype} | {why} |")
    lines += [
        "",
        "## Licences to note",
        "",
        "- insightface's pretrained models (`arcface-r50`, from the `buffalo_l` pack) are licensed for",
        "  non-commercial research use only.",
        "- The DINOv3 weights (`dinov3-*`) are gated on the Hugging Face hub: accept the DINOv3 licence on the",
        "  model page and log in (`hf auth login`), or pass a local copy with `facestore build --weights DIR`.",
        "- `pixels-32` and `random-vit-tiny` have no weights at all: they run anywhere, offline.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/models.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run `python docs/gen_models.py`", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

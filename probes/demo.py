"""A synthetic face-chip dataset and the end-to-end demo behind ``facestore demo`` and ``probes demo``.

The chips are drawn, not photographed: a face-shaped ellipse on a background, with hair, eyes,
brows and a mouth. Every *person* has fixed identity attributes (skin tone, hair colour and
length, face shape, eye spacing, mouth width); every *name* shifts the mean of those attributes
a little, so the name of a person is weakly predictable from their face, which is the kind of
signal the Track 3 plan looks for. Names have Zipf-like frequencies (the first name holds the
most people, as "William" did in the real data), and every image of a person is jittered (pose
shift, scale, lighting, sensor noise), so a probe must generalise across people, not memorise
pixels.

``run_demo`` makes that dataset, builds a store with the two weight-free registry models
(``pixels-32`` and ``random-vit-tiny``), runs ``probes track3`` on it, writes the HTML report
(``probes report``) and returns the path of ``track3_comparison.md``. Nothing is downloaded. The
numbers it prints show the workflow working end to end; they say nothing about real faces.

The demo runs both packages, so it lives here, in the upper one: ``facestore demo`` imports this
module only when the command runs, and facestore itself never imports probes.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_NAMES: tuple[str, ...] = (
    "William", "Emma", "James", "Olivia", "Noah", "Sophia", "Liam", "Ava", "Lucas", "Mia",
    "Ethan", "Zoe", "Mason", "Chloe", "Logan", "Grace", "Elijah", "Nora", "Aiden", "Ruby",
    "Oscar", "Ella", "Henry", "Ivy", "Jack", "Luna", "Leo", "Maya", "Owen", "Hazel",
)

# The identity attributes a name shifts (one latent coordinate each).
ATTRIBUTES: tuple[str, ...] = (
    "skin_tone", "hair_hue", "hair_lightness", "face_width", "eye_spacing", "mouth_width", "hair_length",
)

DEMO_MODELS: tuple[str, ...] = ("pixels-32", "random-vit-tiny")


@dataclass(frozen=True)
class SyntheticDataset:
    """What :func:`make_synthetic_chips` wrote.

    ``root`` is the image folder (``root/<name>/<identity>/<image>.jpg``), ``manifest`` a CSV
    with columns ``path,name,identity`` (paths relative to ``root``) describing the same images,
    ``people_per_name`` the number of people drawn for each name, in ``names`` order.
    """

    root: Path
    manifest: Path
    names: tuple[str, ...]
    people_per_name: tuple[int, ...]
    images_per_person: int
    n_images: int
    size: int
    seed: int
    name_effect: float

    @property
    def n_people(self) -> int:
        return sum(self.people_per_name)


def zipf_people(n_names: int, *, most: int = 20, exponent: float = 1.1, minimum: int = 5) -> tuple[int, ...]:
    """People per name with Zipf-like frequencies: ``max(minimum, round(most / rank ** exponent))``.

    The first name dominates (``most`` people), the tail keeps ``minimum`` people each so that
    an identity-disjoint split can put at least one person of every name in train, val and test.
    """
    if n_names < 2:
        raise ValueError(f"n_names must be at least 2 for a classification task, got {n_names}")
    if minimum < 1 or most < minimum:
        raise ValueError(f"need 1 <= minimum <= most, got minimum={minimum}, most={most}")
    return tuple(max(minimum, round(most / (rank ** exponent))) for rank in range(1, n_names + 1))


def _names(n_names: int) -> tuple[str, ...]:
    if n_names <= len(DEMO_NAMES):
        return DEMO_NAMES[:n_names]
    return DEMO_NAMES + tuple(f"Name{i:03d}" for i in range(len(DEMO_NAMES), n_names))


def _clip(v: float, lo: float = 0.0, hi: float = 255.0) -> int:
    return int(min(hi, max(lo, round(v))))


def _hls_to_rgb(h: float, lightness: float, s: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hls_to_rgb(h % 1.0, min(0.95, max(0.03, lightness)), min(1.0, max(0.0, s)))
    return _clip(r * 255), _clip(g * 255), _clip(b * 255)


def _draw_chip(z: np.ndarray, rng: np.random.Generator, size: int):
    """One chip for a person with latent attributes ``z`` (one value per :data:`ATTRIBUTES`)."""
    from PIL import Image, ImageDraw

    # Squash into (-2.5, 2.5): a strong name shift must not draw a face inside out.
    a = dict(zip(ATTRIBUTES, (2.5 * np.tanh(z / 2.5)).tolist()))
    # Draw at 2x and downsample: anti-aliased edges, closer to a photo than hard pixels.
    s = 2 * size
    bg = tuple(_clip(v) for v in rng.normal(120, 35, size=3))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)

    # Per-image pose: shift and scale.
    cx = s / 2 + rng.normal(0, 0.03) * s
    cy = s / 2 + rng.normal(0, 0.03) * s
    scale = s * (1.0 + rng.normal(0, 0.04))

    skin = _hls_to_rgb(0.07, 0.55 + 0.12 * a["skin_tone"], 0.45)
    hair = _hls_to_rgb(0.08 + 0.05 * a["hair_hue"], 0.28 + 0.12 * a["hair_lightness"], 0.55)
    fw = scale * (0.26 + 0.025 * a["face_width"])  # half-width of the face
    fh = scale * 0.34  # half-height
    hair_len = scale * (0.10 + 0.06 * (a["hair_length"] + 2) / 4)

    # Hair behind the face (its length grows downwards), then the face.
    d.ellipse([cx - fw * 1.15, cy - fh * 1.12, cx + fw * 1.15, cy + fh * 0.2 + hair_len], fill=hair)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    # Fringe.
    d.chord([cx - fw * 1.02, cy - fh * 1.1, cx + fw * 1.02, cy - fh * 0.3], 180, 360, fill=hair)

    eye_dx = fw * (0.42 + 0.05 * a["eye_spacing"])
    eye_y = cy - fh * 0.12
    er = scale * 0.028
    for sign in (-1, 1):
        ex = cx + sign * eye_dx
        d.ellipse([ex - 2 * er, eye_y - er, ex + 2 * er, eye_y + er], fill=(245, 245, 245))
        d.ellipse([ex - er, eye_y - er, ex + er, eye_y + er], fill=(40, 30, 25))
        d.line([ex - 2.2 * er, eye_y - 2.6 * er, ex + 2.2 * er, eye_y - 2.8 * er], fill=hair, width=max(1, int(er)))
    # Nose and mouth.
    d.line([cx, eye_y + er * 2, cx - er, cy + fh * 0.25], fill=tuple(_clip(c * 0.8) for c in skin), width=max(1, int(er * 0.6)))
    mw = fw * (0.38 + 0.06 * a["mouth_width"])
    my = cy + fh * 0.5
    d.chord([cx - mw, my - er * 2, cx + mw, my + er * 2], 0, 180, fill=(150, 60, 60))

    img = img.resize((size, size), Image.Resampling.BILINEAR)
    # Lighting (a global gain and a left-right gradient) and sensor noise.
    arr = np.asarray(img, dtype=np.float32)
    gain = 1.0 + rng.normal(0, 0.08)
    grad = np.linspace(-1, 1, size, dtype=np.float32)[None, :, None] * rng.normal(0, 12)
    arr = arr * gain + grad + rng.normal(0, 5, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_synthetic_chips(
    directory: str | Path,
    *,
    n_names: int = 8,
    people_per_name: int | Sequence[int] | None = None,
    images_per_person: int = 4,
    size: int = 128,
    name_effect: float = 1.5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticDataset:
    """Write a synthetic face-chip dataset to ``directory`` and return what was written.

    Layout: ``directory/<name>/<identity>/<image>.jpg`` (the folder layout ``facestore build
    --data`` reads: name first, identity second) plus ``directory/manifest.csv``.

    ``people_per_name``: one count for every name, a count per name, or ``None`` for Zipf-like
    counts (:func:`zipf_people`: the first name dominates). ``name_effect`` scales how far each
    name shifts the mean identity attributes, in units of the between-person spread: 0 gives
    faces that carry no name signal at all (a null dataset); the default 1.5 is strong enough
    for a probe to find on a few hundred images, far stronger than anything expected in real faces.
    ``size`` is the chip side in pixels (128 keeps the demo fast; the real chips are 512).
    The same arguments always give the same bytes.
    """
    root = Path(directory)
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels to draw a face, got {size}")
    if images_per_person < 1:
        raise ValueError(f"images_per_person must be at least 1, got {images_per_person}")
    if name_effect < 0:
        raise ValueError(f"name_effect must be >= 0 (0 means no name signal), got {name_effect}")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty; make_synthetic_chips writes a fresh dataset: pass an empty or new directory"
        )
    if people_per_name is None:
        counts = zipf_people(n_names)
    elif isinstance(people_per_name, int):
        counts = (people_per_name,) * n_names
    else:
        counts = tuple(int(c) for c in people_per_name)
        if len(counts) != n_names:
            raise ValueError(f"people_per_name has {len(counts)} counts for n_names={n_names}; give one per name")
    if min(counts) < 1:
        raise ValueError(f"every name needs at least one person, got {counts}")

    names = _names(n_names)
    rng = np.random.default_rng(seed)
    k = len(ATTRIBUTES)
    name_means = rng.normal(0.0, 1.0, size=(n_names, k))
    root.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    total = sum(counts) * images_per_person
    done = 0
    for ni, (name, count) in enumerate(zip(names, counts)):
        for p in range(count):
            identity = f"{name.lower()}_{p:03d}"
            z = name_effect * name_means[ni] + rng.normal(0.0, 1.0, size=k)
            person_dir = root / name / identity
            person_dir.mkdir(parents=True)
            for i in range(images_per_person):
                rel = f"{name}/{identity}/{i:02d}.jpg"
                _draw_chip(z, rng, size).save(root / rel, format="JPEG", quality=90)
                rows.append((rel, name, identity))
                done += 1
                if progress is not None:
                    progress(done, total)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "name", "identity"])
        writer.writerows(rows)
    return SyntheticDataset(
        root=root, manifest=manifest, names=names, people_per_name=counts,
        images_per_person=images_per_person, n_images=len(rows), size=size, seed=seed, name_effect=name_effect,
    )


@dataclass(frozen=True)
class DemoSettings:
    """The sizes of one demo run (``quick`` is the setting the test suite uses)."""

    n_names: int
    people_per_name: tuple[int, ...]
    images_per_person: int
    names: tuple[str, ...]
    n_boot: int


DEMO_SETTINGS = DemoSettings(n_names=8, people_per_name=zipf_people(8), images_per_person=4,
                             names=("top4", "all"), n_boot=500)
QUICK_SETTINGS = DemoSettings(n_names=6, people_per_name=zipf_people(6, most=16, minimum=4), images_per_person=3,
                              names=("all",), n_boot=200)

DISCLAIMER = (
    "These numbers come from synthetic drawings with a name signal planted on purpose: they show the "
    "workflow running end to end, not anything about real faces or names."
)


def run_demo(
    directory: str | Path = "facestore-demo",
    *,
    quick: bool = False,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Path:
    """Make a synthetic dataset, build a store with the weight-free models, run ``probes track3``.

    Writes ``directory/data`` (the chips), ``directory/store`` (the store with ``pixels-32`` and
    ``random-vit-tiny``), ``directory/results`` (the result folders and
    ``track3_comparison.md``) and ``directory/results/report`` (the HTML report, whose
    ``index.html`` it prints), and returns the path of ``track3_comparison.md``. Running it again
    on the same directory reuses the dataset, resumes the build (nothing left to do) and skips
    the experiments whose inputs did not change. Nothing is downloaded.
    """
    from facestore.build import build_store
    from probes.report import build_report
    from probes.track3 import run_track3

    settings = QUICK_SETTINGS if quick else DEMO_SETTINGS
    base = Path(directory)
    data, store_path, results = base / "data", base / "store", base / "results"
    t0 = time.perf_counter()
    if (data / "manifest.csv").is_file():
        echo(f"[1/4] reusing the synthetic dataset in {data}")
    else:
        echo(f"[1/4] drawing synthetic face chips into {data}")
        bar = _progress_bar(progress, "chips")
        ds = make_synthetic_chips(data, n_names=settings.n_names, people_per_name=settings.people_per_name,
                                  images_per_person=settings.images_per_person,
                                  progress=bar.update if bar else None)
        if bar:
            bar.close()
        echo(f"      {ds.n_images} images of {ds.n_people} people, {len(ds.names)} names "
             f"(people per name: {', '.join(f'{n} {c}' for n, c in zip(ds.names, ds.people_per_name))})")
    echo(f"[2/4] building {store_path} with {', '.join(DEMO_MODELS)} (weight-free, no download)")
    build = build_store(data, store_path, list(DEMO_MODELS), device=device, workers=0,
                        batch_size=32, progress=progress)
    echo("      " + build.summary().replace("\n", "\n      "))
    echo(f"[3/4] running probes track3 -> {results}")
    report = run_track3(store_path, results, names=settings.names, device=device, n_boot=settings.n_boot,
                        progress=progress, echo=lambda line: echo(f"      {line}"))
    # The comparison's own verdicts (best on seed means or validation, or why none is named),
    # never the largest single test score.
    comparison_json = results / "comparison.json"
    if comparison_json.is_file():
        for rec in json.loads(comparison_json.read_text(encoding="utf-8")).get("recommendations", []):
            if isinstance(rec, dict) and rec.get("kind") in ("best", "no_best"):
                echo(f"      {rec['text']}")
    skipped = {r.experiment for r in report.by_status("skipped")}
    echo(f"{len(skipped)} experiments were skipped because their models are not in this store "
         "(the report lists what each needs).")
    echo(f"[4/4] writing the HTML report (probes report {results})")
    site = build_report(results, store=store_path)
    echo(f"report: {report.comparison}")
    echo(f"html report: {site.index}")
    echo(DISCLAIMER)
    echo(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return report.comparison


def _progress_bar(enabled: bool, unit: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(unit=unit, desc="draw")

    class _Bar:
        def update(self, done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)  # tqdm rate-limits the redraws

        def close(self) -> None:
            bar.close()

    return _Bar()

"""Shared fixtures: small synthetic JPEG chip datasets (no network, no real faces)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_chips(root: Path, layout: dict[str, dict[str, int]], *, size: int = 64, seed: int = 0) -> list[Path]:
    """Write ``root/<name>/<identity>/<k>.jpg`` for ``layout = {name: {identity: n_images}}``.

    Pass identity ``""`` to write ``root/<name>/<k>.jpg`` (no identity level). Pixels are smooth
    random gradients so that JPEG artefacts look like a photo's, not like noise.
    """
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for name, people in layout.items():
        for ident, k in people.items():
            folder = root / name / ident if ident else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(k):
                a, b, c = rng.uniform(0, 255, size=(3, 3))
                img = np.stack([a[i] * xx + b[i] * yy + c[i] * xx * yy for i in range(3)], axis=-1)
                img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
                p = folder / f"{j:03d}.jpg"
                Image.fromarray(img).save(p, quality=90)
                paths.append(p)
    return paths


@pytest.fixture
def chip_folder(tmp_path: Path) -> Path:
    """A folder dataset: 3 names, 2 identities each, 3 images per identity (18 chips of 64x64)."""
    root = tmp_path / "chips"
    write_chips(root, {"Anna": {"p1": 3, "p2": 3}, "Bob": {"p3": 3, "p4": 3}, "Zoë": {"p5": 3, "p6": 3}})
    return root

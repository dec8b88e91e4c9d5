"""Tiny randomly initialised models of each real architecture, saved in the family's native format.

``make_weights(name, directory) -> path`` builds the tiny model for registry name ``name`` and
saves it where ``--weights`` can load it through the same code path as real weights.
Builders live in ``tests/tiny/hf.py`` (transformers families) and ``tests/tiny/others.py``
(open_clip, timm, ArcFace ONNX, pixels); this module only maps names to them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# registry family -> module with ``make_weights(spec, directory) -> Path``
_BUILDERS = {
    "dinov2": "tests.tiny.hf",
    "dinov3": "tests.tiny.hf",
    "siglip": "tests.tiny.hf",
    "open_clip": "tests.tiny.others",
    "timm": "tests.tiny.others",
    "random_vit": "tests.tiny.others",
    "supcon": "tests.tiny.others",
    "arcface": "tests.tiny.others",
    "pixels": "tests.tiny.others",
}


def make_weights(name: str, directory: str | Path) -> Path | None:
    """Build and save the tiny model for ``name``; returns what to pass as ``weights``.

    Weight-free models (``pixels-32``, ``random-vit-tiny``) return ``None``.
    """
    from facestore.models import get_spec

    spec = get_spec(name)
    module = importlib.import_module(_BUILDERS[spec.family])
    return module.make_weights(spec, Path(directory))

"""Face thumbnails for the report, made from the original images through the store's paths.

A result folder records which test images it scored (``image_ids.npy``) and which store they
came from (``summary.json``'s ``store_path``). The store's index maps an image id to its path
under ``store.data_root``; :class:`Thumbnails` decodes that image once with the same decoder the
build used and writes a small JPEG into the report folder, named by a hash of the image id, so
that rebuilding the report reuses it. Anything not reachable (no store, no data root, a moved
image) becomes a note on the page, never a broken image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["StoreView", "Thumbnails", "open_store_view"]

THUMB_DIR = "thumbs"


@dataclass
class StoreView:
    """What the report needs of a store: the index, the data root, the splits. ``problem`` says
    why the store could not be used (then everything else is empty)."""

    path: str
    store: object | None = None
    problem: str | None = None
    _rows: dict = field(default_factory=dict)

    @property
    def data_root(self) -> Path | None:
        return None if self.store is None else self.store.data_root

    def image_paths(self, image_ids: np.ndarray) -> tuple[list[Path | None], str | None]:
        """The file of every image id (None where the index lacks it), or a reason for none."""
        if self.store is None:
            return [None] * len(image_ids), self.problem
        root = self.data_root
        if root is None:
            return [None] * len(image_ids), f"the store {self.path} records no data root, so its images cannot be found"
        index = self.store.index
        lookup = self._rows.get("lookup")
        if lookup is None:
            lookup = self._rows["lookup"] = dict(zip(index.image_ids.tolist(), index.paths.tolist()))
        return [root / lookup[i] if i in lookup else None for i in np.asarray(image_ids).astype(str).tolist()], None

    def trainval_counts(self, names: list[str], split: dict) -> tuple[np.ndarray | None, str]:
        """Images per task name in the split's train+val rows (what the final model was fit on).

        Returns ``(counts, note)``; counts is None when the store or the split cannot be read, and
        the note says why. The split is checked against the hash recorded in summary.json.
        """
        if self.store is None:
            return None, self.problem or "no store"
        from probes.splits import load_split

        name = split.get("name")
        if not name:
            return None, "summary.json records no split name"
        try:
            sp = load_split(self.store, name)
        except Exception as e:  # the split may be gone from a copied store: say so, do not fail
            return None, f"split {name} could not be read from the store ({e})"
        if split.get("hash") and sp.hash != split["hash"]:
            return None, f"split {name} in the store has hash {sp.hash[:10]}, not the {str(split['hash'])[:10]} of this result"
        row_names = self.store.index.row_names[sp.rows("trainval")]
        pos = {n: i for i, n in enumerate(names)}
        counts = np.zeros(len(names), dtype=np.int64)
        for n, c in zip(*np.unique(row_names, return_counts=True)):
            if n in pos:
                counts[pos[n]] = c
        return counts, f"counted from the store's split {name} (train + val rows)"


def open_store_view(path: str | Path | None) -> StoreView:
    """Open a store read-only for the report; never raises (the problem is recorded instead)."""
    if not path:
        return StoreView(path="", problem="summary.json records no store_path; pass --store")
    p = Path(path)
    if not p.exists():
        return StoreView(path=str(p), problem=f"the store {p} is not reachable from here; pass --store with its new path")
    try:
        from facestore import open_store

        return StoreView(path=str(p), store=open_store(p, mode="r"))
    except Exception as e:  # a report must render without the store: the reason goes on the page
        return StoreView(path=str(p), problem=f"the store {p} could not be opened ({type(e).__name__}: {e})")


class Thumbnails:
    """Small JPEG thumbnails written once under ``report_dir/thumbs``."""

    def __init__(self, report_dir: Path, *, size: int = 112, quality: int = 85) -> None:
        self.report_dir = Path(report_dir)
        self.size = size
        self.quality = quality
        self.written = 0
        self.reused = 0
        self.failed: list[tuple[str, str]] = []

    def relpath(self, image_id: str) -> str:
        digest = hashlib.sha1(str(image_id).encode("utf-8")).hexdigest()[:20]
        return f"{THUMB_DIR}/{digest}.jpg"

    def make(self, image_id: str, source: Path | None) -> str | None:
        """The thumbnail's path relative to the report folder, or None (the reason is in ``failed``)."""
        rel = self.relpath(image_id)
        out = self.report_dir / rel
        if out.is_file():
            self.reused += 1
            return rel
        if source is None:
            self.failed.append((image_id, "not in the store index"))
            return None
        from PIL import Image

        from facestore.errors import ImageDecodeError
        from facestore.images import decode_image

        try:
            pixels = decode_image(source)
        except (ImageDecodeError, OSError) as e:
            self.failed.append((image_id, f"{source}: {e}"))
            return None
        img = Image.fromarray(pixels)
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        img.save(tmp, format="JPEG", quality=self.quality)
        tmp.replace(out)
        self.written += 1
        return rel

    def make_many(self, image_ids: Iterable[str], sources: Iterable[Path | None]) -> list[str | None]:
        return [self.make(i, s) for i, s in zip(image_ids, sources)]

"""Name tasks: which names a probe must tell apart.

- ``all``: every name in the store (500 in the plan).
- ``top30`` (or ``topK`` for any K): the K names with the most images (the plan's 30-name task).
  Counted over the whole store index: the task is a property of the data, the same for every
  split and seed, so experiments on different splits stay comparable.
- a path to a text file: one name per line (blank lines and ``#`` comments ignored).
- ``min_images``: keep only names with at least that many images (applied before ``topK``).
- a resolved :class:`NameTask` passes through :func:`resolve_names` unchanged; one with
  ``within=(covariate, value)`` is a within-value task (``--within``, :mod:`probes.covariates`):
  its names are those of that value, and :func:`probes.data.load_xy` keeps only the images
  labelled with the value.

Names keep the store's order, so label indices are stable across tasks built the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.errors import NameTaskError

__all__ = ["NameTask", "resolve_names", "task_spec"]

_TOPK = re.compile(r"^top(\d+)$")


@dataclass(frozen=True)
class NameTask:
    """A resolved name task: its spec, its names (store order) and their image counts.

    ``within`` ``(covariate, value)`` restricts the task's images to those whose covariate has
    that value (a within-value task; ``base`` is then the spec it was split from).
    """

    spec: str
    names: tuple[str, ...]
    counts: tuple[int, ...]
    min_images: int = 0
    within: tuple[str, str] | None = None
    base: str | None = None

    def info(self) -> dict:
        """JSON-able description recorded in config.json and summary.json."""
        out = {"spec": self.spec, "n_names": len(self.names), "min_images": self.min_images}
        if self.within is not None:
            out.update({"within": {"covariate": self.within[0], "value": self.within[1]}, "base": self.base,
                        "names": list(self.names)})
        return out


def _looks_like_path(spec: str) -> bool:
    """A spec meant as a file: it has a directory part or a file suffix (``names.txt``, ``~/x``)."""
    p = Path(spec)
    return len(p.parts) > 1 or bool(p.suffix) or spec.startswith(("~", "."))


def task_spec(names) -> str:
    """The spec string of a names argument (a spec, or a resolved :class:`NameTask`)."""
    return names.spec if isinstance(names, NameTask) else str(names)


def resolve_names(store, spec: str | NameTask = "all", *, min_images: int = 0) -> NameTask:
    """Resolve ``spec`` (``all``, ``topK``, or a file of names) against a store's index; a
    :class:`NameTask` is returned as it is (its names must be in the store)."""
    if isinstance(spec, NameTask):
        unknown = sorted(set(spec.names) - set(store.index.names))
        if unknown:
            raise NameTaskError(f"names task {spec.spec!r} has names the store lacks, e.g. {unknown[:5]}")
        return spec
    index = store.index
    all_names = list(index.names)
    counts = np.bincount(np.asarray(index.labels, dtype=np.int64), minlength=len(all_names))
    if min_images < 0:
        raise NameTaskError(f"min_images must be >= 0, got {min_images}")
    keep = counts >= min_images
    spec = str(spec)
    m = _TOPK.match(spec)
    if spec == "all":
        chosen = np.nonzero(keep)[0]
    elif m:
        k = int(m.group(1))
        cand = np.nonzero(keep)[0]
        if k < 2 or k > cand.size:
            raise NameTaskError(
                f"names task {spec!r} asks for {k} names but {cand.size} have >= {min_images} images; "
                f"use top2..top{cand.size}"
            )
        # Stable sort: equal counts keep store order, so the task is deterministic.
        top = cand[np.argsort(-counts[cand], kind="stable")[:k]]
        chosen = np.sort(top)
    elif Path(spec).is_file():
        wanted = [
            line.strip()
            for line in Path(spec).read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        lookup = {n: i for i, n in enumerate(all_names)}
        unknown = [n for n in wanted if n not in lookup]
        if unknown:
            raise NameTaskError(
                f"{len(unknown)} name(s) in {spec} are not in the store, e.g. {unknown[:5]}; "
                f"the store has {len(all_names)} names such as {all_names[:5]}"
            )
        chosen = np.array(sorted({lookup[n] for n in wanted if keep[lookup[n]]}), dtype=np.int64)
    elif _looks_like_path(spec):
        raise NameTaskError(
            f"file not found: {spec} (the names task is 'all', 'top30' (any topK), or the path of an existing "
            "file with one name per line)"
        )
    else:
        raise NameTaskError(
            f"unknown names task {spec!r}: use 'all', 'top30' (any topK), or the path of a file "
            "with one name per line"
        )
    if chosen.size < 2:
        raise NameTaskError(
            f"names task {spec!r} with min_images={min_images} leaves {chosen.size} name(s); a probe needs at least 2"
        )
    return NameTask(
        spec=spec,
        names=tuple(all_names[i] for i in chosen),
        counts=tuple(int(counts[i]) for i in chosen),
        min_images=int(min_images),
    )

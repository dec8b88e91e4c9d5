"""``load_xy``: the rows of one split subset and name task, as arrays a probe can fit.

>>> from facestore import open_store                                     # doctest: +SKIP
>>> from probes import load_xy, make_split
>>> store = open_store("faces.zarr", mode="a")
>>> split = make_split(store, by="identity", seed=0)
>>> tr = load_xy(store, "dinov2-base", split=split, subset="trainval", names="top30")
>>> tr.X.shape, tr.y[:5], tr.names[:3], tr.groups[:2]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probes.errors import NotEnoughDataError
from probes.names import NameTask, resolve_names
from probes.splits import Split, load_split

__all__ = ["XY", "load_xy"]


@dataclass(frozen=True, eq=False)
class XY:
    """Features and labels of one subset.

    ``X`` (n, D) float32; ``y`` (n,) int64 indices into ``names``; ``image_ids`` (n,);
    ``groups`` (n,) identities (None when the split is image level); ``rows`` (n,) store rows.
    ``incomplete``: why the model's rows were not all usable when loaded with
    ``allow_incomplete=True`` (None when they were); results record it.
    """

    X: np.ndarray
    y: np.ndarray
    names: tuple[str, ...]
    image_ids: np.ndarray
    groups: np.ndarray | None
    rows: np.ndarray
    subset: str
    model: str
    view: str
    task: NameTask
    incomplete: str | None = None

    def __len__(self) -> int:
        return int(self.y.size)

    @property
    def y_names(self) -> np.ndarray:
        """The name of every row."""
        return np.asarray(self.names)[self.y]


def _groups_for(store, split: Split | None):
    if split is None:
        return store.index.identities
    if split.identity_source is None:
        return None
    if split.identity_source == "identity":
        return store.index.identities
    return store.load_identities(split.identity_source)[0]


def load_xy(
    store,
    model: str,
    *,
    view: str | None = None,
    split: Split | str | None = None,
    subset: str = "train",
    names: str | NameTask = "all",
    min_images: int = 0,
    allow_incomplete: bool = False,
) -> XY:
    """Embeddings and name labels of ``subset`` of ``split`` for a name task.

    Rows whose embedding was recorded as failed for ``model`` (decode failures, no face) are
    dropped. ``split`` is a :class:`~probes.splits.Split`, a saved split's name, or None for
    every row (``subset`` must then be ``"all"``). ``names`` is a task spec (``all``, ``top30``,
    a file) or a resolved :class:`~probes.names.NameTask`; ``min_images`` applies to a spec. A
    task with ``within=(covariate, value)`` keeps only the images whose covariate has that value.

    Partial or damaged data is refused, never fitted on: a row of the task still pending (a
    build or import running, interrupted, or not yet run on appended images) or a model group
    whose last build or import did not finish raises
    :class:`~facestore.errors.IncompleteModelError` naming the command that finishes it;
    ``allow_incomplete=True`` proceeds with the rows written so far and records why in
    ``XY.incomplete``. Vectors that are not finite raise
    :class:`~facestore.errors.NonFiniteError` (always); damaged chunks raise
    :class:`~facestore.errors.StoreCorruptError` from the store's checked reads.
    """
    from facestore.errors import NonFiniteError

    task = names if isinstance(names, NameTask) else resolve_names(store, names, min_images=min_images)
    if isinstance(split, str):
        split = load_split(store, split)
    index = store.index
    if split is None:
        if subset != "all":
            raise NotEnoughDataError(f"subset {subset!r} needs a split; pass split= or subset='all'")
        rows = np.arange(store.n)
    else:
        rows = split.rows(subset)
    name_pos = {n: i for i, n in enumerate(index.names)}
    to_task = np.full(len(index.names), -1, np.int64)
    to_task[[name_pos[n] for n in task.names]] = np.arange(len(task.names))
    rows = rows[to_task[np.asarray(index.labels, dtype=np.int64)[rows]] >= 0]
    if task.within is not None:  # a within-value task: only the images labelled with that value
        from probes.covariates import covariate_values

        covariate, value = task.within
        rows = rows[covariate_values(store, covariate, rows) == value]
    view = view or store.default_view(model)
    status = store.status(model)
    incomplete = store.incomplete_reason(model, rows=rows, status=status)
    if incomplete is not None and not allow_incomplete:
        store.require_complete(model, rows=rows, status=status)  # raises, with the command that fixes it
    X, got = store.load(model, view, ids=index.image_ids[rows])
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        bad = got[~finite]
        raise NonFiniteError(
            f"{len(bad)} rows of model {model!r} view {view!r} hold NaN or inf although marked ok (e.g. "
            f"{', '.join(bad[:3].tolist())}): the store is damaged or was edited. Run `facestore verify {store.path} "
            f"--repair`, then {store.fix_command(model)}"
        )
    if got.size != rows.size:
        # store.load drops rows not written ok and keeps the order of the rest.
        rows = rows[np.isin(index.image_ids[rows], got)]
    if rows.size == 0:
        raise NotEnoughDataError(
            f"no {subset} rows of model {model!r} for names task {task.spec!r}; check the split and "
            "that the model's embeddings were built (facestore info)"
        )
    groups = _groups_for(store, split)
    return XY(
        X=np.asarray(X, dtype=np.float32),
        y=to_task[np.asarray(index.labels, dtype=np.int64)[rows]],
        names=task.names,
        image_ids=index.image_ids[rows],
        groups=None if groups is None else np.asarray(groups)[rows],
        rows=rows,
        subset=subset,
        model=model,
        view=view,
        task=task,
        incomplete=incomplete,
    )

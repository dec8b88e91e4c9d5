"""Identity-disjoint, name-stratified train/val/test splits, saved in the store with a hash.

A person in both train and test is memorised, not recognised (on LFW a random image-level split
tripled top-1 accuracy). So a split assigns whole identities: for every name its people are put
in a random order and laid end to end by image count; each person goes to the split in whose
share (train ``1 - val - test``, then ``val``, then ``test``) the middle of their images falls.
Every name is therefore split close to the asked fractions as far as whole people allow, and no
identity is ever in two splits.

Without identities the same procedure runs with each image as its own group (an image-level
stratified split) and the split carries a warning that identity leakage is possible; the
warning is copied into every ``summary.json``.

The split is saved in the store (``store.save_split``) under a name ending with its content
hash (sha256 over image ids and assignment); every result records the hash. The test split is
locked by protocol: selection uses train and val only, the chosen model is refit on
train+val and evaluated on test once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from probes.errors import ProbeConfigError, SplitError, SplitNotFoundError

__all__ = [
    "SUBSETS",
    "Split",
    "check_identity_disjoint",
    "get_split",
    "load_split",
    "make_split",
    "split_groups",
]

TRAIN, VAL, TEST, OUT = 0, 1, 2, -1
SUBSETS = {"train": (TRAIN,), "val": (VAL,), "test": (TEST,), "trainval": (TRAIN, VAL), "all": (TRAIN, VAL, TEST)}
LEAKAGE_WARNING = (
    "image-level split: the store has no identities, so the same person can be in train and "
    "test and accuracy can be inflated by identity leakage"
)
# `--by image` asked for on a store that knows who is who: say so, and name the honest split.
CHOSEN_IMAGE_LEVEL_WARNING = (
    "image-level split (--by image) although the store has identities: the same person can be in train and "
    "test, so accuracy can be inflated by identity leakage; --by identity is the honest split (each person in "
    "one of train, validation and test)"
)


@dataclass(frozen=True, eq=False)
class Split:
    """A split of the store's rows: ``assignment`` (N,) int8, 0 train, 1 val, 2 test, -1 out."""

    name: str
    assignment: np.ndarray
    by: str
    identity_source: str | None
    seed: int
    val: float
    test: float
    hash: str
    warnings: tuple[str, ...] = ()

    def rows(self, subset: str) -> np.ndarray:
        """Store row positions of ``subset`` (train, val, test, trainval, all)."""
        if subset not in SUBSETS:
            raise ProbeConfigError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        return np.nonzero(np.isin(self.assignment, SUBSETS[subset]))[0]

    def counts(self) -> dict:
        """Images per subset."""
        return {k: int((self.assignment == v).sum()) for k, v in (("train", TRAIN), ("val", VAL), ("test", TEST))}

    def info(self) -> dict:
        """What every result records about its split (summary.json's ``split``)."""
        return {
            "name": self.name,
            "hash": self.hash,
            "by": self.by,
            "identity_source": self.identity_source,
            "seed": self.seed,
            "val": self.val,
            "test": self.test,
            "counts": self.counts(),
            "warnings": list(self.warnings),
        }


def split_groups(store, by: str) -> tuple[np.ndarray | None, str | None, tuple[str, ...]]:
    """Groups (N,) for ``by``, their source name, and warnings; None groups = image level."""
    if by == "image":
        return None, None, (LEAKAGE_WARNING if store.index.identities is None else CHOSEN_IMAGE_LEVEL_WARNING,)
    if by == "identity":
        if store.index.identities is None:
            return None, None, (LEAKAGE_WARNING,)
        return np.asarray(store.index.identities), "identity", ()
    if by.startswith("pseudo-identity:"):
        source = by.split(":", 1)[1]
        try:
            groups, _ = store.load_identities(source)
        except KeyError as e:
            raise SplitError(
                f"{e.args[0]}; derive pseudo-identities first (`probes identities --store S --model arcface-r50 --threshold T`) or use --by identity"
            ) from None
        return np.asarray(groups), source, ("split by pseudo-identities (clusters), not true identities",)
    raise ProbeConfigError(f"by must be 'identity', 'image' or 'pseudo-identity:<name>', got {by!r}")


def _assign(labels: np.ndarray, codes: np.ndarray, *, val: float, test: float, seed: int) -> np.ndarray:
    """Whole groups to train/val/test, stratified by name (see the module docstring)."""
    n_groups = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=n_groups)
    # A group's name is its most frequent one (identities carry one name; clusters may not).
    pair = codes.astype(np.int64) * (int(labels.max()) + 1) + labels
    uniq, cnt = np.unique(pair, return_counts=True)
    g_of, l_of = uniq // (int(labels.max()) + 1), uniq % (int(labels.max()) + 1)
    order = np.lexsort((-cnt, g_of))
    first = np.ones(order.size, bool)
    first[1:] = g_of[order][1:] != g_of[order][:-1]
    group_label = np.empty(n_groups, np.int64)
    group_label[g_of[order][first]] = l_of[order][first]
    rng = np.random.default_rng(seed)
    key = rng.random(n_groups)
    by_name = np.lexsort((key, group_label))
    lab_sorted = group_label[by_name]
    size_sorted = sizes[by_name].astype(np.float64)
    cum = np.cumsum(size_sorted)
    starts = np.r_[0, np.nonzero(np.diff(lab_sorted))[0] + 1]
    name_start = np.repeat(cum[starts] - size_sorted[starts], np.diff(np.r_[starts, lab_sorted.size]))
    name_total = np.repeat(
        np.add.reduceat(size_sorted, starts), np.diff(np.r_[starts, lab_sorted.size])
    )
    mid = (cum - size_sorted / 2 - name_start) / name_total
    cut_train, cut_val = 1 - val - test, 1 - test
    where = np.where(mid < cut_train, TRAIN, np.where(mid < cut_val, VAL, TEST)).astype(np.int8)
    group_split = np.empty(n_groups, np.int8)
    group_split[by_name] = where
    return group_split[codes]


def _hash(image_ids: np.ndarray, assignment: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\n".join(np.asarray(image_ids).astype(str).tolist()).encode())
    h.update(np.ascontiguousarray(assignment, dtype=np.int8).tobytes())
    return h.hexdigest()


def check_identity_disjoint(assignment: np.ndarray, groups) -> None:
    """Raise :class:`SplitError` if any identity has images in two of train/val/test."""
    if groups is None:
        return
    assignment = np.asarray(assignment)
    inside = assignment >= 0
    codes = np.unique(np.asarray(groups)[inside], return_inverse=True)[1]
    a = assignment[inside].astype(np.int64)
    lo = np.full(codes.max() + 1 if codes.size else 0, 3)
    hi = np.full_like(lo, -1)
    np.minimum.at(lo, codes, a)
    np.maximum.at(hi, codes, a)
    crossing = np.nonzero(lo != hi)[0]
    if crossing.size:
        names = np.unique(np.asarray(groups)[inside])[crossing[:5]]
        raise SplitError(
            f"{crossing.size} identities have images in more than one split, e.g. {names.tolist()}; "
            "make the split with make_split(by='identity')"
        )


def make_split(
    store,
    *,
    by: str = "identity",
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    save: bool = True,
) -> Split:
    """Make (and by default save in the store) a group-disjoint stratified split.

    ``by``: ``identity`` (the dataset's identities; image level with a leakage warning when the
    store has none), ``image``, or ``pseudo-identity:<name>`` (identities saved with
    ``store.save_identities``). The same arguments on the same store give the same split and
    hash; saving an existing split is a no-op.
    """
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ProbeConfigError(f"val and test must be in (0, 1) with val + test < 1, got val={val}, test={test}")
    n = store.n
    if n == 0:
        raise SplitError(f"{store.path} has no images; run facestore build (or sync) first")
    labels = np.asarray(store.index.labels, dtype=np.int64)
    groups, source, warns = split_groups(store, by)
    assignment = np.full(n, OUT, np.int8)
    if groups is None:
        inside = np.ones(n, bool)
        codes = np.arange(n)
    else:
        inside = groups != ""  # rows appended after a derived identity set was made
        codes = np.unique(groups[inside], return_inverse=True)[1]
    assignment[inside] = _assign(labels[inside], codes, val=val, test=test, seed=seed)
    check_identity_disjoint(assignment, groups)
    digest = _hash(store.index.image_ids, assignment)
    kind = "image" if groups is None else ("identity" if source == "identity" else f"pseudo-{source}")
    name = f"{kind}-v{val:g}-t{test:g}-s{seed}-{digest[:10]}"
    split = Split(
        name=name, assignment=assignment, by=by, identity_source=source, seed=int(seed),
        val=float(val), test=float(test), hash=digest, warnings=tuple(warns),
    )
    if save and not _saved_intact(store, name, assignment):
        store.save_split(name, assignment, {**split.info(), "counts": split.counts()})
    return split


def _saved_intact(store, name: str, assignment: np.ndarray) -> bool:
    """Whether ``name`` is saved completely, with exactly ``assignment`` (else it must be rewritten)."""
    from facestore.errors import StoreError

    if name not in store.splits:
        return False
    try:
        saved, attrs = store.load_split(name)
    except (StoreError, KeyError, ValueError):
        return False  # half-saved (no completion marker), or damaged: rewrite it
    return "hash" in attrs and np.array_equal(saved, assignment)


def load_split(store, name: str) -> Split:
    """Read a saved split back, re-checking its hash and its identity disjointness.

    A split saved without its attributes (an interrupted save, a hand edit) or whose values no
    longer match their recorded hash is refused, never used: make it again. The identity
    check runs on every load (against the identities the split was made from, or the store's
    own identities when it records none and was not made at image level on purpose).
    """
    from facestore.errors import StoreCorruptError

    if name not in store.splits:
        raise SplitNotFoundError(
            f"no split {name!r} in {store.path}; have: {', '.join(store.splits) or 'none'} "
            "(make one with `probes split --store ...`)"
        )
    try:
        assignment, attrs = store.load_split(name)
    except StoreCorruptError as e:
        raise SplitError(f"{e}. `probes split` (or make_split) with the same arguments rewrites it") from None
    if "hash" not in attrs or "by" not in attrs:
        raise SplitError(
            f"split {name!r} in {store.path} has no attributes (by, hash): it was not saved completely and cannot "
            "be checked; make it again (`probes split` with the same arguments rewrites it)"
        )
    n_rows = int(attrs.get("n_rows", len(assignment)))
    if _hash(store.index.image_ids[:n_rows], assignment[:n_rows]) != attrs["hash"]:
        raise SplitError(
            f"split {name!r}: its values do not match the hash recorded when it was made (edited or damaged); "
            "make it again (`probes split` with the same arguments rewrites it)"
        )
    digest = _hash(store.index.image_ids, assignment)
    warns = list(attrs.get("warnings", []))
    if digest != attrs.get("hash"):
        # Rows appended to the store after the split was made are outside it (-1).
        warns.append(f"store rows changed since split {name} was made; new rows are outside it")
    source = attrs.get("identity_source")
    if source is not None:
        groups = store.index.identities if source == "identity" else store.load_identities(source)[0]
        check_identity_disjoint(assignment, groups)
    elif attrs["by"] != "image" and store.index.identities is not None:
        check_identity_disjoint(assignment, store.index.identities)
    return Split(
        name=name, assignment=assignment, by=attrs.get("by", "identity"), identity_source=source,
        seed=int(attrs.get("seed", 0)), val=float(attrs.get("val", 0.1)), test=float(attrs.get("test", 0.2)),
        hash=digest, warnings=tuple(warns),
    )


def get_split(
    store, *, split: str | None = None, by: str = "identity", seed: int = 0, val: float = 0.1, test: float = 0.2
) -> Split:
    """The named split, or the split made from ``(by, seed, val, test)`` (saved when new)."""
    if split is not None:
        return load_split(store, split)
    return make_split(store, by=by, val=val, test=test, seed=seed, save=True)

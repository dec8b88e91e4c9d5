"""Planted data where names carry a gender attribute, with or without a name signal beyond it.

Each person has a gender (``f`` / ``m``) and a first name of that gender; the face is

    x = gender_signal * g_mean[gender] + name_signal * name_mean[name] + identity offset + noise

projected to ``dim`` features. With ``name_signal=0`` the face says the gender and nothing
else about the name: the people of one gender are exchangeable between that gender's names,
so a names probe beats 1/C only through gender (about 1 / names-per-gender), the
within-gender permutation null is the exact null, and a within-gender task sits at chance.
With ``name_signal > 0`` each name also has its own direction: the probe beats the
within-gender null and the within-gender tasks beat chance.

Names are real first names (so the lexicon covariate, ``facestore.name_gender``, places
them); the split is identity-disjoint and stratified by name (``people_split`` people per name
in train / validation / test).

``ShrunkLDA`` is a small reference probe with the factory interface of ``probes.controls``
(shrinkage LDA, shrinkage chosen on validation, refit on train + validation): closed form,
fast and deterministic, so permutation tests fit the test budget.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEMALE_NAMES = ("Mary", "Anna", "Elizabeth", "Sarah", "Emma", "Laura", "Julia", "Helen")
MALE_NAMES = ("John", "William", "James", "David", "Peter", "Thomas", "Robert", "Henry")


@dataclass(frozen=True, eq=False)
class PlantedCovariates:
    """Aligned per-image arrays: features, names, gender, identities, split codes (0/1/2), ids."""

    X: np.ndarray
    names: np.ndarray
    gender: np.ndarray
    groups: np.ndarray
    subset: np.ndarray
    image_ids: np.ndarray
    name_gender: dict

    def reorder(self, order) -> PlantedCovariates:
        order = np.asarray(order)
        return PlantedCovariates(X=self.X[order], names=self.names[order], gender=self.gender[order],
                                 groups=self.groups[order], subset=self.subset[order],
                                 image_ids=self.image_ids[order], name_gender=self.name_gender)


def planted_gender_arrays(*, names_per_gender: int = 4, people_split: tuple[int, int, int] = (6, 2, 6),
                          images_per_person: int = 4, dim: int = 8, gender_signal: float = 3.0,
                          name_signal: float = 0.0, identity_scale: float = 0.5, noise: float = 1.0,
                          seed: int = 0) -> PlantedCovariates:
    """Planted arrays (see the module docstring); ``people_split`` people per name in train/val/test."""
    if not 1 <= names_per_gender <= len(FEMALE_NAMES):
        raise ValueError(f"names_per_gender must be 1..{len(FEMALE_NAMES)}, got {names_per_gender}")
    rng = np.random.default_rng(seed)
    names = list(FEMALE_NAMES[:names_per_gender]) + list(MALE_NAMES[:names_per_gender])
    gender_of = {n: ("f" if n in FEMALE_NAMES else "m") for n in names}
    g_dir = rng.normal(size=dim)
    g_dir /= np.linalg.norm(g_dir)
    g_mean = {"f": g_dir, "m": -g_dir}
    name_mean = {n: rng.normal(size=dim) for n in names}
    per_name = int(sum(people_split))
    rows = []
    for n in names:
        for k in range(per_name):
            code = 0 if k < people_split[0] else (1 if k < people_split[0] + people_split[1] else 2)
            offset = rng.normal(size=dim) * identity_scale
            for j in range(images_per_person):
                rows.append((n, f"{n}/p{k:02d}", code, offset, j))
    latent = np.stack([
        gender_signal * g_mean[gender_of[n]] + name_signal * name_mean[n] + offset + rng.normal(size=dim) * noise
        for n, _, _, offset, _ in rows
    ])
    proj = np.linalg.qr(rng.normal(size=(dim, dim)))[0]  # a rotation: the signal is not axis-aligned
    return PlantedCovariates(
        X=(latent @ proj).astype(np.float32),
        names=np.array([r[0] for r in rows]),
        gender=np.array([gender_of[r[0]] for r in rows]),
        groups=np.array([r[1] for r in rows]),
        subset=np.array([r[2] for r in rows], dtype=np.int64),
        image_ids=np.array([f"{r[1]}/img{r[4]:02d}.jpg" for r in rows]),
        name_gender=gender_of,
    )


def planted_gender_store(path, *, model: str = "toy", **kwargs):
    """A store (index from a manifest CSV with a ``gender`` column) holding the planted features.

    Returns ``(store, data)`` with ``data`` reordered to the store's index order. The manifest
    (``path.parent / "manifest.csv"``) carries ``gender`` so that a store that reads manifest
    covariates gets it as a covariate; the images themselves do not exist (vectors are imported).
    """
    from facestore.dataset import scan_dataset
    from facestore.store import create_store
    from facestore.store.transfer import import_embeddings

    data = planted_gender_arrays(**kwargs)
    path = Path(path)
    manifest = path.parent / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "name", "identity", "image_id", "gender"])
        for i in range(data.names.size):
            w.writerow([data.image_ids[i], data.names[i], data.groups[i], data.image_ids[i], data.gender[i]])
    store = create_store(path)
    store.sync_index(scan_dataset(manifest), workers=1)
    pos = {s: i for i, s in enumerate(data.image_ids.tolist())}
    data = data.reorder([pos[s] for s in store.index.image_ids.tolist()])
    import_embeddings(store, model, embeddings=data.X, ids=data.image_ids, view="embedding",
                      chunk_rows=64, source="planted gender covariate")
    return store, data


class ShrunkLDA:
    """Reference probe for tests: linear discriminant analysis with covariance shrinkage chosen on
    validation (balanced accuracy), then refit on train + validation. Closed form in numpy, so a
    permutation null of dozens of refits costs milliseconds.

    Same factory interface as ``probes.linear.LinearSweep``: ``ShrunkLDA(classes=...)``,
    ``fit(X, y, X_val=, y_val=)``, ``predict_proba`` with columns in ``classes`` order (a class
    absent from the fit rows gets probability 0).
    """

    def __init__(self, *, classes, shrinkages=(0.1, 0.5, 0.9)):
        self.classes = np.asarray(classes)
        self.shrinkages = shrinkages

    def _fit_one(self, X, y_idx, shrinkage):
        c = self.classes.size
        present = np.bincount(y_idx, minlength=c) > 0
        means = np.zeros((c, X.shape[1]))
        for k in np.flatnonzero(present):
            means[k] = X[y_idx == k].mean(axis=0)
        resid = X - means[y_idx]
        cov = resid.T @ resid / max(X.shape[0] - int(present.sum()), 1)
        cov = (1 - shrinkage) * cov + shrinkage * np.eye(X.shape[1]) * np.trace(cov) / X.shape[1]
        W = np.linalg.solve(cov, means.T)  # (D, C)
        b = -0.5 * np.einsum("dc,cd->c", W, means)
        b[~present] = -np.inf
        return W, b

    @staticmethod
    def _scores(head, X):
        W, b = head
        return X @ W + b

    def fit(self, X, y, *, X_val, y_val):
        from probes.metrics import balanced_accuracy

        lookup = {c: i for i, c in enumerate(self.classes.tolist())}
        yi = np.array([lookup[s] for s in np.asarray(y).tolist()], dtype=np.int64)
        yv = np.array([lookup[s] for s in np.asarray(y_val).tolist()], dtype=np.int64)
        X, X_val = np.asarray(X, np.float64), np.asarray(X_val, np.float64)
        scores = [balanced_accuracy(yv, np.argmax(self._scores(self._fit_one(X, yi, a), X_val), axis=1))
                  for a in self.shrinkages]
        self.best_shrinkage_ = self.shrinkages[int(np.argmax(scores))]
        self.head_ = self._fit_one(np.concatenate([X, X_val]), np.concatenate([yi, yv]), self.best_shrinkage_)
        self.classes_ = self.classes
        return self

    def predict_proba(self, X):
        z = self._scores(self.head_, np.asarray(X, np.float64))
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def lda_factory(classes):
    """``classes -> ShrunkLDA``: the reference factory for ``probes.controls`` tests."""
    return ShrunkLDA(classes=classes)

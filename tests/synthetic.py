"""Synthetic stores with a planted name signal, for probe tests (no images, no models).

Each name has a mean direction; each person (identity) adds a fixed offset; each image adds
noise. ``shuffle_names=True`` reassigns names across *identities* after the features are drawn,
keeping the number of people per name: the null where no face carries its name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facestore.dataset import DatasetIndex
from facestore.store import create_store
from facestore.store.transfer import import_embeddings


def zipf_people(n_names: int, *, top: int = 12, exponent: float = 0.8, minimum: int = 3) -> list[int]:
    """People per name, Zipf-like so that one name dominates."""
    return [max(minimum, int(round(top / (rank ** exponent)))) for rank in range(1, n_names + 1)]


def planted_store(path, *, n_names: int = 8, people_per_name: list[int] | None = None, images_per_person: int = 4,
                  dim: int = 32, signal: float = 1.0, identity_scale: float = 1.0, noise: float = 1.0,
                  seed: int = 0, identities: bool = True, shuffle_names: bool = False,
                  models: tuple[str, ...] = ("toy",), chunk_rows: int = 64):
    """Create a store at ``path`` whose models carry a planted name signal; returns it opened read/write."""
    rng = np.random.default_rng(seed)
    people = people_per_name or zipf_people(n_names)
    names = [f"name{c:02d}" for c in range(n_names)]
    person_name = np.repeat(np.arange(n_names), people)
    n_people = len(person_name)
    latent_dim = dim
    name_means = rng.normal(size=(n_names, latent_dim)) * signal
    person_offsets = rng.normal(size=(n_people, latent_dim)) * identity_scale
    img_person = np.repeat(np.arange(n_people), images_per_person)
    latent = name_means[person_name[img_person]] + person_offsets[img_person]
    latent += rng.normal(size=latent.shape) * noise
    if shuffle_names:
        person_name = rng.permutation(person_name)
    row_names = np.asarray([names[c] for c in person_name[img_person]])
    person_ids = np.asarray([f"{row_names[i]}/p{img_person[i]:04d}" for i in range(len(img_person))])
    image_ids = np.asarray([f"{person_ids[i]}/img{i:05d}.jpg" for i in range(len(img_person))])
    order = np.argsort(image_ids)
    n = len(image_ids)
    ds = DatasetIndex(
        root=Path(path).parent, image_ids=image_ids[order], paths=image_ids[order], row_names=row_names[order],
        identities=person_ids[order] if identities else None, sizes=np.full(n, -1, np.int64),
        mtimes_ns=np.full(n, -1, np.int64), source="manifest",
    )
    store = create_store(path)
    store.sync_index(ds, workers=1)
    for k, model in enumerate(models):
        mrng = np.random.default_rng(seed + 1000 + k)
        proj = mrng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
        X = latent[order] @ proj + mrng.normal(size=(n, dim)) * 0.1
        import_embeddings(store, model, embeddings=X.astype(np.float32), ids=image_ids[order], view="embedding",
                          chunk_rows=chunk_rows, source=f"planted(seed={seed}, signal={signal})")
    return store

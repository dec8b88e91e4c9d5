"""facestore: extract embeddings once per model into a versioned Zarr store, reuse them everywhere.

>>> import facestore
>>> store = facestore.open_store("faces.zarr")          # doctest: +SKIP
>>> X, ids = store.load("dinov2-base", view="cls")      # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_store", "open_store"]


def __getattr__(name: str):
    # Lazy so that `import facestore` (and `facestore --help`) stays instant.
    if name in ("open_store", "create_store"):
        from facestore.store import store as _store

        return getattr(_store, name)
    raise AttributeError(f"module 'facestore' has no attribute {name!r}")

"""The versioned Zarr store: index, model groups, text embeddings, splits and identities."""

from facestore.store.store import Store, StoreIndex, SyncReport, TextEmbeddings, create_store, open_store

__all__ = ["Store", "StoreIndex", "SyncReport", "TextEmbeddings", "create_store", "open_store"]

"""Model registry and family loaders (heavy libraries are imported lazily)."""

from facestore.models.registry import FAMILY_MODULES, get_spec, list_models, load_encoder, register
from facestore.models.spec import ModelSpec, Preprocessing, View

__all__ = ["FAMILY_MODULES", "ModelSpec", "Preprocessing", "View", "get_spec", "list_models", "load_encoder", "register"]

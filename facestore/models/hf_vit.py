"""DINOv2 and DINOv3 through transformers (families ``dinov2`` and ``dinov3``).

Views: ``cls`` (``last_hidden_state[:, 0]``, after the final layernorm) and ``patch_mean`` (mean
of the patch tokens; DINOv3's register tokens, which sit between CLS and the patches, are
excluded). Preprocessing is read from the checkpoint's own image processor.

The helpers here (safetensors-only loading with clear
offline/gated errors, weights identity) are shared with :mod:`facestore.models.siglip`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from facestore.errors import WeightsNotFoundError
from facestore.models.base import Encoder, library_versions, sha256_of_files
from facestore.models.hub import hub_call
from facestore.models.weights import check_readable, readable_files, require_files, require_folder
from facestore.models.preprocess import Normalizer, PixelPreprocessor, from_hf_processor, with_source
from facestore.models.runtime import autocast_dtype, resolve_device, resolve_precision
from facestore.models.spec import ModelSpec, Preprocessing

log = logging.getLogger(__name__)

# transformers ``config.model_type`` each family expects in a weights directory.
_MODEL_TYPES = {"dinov2": "dinov2", "dinov3": "dinov3_vit"}

# DINOv3ViTImageProcessor rescales to float *before* resizing; the others resize the uint8 image.
# So DINOv3's pixels cross from the workers as float32 (0..255, unrounded): a uint8 resize would
# differ from its reference processor by up to 1/255 at edges (tests/test_preprocess_hf.py).
_RESIZE_DTYPE = {"dinov2": "uint8", "dinov3": "float32"}

# Files whose bytes define a local checkpoint (weights, configs, tokenizer); hashed for identity.
_IDENTITY_PATTERNS = ("*.safetensors", "*.json", "*.model")

#: What a transformers ``--weights`` folder holds (named in every error about one).
HF_FOLDER = ("a folder written by save_pretrained: config.json, model.safetensors (or sharded "
             "model-*.safetensors + model.safetensors.index.json) and preprocessor_config.json")


def check_weights_folder(spec: ModelSpec, weights: str | Path) -> Path:
    """A transformers weights folder that has a config and safetensors weights, all readable.

    Checked before transformers reads it: an empty folder, a folder of pickled ``.bin`` files
    and an unreadable ``model.safetensors`` each get a message naming what was expected.
    """
    folder = require_folder(spec.name, weights, expected=HF_FOLDER)
    require_files(spec.name, folder, [("config.json",), ("*.safetensors",)], expected=HF_FOLDER)
    check_readable(spec.name, readable_files(folder, _IDENTITY_PATTERNS))
    return folder


# ---------------------------------------------------------------- device and precision


# ---------------------------------------------------------------- weights


def gated_message(repo_id: str) -> str:
    """What to do when the hub refuses a gated checkpoint."""
    return (
        f"{repo_id} is a gated model on the Hugging Face hub and this machine has no access to it. "
        f"Accept the licence on https://huggingface.co/{repo_id}, log in with `hf auth login` "
        "(or set HF_TOKEN), then retry; or download it elsewhere and pass --weights DIR "
        "(a directory written by save_pretrained)."
    )


def _is_gated(error: BaseException) -> bool:
    from huggingface_hub.errors import GatedRepoError

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, GatedRepoError):
            return True
        text = str(seen)
        if "gated repo" in text or "401 Client Error" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def from_pretrained(loader: Callable[..., Any], spec: ModelSpec, weights: str | Path | None, **kwargs: Any) -> Any:
    """Call a transformers ``from_pretrained`` on ``weights`` (local dir) or ``spec.source`` (hub).

    Never runs remote code; hub loads honour ``spec.revision``. Missing weights raise
    ``WeightsNotFoundError`` naming the hub id and ``--weights``; gated repos say how to get access.
    """
    kwargs.setdefault("trust_remote_code", False)
    if weights is not None:
        target: str = str(require_folder(spec.name, weights, expected=HF_FOLDER))
    else:
        target = spec.source
        if spec.revision:
            kwargs.setdefault("revision", spec.revision)
    try:
        if weights is None:
            # Offline (HF_HUB_OFFLINE, or no route to the hub): from the cache or one clear error, at once.
            return hub_call(lambda: loader(target, **kwargs), model=spec.name, repo=spec.source, expected=HF_FOLDER,
                            passthrough=_is_gated)
        return loader(target, **kwargs)
    except WeightsNotFoundError:
        raise
    except OSError as e:
        if weights is None and _is_gated(e):
            raise WeightsNotFoundError(gated_message(spec.source)) from e
        if weights is not None:
            raise WeightsNotFoundError(
                f"could not load {spec.name} from --weights {str(weights)!r}: {e}. Expected {HF_FOLDER}; facestore "
                "loads safetensors only (never pickled .bin files): re-save the checkpoint with "
                "save_pretrained(..., safe_serialization=True)"
            ) from e
        raise WeightsNotFoundError(
            f"could not load {spec.source!r} for {spec.name}: no usable copy in the Hugging Face cache and the hub "
            f"was not reachable ({type(e).__name__}). Connect once to download it (unset HF_HUB_OFFLINE), or "
            f"pass --weights DIR with a local copy saved by save_pretrained."
        ) from e


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit hash of the cached snapshot that was loaded (cache layout ``snapshots/<hash>/``)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision or "main")
    if isinstance(found, str):
        return Path(found).parent.name
    return None


def weights_identity(spec: ModelSpec, weights: str | Path | None) -> dict[str, Any]:
    """``{"kind": "local", "path_name", "sha256"}`` or ``{"kind": "hub", "id", "revision"}``."""
    if weights is not None:
        root = Path(weights)
        files = sorted({p for pattern in _IDENTITY_PATTERNS for p in root.glob(pattern) if p.is_file()})
        return {"kind": "local", "path_name": root.name, "sha256": sha256_of_files(files),
                "files": [p.name for p in files]}
    return {"kind": "hub", "id": spec.source, "revision": _hub_commit(spec.source, spec.revision) or spec.revision}


def load_preprocessing(spec: ModelSpec, weights: str | Path | None) -> Preprocessing:
    """Preprocessing from the checkpoint's image processor (``source="hf-processor"``).

    A local weights dir without ``preprocessor_config.json`` (or a processor's
    ``processor_config.json``) falls back to the registry's values, recorded with ``source="registry"``.
    """
    names = ("preprocessor_config.json", "processor_config.json")
    if weights is not None and not any((Path(weights) / n).is_file() for n in names):
        log.warning("%s: no image processor config in %s; using the registry's preprocessing", spec.name, weights)
        return with_source(spec.preprocessing, "registry")
    from transformers import AutoImageProcessor

    processor = from_pretrained(AutoImageProcessor.from_pretrained, spec, weights)
    return from_hf_processor(processor)


def check_model_type(config: Any, spec: ModelSpec, expected: str, weights: str | Path | None) -> None:
    """Refuse a checkpoint of another architecture (e.g. a SigLIP dir passed as DINOv2 weights)."""
    got = getattr(config, "model_type", None)
    if got != expected:
        where = f"--weights {str(weights)!r}" if weights is not None else spec.source
        raise WeightsNotFoundError(
            f"{where} holds a {got!r} checkpoint but {spec.name} (family {spec.family}) needs a {expected!r} one; "
            "pass the directory of the right model"
        )


def resolved_record(
    spec: ModelSpec,
    *,
    preprocessing: Preprocessing,
    view_dims: dict[str, int],
    weights: dict[str, Any],
    precision: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``spec.to_dict()`` updated with what was resolved at load time (device-independent)."""
    d = spec.to_dict()
    d["preprocessing"] = preprocessing.to_dict()
    # The dims the loaded model really produces (a tiny test model, a fine-tune): the store is
    # sized from these, so they win over the registry's nominal dims, which stay on record.
    d["views"] = dict(view_dims)
    if view_dims != spec.view_dims:
        d["registry_views"] = spec.view_dims
    d["weights"] = weights
    d["precision"] = precision
    d["versions"] = library_versions("torch", "torchvision", "transformers", "safetensors", "facestore")
    if extra:
        d.update(extra)
    return d


# ---------------------------------------------------------------- the encoder


class HFViTEncoder(Encoder):
    """A frozen DINOv2/DINOv3 backbone producing ``cls`` and ``patch_mean``."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        model: Any,
        preprocessing: Preprocessing,
        weights: dict[str, Any],
        device: Any,
        precision: str,
    ) -> None:
        self.spec = spec
        self.model = model
        self.preprocessing = preprocessing
        self.weights = weights
        self.device = device
        self.precision = precision
        self.num_register_tokens = int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.hidden_size = int(model.config.hidden_size)
        self._preprocessor = PixelPreprocessor(preprocessing, resize_dtype=_RESIZE_DTYPE[spec.family])
        self._normalize = Normalizer(preprocessing)

    def preprocessor(self) -> PixelPreprocessor:
        """uint8 RGB ``(H, W, 3)`` -> pixels ``(3, 224, 224)``: uint8 (DINOv2) or float32 (DINOv3); picklable."""
        return self._preprocessor

    def input_device(self) -> str:
        return str(self.device)

    def model_input(self, batch: Any) -> Any:
        """Pixels -> normalised float32 ``pixel_values`` on the model's device."""
        return self._normalize(batch.to(self.device, non_blocking=True))

    def encode(self, batch: Any) -> dict[str, Any]:
        """``{"cls", "patch_mean"}``: float32 ``(B, hidden_size)`` CPU tensors."""
        import torch

        x = self.model_input(batch)
        dtype = autocast_dtype(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            hidden = self.model(pixel_values=x).last_hidden_state
        hidden = hidden.float()
        # Token layout: [CLS, registers (DINOv3 only), patches].
        patches = hidden[:, 1 + self.num_register_tokens :]
        return {"cls": hidden[:, 0].cpu(), "patch_mean": patches.mean(dim=1).cpu()}

    def resolved_spec(self) -> dict[str, Any]:
        """The registry spec + resolved preprocessing, real dims, weights identity, precision, versions."""
        return resolved_record(
            self.spec,
            preprocessing=self.preprocessing,
            view_dims={v.name: self.hidden_size for v in self.spec.views},
            weights=self.weights,
            precision=self.precision,
            extra={
                # The stages (pixels in the workers, normalisation on the device) compute the bits of
                # ImagePreprocessor; the record keeps its name so stored specs still compare equal.
                "preprocessor": {"class": "ImagePreprocessor", "resize_dtype": self._preprocessor.resize_dtype},
                "num_register_tokens": self.num_register_tokens,
            },
        )

    def runtime(self) -> dict[str, Any]:
        """Device, compute precision and autocast dtype actually used."""
        dtype = autocast_dtype(self.precision)
        return {"device": str(self.device), "precision": self.precision,
                "dtype": str(dtype or "torch.float32"), "model_class": type(self.model).__name__}


def load(spec: ModelSpec, *, weights: str | None, device: str, precision: str, options: dict[str, Any]) -> HFViTEncoder:
    """Load a DINOv2/DINOv3 encoder from ``weights`` (a save_pretrained dir) or the hub cache."""
    from transformers import AutoConfig, AutoModel

    if spec.family not in _MODEL_TYPES:
        raise ValueError(f"facestore.models.hf_vit loads families {sorted(_MODEL_TYPES)}, not {spec.family!r}")
    if options:
        raise ValueError(f"{spec.name} takes no options, got {sorted(options)}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if weights is not None:
        check_weights_folder(spec, weights)
    config = from_pretrained(AutoConfig.from_pretrained, spec, weights)
    check_model_type(config, spec, _MODEL_TYPES[spec.family], weights)
    model = from_pretrained(AutoModel.from_pretrained, spec, weights, config=config, use_safetensors=True)
    model.requires_grad_(False).eval().to(dev)
    preprocessing = load_preprocessing(spec, weights)
    encoder = HFViTEncoder(spec, model=model, preprocessing=preprocessing, weights=weights_identity(spec, weights),
                           device=dev, precision=prec)
    log.info("%s on %s, precision %s", spec.name, dev, prec)
    return encoder


__all__ = [
    "HFViTEncoder",
    "load",
    "resolve_device",
    "resolve_precision",
    "from_pretrained",
    "weights_identity",
    "gated_message",
]

"""SigLIP through transformers (family ``siglip``): image views and the text tower for zero-shot.

Views, from one forward of the vision tower:

- ``image``: ``get_image_features(...).pooler_output``, the attention-pool (MAP) head output,
  i.e. the joint image-text space that zero-shot scores use. Stored unnormalised.
- ``pooled``: the mean of the post-layernorm patch tokens (SigLIP has no CLS token), before the
  attention-pool head.

Text: ``encode_text`` tokenises with SigLIP's sentencepiece tokenizer padded to the model's
maximum length and feeds ``input_ids`` only, without an attention mask, as the model was trained
(big_vision): the pooled text state is the last position, which is a pad token for short prompts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from facestore.errors import WeightsNotFoundError
from facestore.models.base import Encoder
from facestore.models.hf_vit import (
    autocast_dtype,
    check_model_type,
    check_weights_folder,
    from_pretrained,
    load_preprocessing,
    resolve_device,
    resolve_precision,
    resolved_record,
    weights_identity,
)
from facestore.models.preprocess import Normalizer, PixelPreprocessor
from facestore.models.spec import ModelSpec, Preprocessing

log = logging.getLogger(__name__)

# Prompts per text forward: bounds memory for 500 names x many templates.
TEXT_BATCH = 256


class SiglipEncoder(Encoder):
    """A frozen SigLIP model: ``image`` and ``pooled`` views, and joint-space text embeddings."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        model: Any,
        preprocessing: Preprocessing,
        weights: dict[str, Any],
        weights_path: str | None,
        device: Any,
        precision: str,
    ) -> None:
        self.spec = spec
        self.model = model
        self.preprocessing = preprocessing
        self.weights = weights
        self.weights_path = weights_path
        self.device = device
        self.precision = precision
        self._preprocessor = PixelPreprocessor(preprocessing, resize_dtype="uint8")
        self._normalize = Normalizer(preprocessing)
        self._tokenizer: Any = None
        self.text_max_length = int(model.config.text_config.max_position_embeddings)

    def preprocessor(self) -> PixelPreprocessor:
        """uint8 RGB ``(H, W, 3)`` -> uint8 pixels ``(3, 224, 224)`` (picklable)."""
        return self._preprocessor

    def input_device(self) -> str:
        return str(self.device)

    def model_input(self, batch: Any) -> Any:
        """Pixels -> normalised float32 ``pixel_values`` on the model's device."""
        return self._normalize(batch.to(self.device, non_blocking=True))

    def _autocast(self) -> Any:
        import torch

        dtype = autocast_dtype(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def encode(self, batch: Any) -> dict[str, Any]:
        """``{"image", "pooled"}``: float32 ``(B, D)`` CPU tensors from one vision forward."""
        import torch

        x = self.model_input(batch)
        with torch.inference_mode(), self._autocast():
            out = self.model.get_image_features(pixel_values=x)
        return {
            "image": out.pooler_output.float().cpu(),
            "pooled": out.last_hidden_state.float().mean(dim=1).cpu(),
        }

    def tokenizer(self) -> Any:
        """The checkpoint's SigLIP tokenizer (loaded on first use: image-only builds never need it)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = from_pretrained(AutoTokenizer.from_pretrained, self.spec, self.weights_path)
            except WeightsNotFoundError as e:
                raise WeightsNotFoundError(
                    f"{self.spec.name}: no SigLIP tokenizer (spiece.model + tokenizer_config.json) next to the "
                    f"weights; text embeddings need it. Save it with the model (AutoProcessor.save_pretrained). {e}"
                ) from e
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> Any:
        """``input_ids`` ``(T, max_length)`` padded to the model's maximum length, as in training."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_text takes a list of strings (one prompt each)")
        tok = self.tokenizer()
        return tok(list(texts), padding="max_length", truncation=True, max_length=self.text_max_length,
                   return_tensors="pt").input_ids

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Joint-space text embeddings, float32 ``(T, D)``, unnormalised (``get_text_features().pooler_output``)."""
        import torch

        if not texts:
            raise ValueError("encode_text needs at least one prompt")
        ids = self.tokenize(texts)
        parts = []
        for start in range(0, ids.shape[0], TEXT_BATCH):
            chunk = ids[start : start + TEXT_BATCH].to(self.device)
            # No attention mask: SigLIP was trained on max-length padded ids without one.
            with torch.inference_mode(), self._autocast():
                out = self.model.get_text_features(input_ids=chunk)
            parts.append(out.pooler_output.float().cpu())
        return torch.cat(parts).numpy()

    def text_logit_params(self) -> dict[str, float | None]:
        """``{"logit_scale": exp(logit_scale), "logit_bias": logit_bias}``: sigmoid(scale * cos + bias)."""
        return {
            "logit_scale": float(self.model.logit_scale.detach().float().exp().item()),
            "logit_bias": float(self.model.logit_bias.detach().float().item()),
        }

    def resolved_spec(self) -> dict[str, Any]:
        """The registry spec + resolved preprocessing, real dims, weights identity, precision, versions."""
        vision = self.model.config.vision_config
        return resolved_record(
            self.spec,
            preprocessing=self.preprocessing,
            view_dims={"image": int(vision.hidden_size), "pooled": int(vision.hidden_size)},
            weights=self.weights,
            precision=self.precision,
            extra={
                # The stages (pixels in the workers, normalisation on the device) compute the bits of
                # ImagePreprocessor; the record keeps its name so stored specs still compare equal.
                "preprocessor": {"class": "ImagePreprocessor", "resize_dtype": self._preprocessor.resize_dtype},
                "text_tokenization": {"padding": "max_length", "max_length": self.text_max_length,
                                      "attention_mask": False},
            },
        )

    def runtime(self) -> dict[str, Any]:
        """Device, compute precision and autocast dtype actually used."""
        dtype = autocast_dtype(self.precision)
        return {"device": str(self.device), "precision": self.precision,
                "dtype": str(dtype or "torch.float32"), "model_class": type(self.model).__name__}


def load(spec: ModelSpec, *, weights: str | None, device: str, precision: str, options: dict[str, Any]) -> SiglipEncoder:
    """Load SigLIP from ``weights`` (a save_pretrained dir) or the hub cache."""
    from transformers import AutoConfig, AutoModel

    if spec.family != "siglip":
        raise ValueError(f"facestore.models.siglip loads family 'siglip', not {spec.family!r}")
    if options:
        raise ValueError(f"{spec.name} takes no options, got {sorted(options)}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if weights is not None:
        check_weights_folder(spec, weights)
    config = from_pretrained(AutoConfig.from_pretrained, spec, weights)
    check_model_type(config, spec, "siglip", weights)
    model = from_pretrained(AutoModel.from_pretrained, spec, weights, config=config, use_safetensors=True)
    model.requires_grad_(False).eval().to(dev)
    encoder = SiglipEncoder(
        spec, model=model, preprocessing=load_preprocessing(spec, weights), weights=weights_identity(spec, weights),
        weights_path=str(Path(weights)) if weights is not None else None, device=dev, precision=prec,
    )
    log.info("%s on %s, precision %s", spec.name, dev, prec)
    return encoder

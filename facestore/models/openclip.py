"""open_clip family: CLIP ViT-B-32 (``clip-vit-b-32``), image and text towers.

``spec.source`` is ``"<open_clip model name>:<pretrained tag>"`` (``ViT-B-32:openai``, as in the
plan's ``create_model_and_transforms('ViT-B-32', pretrained='openai')``). The OpenAI weights were
trained with QuickGELU; open_clip's plain ``ViT-B-32`` config uses nn.GELU and only warns about
the mismatch, so we build the model with the activation the tag was trained with
(``force_quick_gelu`` from the tag's pretrained config) and record it.

Weights (``--weights``): an open_clip ``local-dir`` folder (``open_clip_config.json`` with
``model_cfg`` and ``preprocess_cfg``, plus ``open_clip_model.safetensors``), which is also the
layout of the Hugging Face repos open_clip downloads (``timm/vit_base_patch32_clip_224.openai``).

Views: ``image`` = ``model.encode_image`` (projected joint space, unnormalised); ``pooled`` =
the pooled CLS token after ``ln_post``, before the projection (``image == pooled @ visual.proj``).
Both come from one forward pass. Preprocessing is read from ``model.visual.preprocess_cfg``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from facestore.errors import WeightsNotFoundError
from facestore.models.base import Encoder, library_versions, sha256_of_files
from facestore.models.hub import hub_call
from facestore.models.weights import check_readable, require_files, require_folder
from facestore.models.spec import ModelSpec, Preprocessing
from facestore.models.runtime import autocast, resolve_device, resolve_precision
from facestore.models.timm_family import TorchEncoder

log = logging.getLogger(__name__)

LOCAL_CONFIG = "open_clip_config.json"
LOCAL_FOLDER = (f"an open_clip folder with {LOCAL_CONFIG} (model_cfg + preprocess_cfg) and "
                "open_clip_model.safetensors, e.g. a download of the Hugging Face repo timm/vit_base_patch32_clip_224.openai")

# open_clip PreprocessCfg.resize_mode -> our Preprocessing.resize
_RESIZE_MODES = {"shortest": "shortest_edge", "squash": "squash"}


def preprocessing_from_open_clip(cfg: dict[str, Any]) -> Preprocessing:
    """The eval :class:`Preprocessing` of an open_clip ``preprocess_cfg`` (``model.visual.preprocess_cfg``).

    open_clip's eval transform for ``resize_mode="shortest"`` is ``Resize(size)`` on the short
    side then ``CenterCrop(size)``; ``"squash"`` resizes to ``(size, size)``.
    """
    size = cfg["size"]
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mode = cfg.get("resize_mode", "shortest")
    if mode not in _RESIZE_MODES:
        raise ValueError(f"open_clip resize_mode {mode!r} is not supported; supported: {sorted(_RESIZE_MODES)}")
    if cfg.get("mode", "RGB") != "RGB":
        raise ValueError(f"open_clip preprocess mode {cfg.get('mode')!r} is not supported; expected 'RGB'")
    if mode == "shortest" and h != w:
        raise ValueError(f"open_clip shortest-edge resize with a non-square size {size} is not supported")
    common = dict(size=(h, w), interpolation=cfg.get("interpolation", "bicubic"),
                  mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
                  source="open_clip-preprocess-cfg")
    if mode == "shortest":
        return Preprocessing(resize="shortest_edge", resize_to=h, crop=(h, w), **common)
    return Preprocessing(resize="squash", **common)


def split_source(source: str) -> tuple[str, str | None]:
    """``"ViT-B-32:openai"`` -> ``("ViT-B-32", "openai")``."""
    name, _, tag = source.partition(":")
    return name, (tag or None)


class OpenClipEncoder(TorchEncoder):
    """An open_clip CLIP model: ``image`` and ``pooled`` views, plus the text tower."""

    def __init__(self, spec: ModelSpec, *, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.model = model
        self.tokenizer = tokenizer

    def _forward(self, x: Any) -> dict[str, Any]:
        visual = self.model.visual
        # VisionTransformer.forward, split so the pre-projection pooled token is kept.
        tokens = visual.transformer(visual._embeds(x))
        pooled, _ = visual._pool(tokens)
        image = pooled @ visual.proj if visual.proj is not None else pooled
        return {"image": image, "pooled": pooled}

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Unnormalised joint-space text embeddings ``float32 (T, D)``."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, got one str; wrap it in a list")
        tokens = self.tokenizer(list(texts)).to(self._device)
        with torch.inference_mode(), autocast(self._device, self._precision):
            out = self.model.encode_text(tokens)
        return out.float().cpu().numpy()

    def text_logit_params(self) -> dict[str, float | None]:
        """``{"logit_scale": exp(logit_scale), "logit_bias": bias or None}`` (None for CLIP)."""
        bias = getattr(self.model, "logit_bias", None)
        return {
            "logit_scale": float(self.model.logit_scale.detach().exp().item()),
            "logit_bias": None if bias is None else float(bias.detach().reshape(-1)[0].item()),
        }


def _check_visual(spec: ModelSpec, model: Any) -> None:
    visual = model.visual
    if not all(hasattr(visual, a) for a in ("_embeds", "_pool", "transformer", "proj")):
        raise ValueError(
            f"{spec.name}: open_clip visual tower {type(visual).__name__} is not a VisionTransformer; "
            "the `pooled` view needs its CLS pooling before the projection"
        )


def _load_local(spec: ModelSpec, weights: str | Path) -> tuple[Any, dict[str, Any], str]:
    import open_clip

    path = require_folder(spec.name, weights, expected=LOCAL_FOLDER)
    cfg_file = path / LOCAL_CONFIG
    # Without safetensors open_clip would silently initialise randomly (or unpickle a .bin).
    require_files(spec.name, path, [(LOCAL_CONFIG,), ("*.safetensors",)], expected=LOCAL_FOLDER)
    st = sorted(path.glob("*.safetensors"))
    preferred = [p for p in st if p.name == "open_clip_model.safetensors"]
    check_readable(spec.name, [cfg_file, *st])
    if len(st) > 1 and not preferred:
        raise WeightsNotFoundError(f"{spec.name}: several safetensors files in {str(path)!r}: {[p.name for p in st]}; "
                                   "keep one, named open_clip_model.safetensors")
    # open_clip prefers open_clip_model.safetensors, then other names; it would also pick a
    # pickle first if the safetensors were absent, which the check above rules out.
    model = open_clip.create_model(f"local-dir:{path}", device="cpu")
    model_name = f"local-dir:{path}"
    chosen = preferred[0] if preferred else st[0]
    identity = {"kind": "local", "path_name": path.name, "sha256": sha256_of_files([cfg_file, chosen])}
    return model, identity, model_name


def _load_pretrained(spec: ModelSpec) -> tuple[Any, dict[str, Any], str]:
    import open_clip

    name, tag = split_source(spec.source)
    tag_cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    if tag and not tag_cfg:
        raise ValueError(f"{spec.name}: open_clip has no pretrained tag {tag!r} for {name!r}; "
                         f"known: {open_clip.list_pretrained_tags_by_model(name)}")
    try:
        model = hub_call(lambda: open_clip.create_model(name, pretrained=tag, device="cpu",
                                                        force_quick_gelu=bool(tag_cfg.get("quick_gelu", False))),
                         model=spec.name, repo=str(tag_cfg.get("hf_hub") or spec.source).rstrip("/"),
                         expected=LOCAL_FOLDER)
    except WeightsNotFoundError:
        raise
    except (RuntimeError, OSError) as e:  # open_clip wraps hub/cache failures in RuntimeError
        raise WeightsNotFoundError(
            f"{spec.name}: could not load open_clip weights {name!r} pretrained={tag!r} (hub "
            f"{tag_cfg.get('hf_hub') or tag_cfg.get('url')}) from the cache or the network: {e}. Download them once "
            f"online, or pass --weights DIR with an open_clip folder ({LOCAL_CONFIG} + open_clip_model.safetensors)."
        ) from e
    identity = {"kind": "pretrained", "library": "open_clip", "model": name, "tag": tag,
                "hf_hub": tag_cfg.get("hf_hub") or None, "quick_gelu": bool(tag_cfg.get("quick_gelu", False))}
    return model, identity, name


def load(spec: ModelSpec, *, weights: Any, device: str, precision: str, options: dict[str, Any]) -> Encoder:
    """Load an open_clip CLIP model (see the module docstring)."""
    import open_clip

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    log.info("%s: device %s, precision %s", spec.name, dev, prec)
    model, identity, model_name = _load_local(spec, weights) if weights is not None else _load_pretrained(spec)
    _check_visual(spec, model)
    preprocessing = preprocessing_from_open_clip(dict(model.visual.preprocess_cfg))
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval().requires_grad_(False).to(dev)
    visual = model.visual
    pooled_dim = int(visual.proj.shape[0]) if visual.proj is not None else int(visual.output_dim)
    return OpenClipEncoder(
        spec, model=model, tokenizer=tokenizer, device=dev, precision=prec, preprocessing=preprocessing,
        weights=identity, view_dims={"image": int(visual.output_dim), "pooled": pooled_dim},
        versions=library_versions("torch", "open_clip_torch", "facestore"),
        extra={"text_dim": int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None
               else int(visual.output_dim),
               "context_length": int(getattr(model, "context_length", 77))},
    )


def write_local_dir(directory: str | Path, *, model: Any, model_cfg: dict[str, Any],
                    preprocess_cfg: dict[str, Any]) -> Path:
    """Save an open_clip model as a ``local-dir`` folder (config json + safetensors) loadable as --weights."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCAL_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                     indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return directory

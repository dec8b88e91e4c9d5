"""The model zoo: a table of frozen :class:`ModelSpec` records.

Entries are data; family modules are imported lazily by :func:`load_encoder`, so listing models
(and ``facestore --help``) never imports torch, transformers, open_clip or insightface.
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any

from facestore.errors import FacestoreError, ModelConfigError, ModelNotFoundError
from facestore.models.spec import (
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ModelSpec,
    Preprocessing,
    View,
)

# family -> module implementing ``load(spec, *, weights, device, precision, options) -> Encoder``
FAMILY_MODULES: dict[str, str] = {
    "dinov2": "facestore.models.hf_vit",
    "dinov3": "facestore.models.hf_vit",
    "siglip": "facestore.models.siglip",
    "open_clip": "facestore.models.openclip",
    "timm": "facestore.models.timm_family",
    "random_vit": "facestore.models.timm_family",
    "supcon": "facestore.models.timm_family",
    "arcface": "facestore.models.arcface",
    "pixels": "facestore.models.pixels",
}

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec to the registry. Registering a name twice raises ``ValueError``."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered; pick another name")
    if spec.family not in FAMILY_MODULES:
        raise ValueError(f"model {spec.name!r}: unknown family {spec.family!r}; known: {sorted(FAMILY_MODULES)}")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; unknown names fail with the list of available ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = fnmatch.filter(_REGISTRY, f"*{name.split('-')[0]}*") if name else []
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(
            f"model {name!r} not found.{hint} Available: {', '.join(sorted(_REGISTRY))}. "
            "`facestore models` lists them with dims, views and licences."
        ) from None


def list_models(pattern: str = "*") -> list[str]:
    """Registry names matching a shell-style wildcard, e.g. ``list_models('dino*')``."""
    return sorted(fnmatch.filter(_REGISTRY, pattern))


def load_encoder(
    name: str | ModelSpec,
    *,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    options: dict[str, Any] | None = None,
):
    """Load a frozen encoder through its family module.

    ``weights`` is a local directory or file (the real weights' native format); without it the
    family loads ``spec.source`` through the usual cache (Hugging Face hub cache, open_clip/timm
    caches). ``device`` is ``auto|cpu|cuda|cuda:N``; ``precision`` is ``auto|fp32|bf16|fp16``
    (auto: bf16 autocast on CUDA and on CPUs that support it). ``options`` are family-specific
    (e.g. ``{"arcface_align": "center"}``).
    """
    spec = name if isinstance(name, ModelSpec) else get_spec(name)
    module = importlib.import_module(FAMILY_MODULES[spec.family])
    try:
        return module.load(spec, weights=weights, device=device, precision=precision, options=dict(options or {}))
    except FacestoreError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        # The family libraries report a checkpoint they cannot use as whatever they hit first (timm: a
        # KeyError 'architecture' for a transformers config.json); our own checks raise ValueError.
        # Either way it is the weights or options given, so say which model and what to check,
        # in one line instead of a traceback.
        raise ModelConfigError(_load_failure_message(spec, weights, e)) from e


def _load_failure_message(spec: ModelSpec, weights: str | None, error: BaseException) -> str:
    detail = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    detail = " ".join(detail.split())
    if len(detail) > 400:  # torch lists every missing key of a state dict: thousands of characters
        detail = detail[:400] + " ..."
    if _raised_by_facestore(error):  # our own checks already say what to change
        return detail if detail.startswith(spec.name) else f"{spec.name}: {detail}"
    where = f"--weights {weights!r}" if weights is not None else f"the cached weights of {spec.source!r}"
    return (f"{spec.name}: could not load {where} ({type(error).__name__}: {detail}). Check that it is a "
            f"checkpoint of {spec.name} ({spec.family} family, source {spec.source}); `facestore models "
            f"{spec.name}` shows what it should be")


def _raised_by_facestore(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is facestore's own code (not a library's)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("facestore.")


def _dinov2(size: str, dim: int) -> ModelSpec:
    return ModelSpec(
        name=f"dinov2-{size}",
        family="dinov2",
        source=f"facebook/dinov2-{size}",
        views=(
            View("cls", dim, "CLS token of the last layer (after layernorm), as in the plan"),
            View("patch_mean", dim, "mean of the last layer's patch tokens (after layernorm)"),
        ),
        preprocessing=Preprocessing(size=(224, 224), resize="shortest_edge", resize_to=256, crop=(224, 224),
                                    interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
        licence="Apache-2.0",
        description=f"DINOv2 ViT-{size[0].upper()}/14 self-supervised (LVD-142M), probed at 224 px",
        pooling="cls token / mean of patch tokens of last_hidden_state",
    )


def _dinov3(arch: str, dim: int) -> ModelSpec:
    return ModelSpec(
        name=f"dinov3-{arch}",
        family="dinov3",
        source=f"facebook/dinov3-{arch}-pretrain-lvd1689m",
        views=(
            View("cls", dim, "CLS token of the last layer"),
            View("patch_mean", dim, "mean of the last layer's patch tokens, register tokens excluded"),
        ),
        preprocessing=Preprocessing(size=(224, 224), resize="squash", interpolation="bilinear",
                                    mean=IMAGENET_MEAN, std=IMAGENET_STD),
        licence="DINOv3 License (gated: accept it on the Hugging Face model page)",
        description=f"DINOv3 {arch.upper()} self-supervised (LVD-1689M)",
        gated=True,
        pooling="cls token / mean of patch tokens (registers excluded) of last_hidden_state",
    )


for _size, _dim in (("small", 384), ("base", 768), ("large", 1024), ("giant", 1536)):
    register(_dinov2(_size, _dim))
for _arch, _dim in (("vits16", 384), ("vitb16", 768), ("vitl16", 1024)):
    register(_dinov3(_arch, _dim))

register(ModelSpec(
    name="siglip-base",
    family="siglip",
    source="google/siglip-base-patch16-224",
    views=(
        View("image", 768, "joint image-text space embedding (attention-pool head output); zero-shot uses it"),
        View("pooled", 768, "mean of the last layer's patch tokens, before the attention-pool head"),
    ),
    preprocessing=Preprocessing(size=(224, 224), resize="squash", interpolation="bicubic",
                                mean=HALF_MEAN, std=HALF_STD),
    licence="Apache-2.0",
    description="SigLIP ViT-B/16 224 (WebLI), sigmoid-loss image-text model",
    text=True,
    pooling="image: pooler_output (MAP head) / pooled: mean of post-layernorm patch tokens",
))

register(ModelSpec(
    name="clip-vit-b-32",
    family="open_clip",
    source="ViT-B-32:openai",
    views=(
        View("image", 512, "projected image embedding in the joint space (encode_image); zero-shot uses it"),
        View("pooled", 768, "pooled CLS token before the projection"),
    ),
    preprocessing=Preprocessing(size=(224, 224), resize="shortest_edge", resize_to=224, crop=(224, 224),
                                interpolation="bicubic", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
    licence="MIT (OpenAI CLIP weights)",
    description="OpenAI CLIP ViT-B/32 through open_clip, as in the plan",
    text=True,
    pooling="image: encode_image / pooled: ln_post(CLS) before proj",
))

register(ModelSpec(
    name="resnet50",
    family="timm",
    source="resnet50.a1_in1k",
    views=(View("pooled", 2048, "global average pooled features before the classifier"),),
    # timm's data config: crop_pct 0.95 -> short side floor(224 / 0.95) = 235, centre crop 224.
    preprocessing=Preprocessing(size=(224, 224), resize="shortest_edge", resize_to=235, crop=(224, 224),
                                interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    licence="Apache-2.0 (timm)",
    description="ResNet-50 (timm a1 recipe, ImageNet-1k supervised)",
    pooling="global average pool (forward_head pre_logits)",
))

register(ModelSpec(
    name="arcface-r50",
    family="arcface",
    source="insightface:buffalo_l/w600k_r50.onnx",
    views=(View("embedding", 512, "raw (unnormalised) ArcFace embedding; its norm tracks face quality"),),
    preprocessing=Preprocessing(size=(112, 112), resize="aligned", interpolation="bilinear",
                                # insightface takes BGR images and swaps them to RGB in blobFromImages,
                                # so the network's input tensor is RGB: (x - 127.5) / 127.5.
                                mean=(127.5 / 255,) * 3, std=(127.5 / 255,) * 3, channel_order="RGB"),
    licence="insightface model zoo: non-commercial research use only",
    description="ArcFace ResNet-50 (WebFace600K) from insightface's buffalo_l pack, via onnxruntime",
    pooling="network output (no pooling)",
    options=(("arcface_align", "detect"), ("no_face", "record")),
))

register(ModelSpec(
    name="pixels-32",
    family="pixels",
    source="none (weight-free)",
    views=(View("pixels", 32 * 32 * 3, "the chip resized to 32x32 RGB, values in [0, 1], flattened HWC"),),
    preprocessing=Preprocessing(size=(32, 32), resize="squash", interpolation="area",
                                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    licence="none (no weights)",
    description="weight-free baseline: how much name signal plain colour and layout carry",
    pooling="none",
))

register(ModelSpec(
    name="random-vit-tiny",
    family="random_vit",
    source="timm:vit_tiny_patch16_224 (random init, seed 0)",
    views=(View("cls", 192, "CLS token of a randomly initialised ViT-Ti/16"),),
    # timm's data config for vit_tiny_patch16_224: crop_pct 0.9 -> short side 248, centre crop 224.
    preprocessing=Preprocessing(size=(224, 224), resize="shortest_edge", resize_to=248, crop=(224, 224),
                                interpolation="bicubic", mean=HALF_MEAN, std=HALF_STD),
    licence="none (no weights)",
    description="random-features baseline: an untrained ViT-Ti/16 with a fixed seed (also the demo's encoder)",
    pooling="cls token",
    options=(("seed", 0),),
))

register(ModelSpec(
    name="supcon-resnet50",
    family="supcon",
    source="local checkpoint from `probes supcon --train-encoder --checkpoint DIR` (pass --weights DIR)",
    views=(
        View("embedding", 2048, "SupCon-trained ResNet-50 encoder features (pooled), used for linear probes"),
        View("projection", 128, "projector output (the space the SupCon loss was trained in)"),
    ),
    preprocessing=Preprocessing(size=(224, 224), resize="shortest_edge", resize_to=235, crop=(224, 224),
                                interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    licence="inherits the training data's terms",
    description="ResNet-50 + projector trained with supervised contrastive loss on the train split (experiment 3.4)",
    pooling="global average pool / projector MLP",
))

"""timm families: ResNet-50 (``timm``), the random ViT baseline (``random_vit``), SupCon (``supcon``).

Preprocessing is read from timm's own data config, ``timm.data.resolve_data_config({}, model=m)``:
``input_size``, ``interpolation``, ``mean``/``std`` and ``crop_pct``; timm's eval transform
resizes the short side to ``floor(size / crop_pct)`` and centre-crops ``size``, which is what
the resolved :class:`~facestore.models.spec.Preprocessing` records (``source="timm-data-config"``).

Weights (``--weights``) for ``timm``:

- a timm ``local-dir`` folder (``config.json`` + ``model.safetensors``, as written by
  ``timm.models.save_for_hf(..., safe_serialization=True)``); the architecture and its arguments
  come from ``config.json``;
- a ``*.safetensors`` file, or a folder holding exactly one, loaded into ``spec.source``'s
  architecture through ``pretrained_cfg_overlay=dict(file=...)``.

Without weights, ``spec.source`` (``resnet50.a1_in1k``) loads through timm's hub cache.

SupCon checkpoint format (``facestore-supcon`` version 1), a directory holding:

- ``supcon_config.json``::

    {"format": "facestore-supcon", "version": 1,
     "timm_model": "resnet50",            # timm architecture of the encoder
     "model_args": {...},                  # timm constructor arguments (num_classes, layers, ...)
     "proj_layers": [2048, 2048, 128],     # Linear dims; ReLU between consecutive Linears
     "preprocessing": {...},               # Preprocessing.to_dict() the encoder was trained with
     "extra": {...}}                       # free-form training record (epochs, loss, split, ...)

- ``model.safetensors`` with keys ``encoder.<timm state dict key>`` and
  ``projector.<Sequential state dict key>`` (``projector.0.weight``, ``projector.2.bias``, ...).

:func:`save_supcon_checkpoint` writes it (called by the trainer), :func:`load_supcon_checkpoint`
reads it back; nothing is ever unpickled.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facestore.errors import ModelConfigError, WeightsNotFoundError
from facestore.models.base import Encoder, library_versions, sha256_of_files
from facestore.models.hub import hub_call
from facestore.models.weights import check_readable, describe_folder, pickled_hint, require_files, require_folder
from facestore.models.runtime import autocast, resolve_device, resolve_precision
from facestore.models.spec import ModelSpec, Preprocessing

log = logging.getLogger(__name__)

SUPCON_FORMAT = "facestore-supcon"
SUPCON_VERSION = 1
SUPCON_CONFIG = "supcon_config.json"
SUPCON_WEIGHTS = "model.safetensors"


# --------------------------------------------------------------------------------------------
# Device and precision (shared by the torch families: timm, open_clip)
# --------------------------------------------------------------------------------------------


def state_dict_sha256(module: Any) -> str:
    """sha256 over a module's state dict (sorted keys, dtype, shape, bytes): identifies an init."""
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TorchEncoder(Encoder):
    """An :class:`Encoder` over a frozen torch module; subclasses say how a batch becomes views."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: Any,
        precision: str,
        preprocessing: Preprocessing,
        weights: dict[str, Any],
        view_dims: dict[str, int],
        versions: dict[str, str],
        extra: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        self.spec = spec
        self._device = device
        self._precision = precision
        self._preprocessing = preprocessing
        self._weights = weights
        self._view_dims = view_dims
        self._versions = versions
        self._extra = dict(extra or {})
        self._channels_last = channels_last
        from facestore.models.preprocess import Normalizer, PixelPreprocessor

        # timm's and open_clip's eval transforms end in torchvision's CenterCrop, whose offset is
        # round((size - crop) / 2), not transformers' floor: ResNet-50 a1_in1k resizes 512 -> 235
        # and crops 224, where the two differ by one pixel (enough to move every pixel).
        self._pixels = PixelPreprocessor(preprocessing, crop_rounding="round")
        self._normalize = Normalizer(preprocessing)

    def preprocessor(self) -> Callable[[np.ndarray], Any]:
        """uint8 pixels with torchvision's centre-crop rounding (timm, open_clip); picklable."""
        return self._pixels

    def input_device(self) -> str:
        return str(self._device)

    def model_input(self, batch: Any) -> Any:
        """Pixels -> normalised float32 input on the model's device (channels_last where the model is)."""
        import torch

        x = self._normalize(batch.to(self._device, non_blocking=True))
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @abc.abstractmethod
    def _forward(self, x: Any) -> dict[str, Any]:
        """Model forward for one device batch: ``{view: (B, D) tensor}``."""

    def encode(self, batch: Any) -> dict[str, Any]:
        """Forward a ``(B, 3, H, W)`` batch under inference mode + autocast; float32 CPU views."""
        import torch

        x = self.model_input(batch)
        with torch.inference_mode(), autocast(self._device, self._precision):
            out = self._forward(x)
        return {name: out[name].float().cpu() for name in self._view_dims}

    def resolved_spec(self) -> dict[str, Any]:
        """Registry spec + resolved preprocessing, real view dims, weights identity, precision, versions."""
        d = self.spec.to_dict()
        d["views"] = dict(self._view_dims)
        d["preprocessing"] = self._preprocessing.to_dict()
        d["weights"] = dict(self._weights)
        d["precision"] = self._precision
        d["versions"] = dict(self._versions)
        d.update(self._extra)
        return d

    def runtime(self) -> dict[str, Any]:
        """Device and compute precision that actually run."""
        return {"device": str(self._device), "precision": self._precision, "channels_last": self._channels_last}


# --------------------------------------------------------------------------------------------
# Preprocessing from timm's data config
# --------------------------------------------------------------------------------------------


def preprocessing_from_timm(model: Any) -> Preprocessing:
    """The eval :class:`Preprocessing` timm's ``create_transform`` applies for ``model``."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    crop_mode = cfg.get("crop_mode") or "center"
    interpolation = cfg["interpolation"]
    if interpolation not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"timm data config asks for interpolation {interpolation!r}; supported: bicubic, bilinear, nearest")
    common = dict(interpolation=interpolation, mean=tuple(float(v) for v in cfg["mean"]),
                  std=tuple(float(v) for v in cfg["std"]), source="timm-data-config")
    if crop_mode == "center" and h == w:
        # timm: Resize(floor(size / crop_pct)) on the short side, then CenterCrop(size).
        return Preprocessing(size=(h, w), resize="shortest_edge", resize_to=math.floor(h / crop_pct),
                             crop=(h, w), **common)
    if crop_mode == "squash" and crop_pct == 1.0:
        return Preprocessing(size=(h, w), resize="squash", **common)
    raise ValueError(
        f"timm data config {cfg} (crop_mode={crop_mode!r}, input {h}x{w}, crop_pct={crop_pct}) has no "
        "equivalent in facestore's preprocessing (shortest-edge + square centre crop, or squash at crop_pct 1)"
    )


# --------------------------------------------------------------------------------------------
# Family "timm"
# --------------------------------------------------------------------------------------------


class TimmPooledEncoder(TorchEncoder):
    """A timm classifier's pre-logits features (global average pool for ResNet)."""

    def __init__(self, spec: ModelSpec, *, model: Any, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.model = model

    def _forward(self, x: Any) -> dict[str, Any]:
        feats = self.model.forward_features(x)
        return {"pooled": self.model.forward_head(feats, pre_logits=True)}


def _safetensors_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


TIMM_WEIGHTS = ("a timm folder (config.json + model.safetensors, as written by timm.models.save_for_hf) or "
                "one .safetensors file (or a folder holding exactly one)")


def _load_timm_weights(spec: ModelSpec, weights: str | Path) -> tuple[Any, dict[str, Any]]:
    import timm

    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"{spec.name}: --weights {str(path)!r} does not exist; pass {TIMM_WEIGHTS}")
    if path.is_dir() and (path / "config.json").is_file():
        (st,) = require_files(spec.name, path, [("model.safetensors",)], expected=TIMM_WEIGHTS)
        check_readable(spec.name, [path / "config.json", st])
        config = _timm_config(spec, path)
        # Pass config.json's model_args explicitly too: timm releases before ~1.0.20 ignore them
        # in local-dir folders and would build the default architecture size.
        model = _create_checked(spec, path, lambda: timm.create_model(f"local-dir:{path}", pretrained=True,
                                                                      **config.get("model_args", {})))
        files = [path / "config.json", st]
    else:
        if path.is_dir():
            found = _safetensors_in(path)
            if len(found) != 1:
                raise WeightsNotFoundError(
                    f"{spec.name}: --weights {str(path)!r} must be {TIMM_WEIGHTS}; {describe_folder(path)}."
                    f"{pickled_hint(path)}"
                )
            path = found[0]
        if path.suffix != ".safetensors":
            raise WeightsNotFoundError(
                f"{spec.name}: --weights {str(path)!r} is not a .safetensors file; facestore never unpickles weights"
            )
        check_readable(spec.name, [path])
        model = _create_checked(spec, path, lambda: timm.create_model(
            spec.source, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))))
        files = [path]
    identity = {"kind": "local", "path_name": Path(weights).name, "sha256": sha256_of_files(files)}
    return model, identity


def _timm_config(spec: ModelSpec, folder: Path) -> dict[str, Any]:
    """``folder``'s config.json, refused unless it is a timm config of ``spec``'s architecture.

    A transformers folder (DINOv2, SigLIP) also has a config.json and a model.safetensors; timm
    would fail on it with ``KeyError: 'architecture'``, and a timm folder of another architecture
    would load, and be stored, as ``spec.name``.
    """
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelConfigError(f"{spec.name}: --weights {str(folder)!r}: config.json is not readable JSON ({e}); "
                               f"pass {TIMM_WEIGHTS}") from None
    want = spec.source.split(".")[0]
    if not isinstance(config, dict) or "architecture" not in config:
        kind = (f"a transformers {config.get('model_type')!r} checkpoint" if isinstance(config, dict)
                and config.get("model_type") else "not a timm checkpoint")
        raise ModelConfigError(
            f"{spec.name}: --weights {str(folder)!r} holds {kind} (its config.json has no 'architecture'); "
            f"{spec.name} needs a timm {want!r} checkpoint: {TIMM_WEIGHTS}")
    if config["architecture"] != want:
        raise ModelConfigError(
            f"{spec.name}: --weights {str(folder)!r} holds a timm {config['architecture']!r} checkpoint but "
            f"{spec.name} is {want!r}; pass the folder of a {want!r} checkpoint")
    return config


def _create_checked(spec: ModelSpec, path: Path, create: Callable[[], Any]) -> Any:
    """``create()``, with torch's state-dict mismatch (every key listed) said in one line."""
    try:
        return create()
    except RuntimeError as e:
        text = str(e)
        if "state_dict" not in text:
            raise
        missing = re.search(r"Missing key\(s\) in state_dict: (.*?)\.\s", text, re.S)
        unexpected = re.search(r"Unexpected key\(s\) in state_dict: (.*?)\.\s", text, re.S)
        counts = [f"{len(m.group(1).split(','))} {what}" for m, what in ((missing, "missing"),
                                                                            (unexpected, "unexpected")) if m]
        first = (unexpected or missing).group(1).split(",")[0].strip() if (unexpected or missing) else ""
        shapes = " (tensor shapes differ)" if "size mismatch" in text else ""
        raise ModelConfigError(
            f"{spec.name}: the weights in {str(path)!r} do not fit timm's {spec.source.split('.')[0]!r}: "
            f"{', '.join(counts) or 'the state dict differs'} keys{shapes}"
            + (f", e.g. {first}" if first else "")
            + f"; pass a {spec.source.split('.')[0]!r} checkpoint ({TIMM_WEIGHTS})") from None


def _load_timm_hub(spec: ModelSpec) -> tuple[Any, dict[str, Any]]:
    import timm

    try:
        model = hub_call(lambda: timm.create_model(spec.source, pretrained=True), model=spec.name,
                         repo=f"timm/{spec.source}", expected=TIMM_WEIGHTS)
    except WeightsNotFoundError:
        raise
    except Exception as e:  # hub/network/cache errors surface as many types; all mean "no weights here"
        raise WeightsNotFoundError(
            f"{spec.name}: could not load timm weights {spec.source!r} from the Hugging Face cache or hub "
            f"({type(e).__name__}: {e}). Download them once online (HF_HUB_OFFLINE unset), or pass "
            "--weights DIR with a timm folder (config.json + model.safetensors) or a .safetensors file."
        ) from e
    cfg = model.pretrained_cfg
    identity = {"kind": "hub", "id": cfg.get("hf_hub_id") or spec.source, "revision": None,
                "tag": cfg.get("tag")}
    return model, identity


def _finish_torch_model(model: Any, device: Any, *, channels_last: bool) -> Any:
    import torch

    model.eval().requires_grad_(False).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _load_timm(spec: ModelSpec, *, weights: Any, device: Any, precision: str) -> Encoder:
    model, identity = _load_timm_weights(spec, weights) if weights is not None else _load_timm_hub(spec)
    preprocessing = preprocessing_from_timm(model)
    channels_last = device.type == "cuda"  # ResNet convs are ~25% faster channels_last on GPU
    model = _finish_torch_model(model, device, channels_last=channels_last)
    return TimmPooledEncoder(
        spec, model=model, device=device, precision=precision, preprocessing=preprocessing, weights=identity,
        view_dims={"pooled": int(model.num_features)}, versions=library_versions("torch", "timm", "facestore"),
        extra={"architecture": model.pretrained_cfg.get("architecture")}, channels_last=channels_last,
    )


# --------------------------------------------------------------------------------------------
# Family "random_vit"
# --------------------------------------------------------------------------------------------


class RandomViTEncoder(TorchEncoder):
    """The CLS token of a randomly initialised timm ViT (a random-features baseline)."""

    def __init__(self, spec: ModelSpec, *, model: Any, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.model = model

    def _forward(self, x: Any) -> dict[str, Any]:
        return {"cls": self.model.forward_features(x)[:, 0]}


def random_vit_architecture(spec: ModelSpec) -> str:
    """The timm architecture named in a random_vit source (``timm:<arch> (...)``)."""
    m = re.match(r"timm:([\w.]+)", spec.source)
    if not m:
        raise ValueError(f"{spec.name}: random_vit source must start with 'timm:<architecture>', got {spec.source!r}")
    return m.group(1)


def _load_random_vit(spec: ModelSpec, *, weights: Any, device: Any, precision: str,
                     options: dict[str, Any]) -> Encoder:
    import timm
    import torch

    if weights is not None:
        raise ModelConfigError(f"{spec.name} is a random-init baseline and takes no weights; drop --weights "
                         f"(its identity is the seed, option 'seed')")
    seed = int(options.get("seed", spec.option("seed", 0)))
    arch = random_vit_architecture(spec)
    # Initialise on the CPU under a forked RNG: the init is then the same on every machine and
    # the caller's random state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False)
    digest = state_dict_sha256(model)
    preprocessing = preprocessing_from_timm(model)
    model = _finish_torch_model(model, device, channels_last=False)
    return RandomViTEncoder(
        spec, model=model, device=device, precision=precision, preprocessing=preprocessing,
        weights={"kind": "random-init", "architecture": arch, "seed": seed, "state_dict_sha256": digest},
        view_dims={"cls": int(model.embed_dim)}, versions=library_versions("torch", "timm", "facestore"),
        extra={"options": {**spec.to_dict()["options"], "seed": seed}},
    )


# --------------------------------------------------------------------------------------------
# Family "supcon": checkpoint format + encoder
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def projector_layers(projector: Any) -> list[int]:
    """``[in, hidden..., out]`` of a projector made of Linear layers with ReLU between them."""
    import torch

    modules = list(projector)
    linears = modules[0::2]
    acts = modules[1::2]
    ok = (
        isinstance(projector, torch.nn.Sequential)
        and len(modules) % 2 == 1
        and all(isinstance(m, torch.nn.Linear) for m in linears)
        and all(isinstance(m, torch.nn.ReLU) for m in acts)
        and all(a.out_features == b.in_features for a, b in zip(linears, linears[1:]))
    )
    if not ok:
        raise ValueError(
            "the SupCon projector must be torch.nn.Sequential(Linear, ReLU, Linear, ..., Linear) with matching "
            f"dims, got {projector}; this is the format facestore-supcon v1 stores"
        )
    return [linears[0].in_features] + [m.out_features for m in linears]


def build_projector(layers: list[int]) -> Any:
    """The ``Sequential(Linear, ReLU, ..., Linear)`` projector described by ``layers``."""
    import torch

    if len(layers) < 2:
        raise ValueError(f"proj_layers needs at least [in, out], got {layers}")
    mods: list[Any] = []
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        if i:
            mods.append(torch.nn.ReLU())
        mods.append(torch.nn.Linear(a, b))
    return torch.nn.Sequential(*mods)


def _encoder_model_args(encoder: Any) -> dict[str, Any]:
    """The constructor args timm records on a model (timm >= 1.0.2x), else just ``num_classes``."""
    try:
        from timm.models._input import get_model_args  # what timm itself exports to config.json
    except ImportError:  # older timm records no args; stock architectures need only num_classes
        return {"num_classes": int(encoder.num_classes)}
    return dict(get_model_args(encoder, {}))


def save_supcon_checkpoint(
    directory: str | Path,
    *,
    encoder: Any,
    projector: Any,
    timm_model: str,
    preprocessing: Preprocessing,
    extra: dict[str, Any],
    model_args: dict[str, Any] | None = None,
) -> Path:
    """Write a ``facestore-supcon`` v1 checkpoint (see the module docstring); returns the directory.

    ``model_args`` are the ``timm.create_model(timm_model, **model_args)`` arguments that rebuild
    ``encoder`` (default: those timm recorded on it). The rebuild is checked before writing, so a
    checkpoint that could not be loaded back is never written.
    """
    import timm
    from safetensors.torch import save_file

    directory = Path(directory)
    layers = projector_layers(projector)
    if layers[0] != encoder.num_features:
        raise ValueError(f"projector input {layers[0]} != encoder features {encoder.num_features}")
    args = _jsonable(dict(model_args) if model_args is not None else _encoder_model_args(encoder))
    state = encoder.state_dict()
    with torch_device("meta"):
        rebuilt = timm.create_model(timm_model, pretrained=False, **args).state_dict()
    mismatch = sorted(k for k in set(rebuilt) | set(state)
                      if k not in rebuilt or k not in state or tuple(rebuilt[k].shape) != tuple(state[k].shape))
    if mismatch:
        raise ValueError(
            f"timm.create_model({timm_model!r}, **{args}) does not rebuild this encoder (differs at {mismatch[:5]}); "
            "pass model_args= with the arguments the encoder was created with"
        )
    config = {
        "format": SUPCON_FORMAT,
        "version": SUPCON_VERSION,
        "timm_model": timm_model,
        "model_args": args,
        "proj_layers": layers,
        "preprocessing": preprocessing.to_dict(),
        "extra": _jsonable(extra),
    }
    json.dumps(config)  # fail here, before writing anything, if `extra` is not JSON-able
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    tensors.update({f"projector.{k}": v.detach().cpu().contiguous() for k, v in projector.state_dict().items()})
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / SUPCON_WEIGHTS), metadata={"format": SUPCON_FORMAT})
    (directory / SUPCON_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def torch_device(name: str) -> Any:
    """``torch.device(name)`` as a context manager (``meta`` builds a model without allocating it)."""
    import torch

    return torch.device(name)


def load_supcon_checkpoint(directory: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """Read a ``facestore-supcon`` checkpoint: ``(encoder, projector, config)`` on the CPU, eval mode."""
    import timm
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    cfg_path, st_path = directory / SUPCON_CONFIG, directory / SUPCON_WEIGHTS
    if not cfg_path.is_file() or not st_path.is_file():
        raise WeightsNotFoundError(
            f"{str(directory)!r} is not a SupCon checkpoint: expected {SUPCON_CONFIG} and {SUPCON_WEIGHTS} "
            "(written by `probes supcon --train-encoder`); pass that folder as --weights"
        )
    config = json.loads(cfg_path.read_text())
    if config.get("format") != SUPCON_FORMAT or config.get("version") != SUPCON_VERSION:
        raise ValueError(
            f"{cfg_path}: format {config.get('format')!r} version {config.get('version')!r}; this facestore reads "
            f"{SUPCON_FORMAT!r} version {SUPCON_VERSION}"
        )
    tensors = load_file(str(st_path))
    enc_sd = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    proj_sd = {k[len("projector."):]: v for k, v in tensors.items() if k.startswith("projector.")}
    encoder = timm.create_model(config["timm_model"], pretrained=False, **config.get("model_args", {}))
    encoder.load_state_dict(enc_sd, strict=True)
    projector = build_projector(config["proj_layers"])
    projector.load_state_dict(proj_sd, strict=True)
    return encoder.eval(), projector.eval(), config


class SupConEncoder(TorchEncoder):
    """SupCon-trained encoder: pooled features (``embedding``) and projector output (``projection``)."""

    def __init__(self, spec: ModelSpec, *, encoder: Any, projector: Any, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.encoder = encoder
        self.projector = projector

    def _forward(self, x: Any) -> dict[str, Any]:
        emb = self.encoder.forward_head(self.encoder.forward_features(x), pre_logits=True)
        return {"embedding": emb, "projection": self.projector(emb)}


def _load_supcon(spec: ModelSpec, *, weights: Any, device: Any, precision: str) -> Encoder:
    if weights is None:
        raise WeightsNotFoundError(
            f"{spec.name} has no public weights: train it with `probes supcon --train-encoder` and pass the "
            "checkpoint folder as --weights DIR"
        )
    expected = (f"the folder written by `probes supcon --train-encoder` ({SUPCON_CONFIG} + {SUPCON_WEIGHTS})")
    directory = require_folder(spec.name, weights, expected=expected)
    found = require_files(spec.name, directory, [(SUPCON_CONFIG,), (SUPCON_WEIGHTS,)], expected=expected)
    check_readable(spec.name, found)
    encoder, projector, config = load_supcon_checkpoint(directory)
    preprocessing = Preprocessing.from_dict({**config["preprocessing"], "source": "supcon-checkpoint"})
    channels_last = device.type == "cuda"
    encoder = _finish_torch_model(encoder, device, channels_last=channels_last)
    projector = _finish_torch_model(projector, device, channels_last=False)
    identity = {"kind": "local", "path_name": directory.name,
                "sha256": sha256_of_files([directory / SUPCON_CONFIG, directory / SUPCON_WEIGHTS])}
    return SupConEncoder(
        spec, encoder=encoder, projector=projector, device=device, precision=precision,
        preprocessing=preprocessing, weights=identity,
        view_dims={"embedding": int(encoder.num_features), "projection": int(config["proj_layers"][-1])},
        versions=library_versions("torch", "timm", "facestore"),
        extra={"architecture": config["timm_model"], "training": config.get("extra", {})},
        channels_last=channels_last,
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load(spec: ModelSpec, *, weights: Any, device: str, precision: str, options: dict[str, Any]) -> Encoder:
    """Load a ``timm``, ``random_vit`` or ``supcon`` family encoder (see the module docstring)."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    log.info("%s: device %s, precision %s", spec.name, dev, prec)
    if spec.family == "timm":
        return _load_timm(spec, weights=weights, device=dev, precision=prec)
    if spec.family == "random_vit":
        return _load_random_vit(spec, weights=weights, device=dev, precision=prec, options=options)
    if spec.family == "supcon":
        return _load_supcon(spec, weights=weights, device=dev, precision=prec)
    raise ValueError(f"facestore.models.timm_family loads families timm, random_vit, supcon; got {spec.family!r}")

"""Tiny builders for the open_clip, timm, random_vit, SupCon, ArcFace and pixels families.

Each builder makes a randomly initialised model of the real architecture family, small enough
for CPU tests, and saves it in the family's native format so that ``--weights`` loads it through
the same code path as real weights:

- open_clip: a 2-layer ViT/32 CLIP (QuickGELU, the real BPE vocabulary) in ``local-dir`` format;
- timm: the real ``resnet50`` Bottleneck architecture at one block per stage and 1/8 width,
  saved with ``timm.models.save_for_hf`` (``config.json`` + ``model.safetensors``);
- supcon: the same tiny ResNet-50 plus a projector, through ``save_supcon_checkpoint``;
- arcface: a small CNN ``N x 3 x 112 x 112 -> N x 512`` exported to ONNX with a dynamic batch
  axis, plus a fake SCRFD-shaped detector ONNX whose outputs put one face at known landmarks;
- random_vit and pixels take no weights (``None``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

TINY_RESNET_ARGS = {"layers": (1, 1, 1, 1), "channels": (8, 16, 32, 64), "stem_width": 8}

# The fake detector's face, in the coordinates of the padded 640x640 detector input: insightface
# letterboxes a square chip into 640x640 with scale 640 / padded side.
FAKE_DET_SIZE = 640
FAKE_BOX = (200.0, 180.0, 440.0, 470.0)
FAKE_KPS = ((260.0, 280.0), (380.0, 280.0), (320.0, 340.0), (270.0, 400.0), (370.0, 400.0))
FAKE_SCORE = 0.9


def make_weights(spec: Any, directory: Path) -> Path | None:
    """Build and save the tiny model for ``spec``; returns what to pass as ``weights``."""
    directory = Path(directory)
    builders = {
        "open_clip": make_open_clip,
        "timm": make_timm,
        "supcon": make_supcon,
        "arcface": make_arcface,
    }
    if spec.family in ("random_vit", "pixels"):
        return None
    if spec.family not in builders:
        raise ValueError(f"tests.tiny.others has no builder for family {spec.family!r}")
    return builders[spec.family](directory, seed=0)


def tiny_open_clip_config() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_cfg, preprocess_cfg)`` of a tiny CLIP with ViT-B-32's layout and OpenAI preprocessing."""
    import open_clip

    model_cfg = {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    tag = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    preprocess_cfg = {"size": 224, "mode": "RGB", "mean": list(tag["mean"]), "std": list(tag["std"]),
                      "interpolation": tag["interpolation"], "resize_mode": tag["resize_mode"]}
    return model_cfg, preprocess_cfg


def make_open_clip(directory: Path, *, seed: int = 0) -> Path:
    """A tiny open_clip CLIP saved as a ``local-dir`` folder."""
    import open_clip
    import torch

    from facestore.models.openclip import write_local_dir

    model_cfg, preprocess_cfg = tiny_open_clip_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(**model_cfg)
        # A non-trivial logit scale so the test sees it exp'd, not the init value by accident.
        model.logit_scale.data.fill_(float(np.log(50.0)))
    return write_local_dir(directory / "open_clip", model=model, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)


def tiny_resnet50(*, seed: int = 0, num_classes: int = 1000) -> Any:
    """timm ``resnet50`` (Bottleneck blocks, a1_in1k pretrained cfg) at 1 block per stage, 1/8 width."""
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model("resnet50", pretrained=False, num_classes=num_classes, **TINY_RESNET_ARGS)
        # BatchNorm running stats at their init (0 mean, 1 var) make every block near-identity;
        # random stats give outputs that differ per input, as trained ones do.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_timm(directory: Path, *, seed: int = 0) -> Path:
    """A tiny ResNet-50 saved as a timm ``local-dir`` folder (``config.json`` + ``model.safetensors``)."""
    from timm.models import save_for_hf

    out = directory / "timm_resnet50"
    save_for_hf(tiny_resnet50(seed=seed, num_classes=10), out, safe_serialization=True)
    # timm >= 1.0.30 records the constructor args itself; older releases do not, so write them.
    config = json.loads((out / "config.json").read_text())
    config.setdefault("model_args", {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_RESNET_ARGS.items()})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def make_supcon(directory: Path, *, seed: int = 0) -> Path:
    """A tiny SupCon checkpoint: tiny ResNet-50 encoder + Linear-ReLU-Linear projector."""
    import torch

    from facestore.models.timm_family import preprocessing_from_timm, save_supcon_checkpoint

    encoder = tiny_resnet50(seed=seed, num_classes=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        projector = torch.nn.Sequential(torch.nn.Linear(encoder.num_features, 32), torch.nn.ReLU(),
                                        torch.nn.Linear(32, 8))
    return save_supcon_checkpoint(
        directory / "supcon", encoder=encoder, projector=projector, timm_model="resnet50",
        preprocessing=preprocessing_from_timm(encoder), extra={"epochs": 0, "note": "tiny random test model"},
        model_args={**TINY_RESNET_ARGS, "num_classes": 0},
    )


class TinyArcFace:
    """Factory for a small CNN ``N x 3 x 112 x 112 -> N x 512`` (ArcFace's input and output shapes)."""

    @staticmethod
    def build(seed: int = 0) -> Any:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # The final Linear sees every spatial position, so a shifted or differently scaled crop
            # changes the embedding, as it does for a real recogniser.
            return torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, kernel_size=5, stride=4, padding=2), torch.nn.ReLU(),
                torch.nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 512),
            ).eval()


def export_recogniser(path: Path, *, seed: int = 0, dynamic_batch: bool = True) -> Path:
    """Export the tiny recogniser to one ONNX file (``dynamo=False``), batch axis dynamic or fixed 1."""
    import torch

    model = TinyArcFace.build(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {"input.1": {0: "N"}, "embedding": {0: "N"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # dynamo=False is deliberate: it writes one self-contained file (the dynamo exporter puts
        # weights in a side .onnx.data file), like insightface's own ONNX files. torch marks that
        # exporter and its internals deprecated; those warnings are scoped to this one call.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["input.1"],
                          output_names=["embedding"], dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    return path


def fake_detector_outputs() -> list[np.ndarray]:
    """The 9 SCRFD outputs (scores, boxes, keypoints at strides 8/16/32, 2 anchors) for the fake face."""
    outputs: dict[str, list[np.ndarray]] = {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        n = (FAKE_DET_SIZE // stride) ** 2 * 2
        score = np.zeros((n, 1), np.float32)
        bbox = np.zeros((n, 4), np.float32)
        kps = np.zeros((n, 10), np.float32)
        if stride == 32:
            # One positive anchor at the cell centred nearest the face; SCRFD decodes
            # box = centre -/+ distance * stride and keypoint = centre + offset * stride.
            grid = FAKE_DET_SIZE // stride
            cx = cy = 320.0
            index = (int(cy // stride) * grid + int(cx // stride)) * 2
            x1, y1, x2, y2 = FAKE_BOX
            score[index] = FAKE_SCORE
            bbox[index] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy], np.float32) / stride
            kps[index] = (np.asarray(FAKE_KPS, np.float32) - np.array([cx, cy], np.float32)).reshape(-1) / stride
        outputs["score"].append(score)
        outputs["bbox"].append(bbox)
        outputs["kps"].append(kps)
    return outputs["score"] + outputs["bbox"] + outputs["kps"]


def export_fake_detector(path: Path) -> Path:
    """A 9-output SCRFD-shaped ONNX (input 1 x 3 x 640 x 640) that reports the fake face at FAKE_KPS.

    Its scores are gated by the image: the face is reported when any input pixel is brighter
    than mid-grey (SCRFD feeds (x - 127.5) / 128), so a dark chip yields no face.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    outs = fake_detector_outputs()
    names = [f"score_{s}" for s in (8, 16, 32)] + [f"bbox_{s}" for s in (8, 16, 32)] + [f"kps_{s}" for s in (8, 16, 32)]
    nodes = [
        helper.make_node("ReduceMax", ["input.1"], ["max"], keepdims=0),
        helper.make_node("Mul", ["max", "big"], ["max_big"]),
        helper.make_node("Clip", ["max_big", "zero", "one"], ["gate"]),
    ]
    inits = [numpy_helper.from_array(np.array(1000.0, np.float32), "big"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    graph_outputs = []
    for name, value in zip(names, outs):
        inits.append(numpy_helper.from_array(value, f"{name}_const"))
        if name.startswith("score"):
            nodes.append(helper.make_node("Mul", [f"{name}_const", "gate"], [name]))
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_const"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes, "fake_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, FAKE_DET_SIZE, FAKE_DET_SIZE])],
        graph_outputs, initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="facestore-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_arcface(directory: Path, *, seed: int = 0, dynamic_batch: bool = True) -> Path:
    """A buffalo_l-shaped folder: tiny recogniser ``w600k_r50.onnx`` + fake detector ``det_10g.onnx``."""
    out = directory / ("arcface" if dynamic_batch else "arcface_fixed_batch")
    export_recogniser(out / "w600k_r50.onnx", seed=seed, dynamic_batch=dynamic_batch)
    export_fake_detector(out / "det_10g.onnx")
    return out


def fake_landmarks_on_chip(chip_side: int, *, pad_fraction: float) -> np.ndarray:
    """Where the fake detector's landmarks land on a square chip padded by ``pad_fraction``."""
    pad = int(round(pad_fraction * chip_side))
    det_scale = FAKE_DET_SIZE / (chip_side + 2 * pad)
    return (np.asarray(FAKE_KPS, np.float32) / det_scale - pad).astype(np.float32)


def face_chips(size: int = 512) -> list[np.ndarray]:
    """The two real face photos shipped with insightface, resized to ``size`` x ``size`` RGB chips."""
    import insightface
    from PIL import Image

    images = Path(insightface.__file__).parent / "data" / "images"
    chips = []
    for name in ("Tom_Hanks_54745.png", "t1.jpg"):
        with Image.open(images / name) as im:
            chips.append(np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)).copy())
    return chips

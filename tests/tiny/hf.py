"""Tiny randomly initialised transformers models (DINOv2, DINOv3, SigLIP) saved with save_pretrained.

Each builder makes a model of the real architecture with small dims, the image processor
configured like the real checkpoint's ``preprocessor_config.json``, and (SigLIP) a real
``SiglipTokenizer`` over a sentencepiece model trained here, offline, on a small corpus.
Everything loads back through ``AutoModel`` / ``AutoImageProcessor`` / ``AutoTokenizer``, the
same path as real weights. Seeds are fixed, so a directory's contents are deterministic.
"""

from __future__ import annotations

from pathlib import Path

from facestore.models.spec import ModelSpec

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Corpus for the tiny sentencepiece model: the plan's templates over a few names.
_NAMES = ["Emma", "Liam", "Olivia", "Noah", "Ava", "Mateo", "Zoë", "Jürgen", "Aarav", "Mei", "Fatima", "Kwame"]
_TEMPLATES = [
    "a photo of {}.",
    "a photo of a person named {}.",
    "a face of someone called {}.",
    "a close-up portrait of {}.",
    "this is {}.",
]


def make_weights(spec: ModelSpec, directory: Path) -> Path:
    """Build and save the tiny model for ``spec`` under ``directory``; returns the weights dir."""
    builders = {"dinov2": _dinov2, "dinov3": _dinov3, "siglip": _siglip}
    if spec.family not in builders:
        raise ValueError(f"tests.tiny.hf builds families {sorted(builders)}, not {spec.family!r}")
    out = Path(directory) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    builders[spec.family](out)
    return out


def _dinov2(out: Path) -> None:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14)
    Dinov2Model(config).save_pretrained(out)
    # As facebook/dinov2-*: shortest edge 256 (bicubic), centre crop 224, ImageNet mean/std.
    BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
    ).save_pretrained(out)


def _dinov3(out: Path) -> None:
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    torch.manual_seed(0)
    config = DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             num_register_tokens=4, patch_size=16)
    DINOv3ViTModel(config).save_pretrained(out)
    # As facebook/dinov3-*-pretrain-lvd1689m: 224x224 bilinear squash, ImageNet mean/std.
    DINOv3ViTImageProcessor(size={"height": 224, "width": 224}, resample=2, image_mean=IMAGENET_MEAN,
                            image_std=IMAGENET_STD).save_pretrained(out)


def train_sentencepiece(directory: Path) -> Path:
    """Train a tiny unigram sentencepiece model with SigLIP's special ids; returns ``spiece.model``."""
    import sentencepiece as spm

    corpus = [t.format(n) for t in _TEMPLATES for n in _NAMES]
    prefix = Path(directory) / "spiece"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(prefix), vocab_size=96, model_type="unigram",
        # SigLIP's (T5-style) layout: <pad>=0, </s>=1, <unk>=2, no BOS.
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0,
        minloglevel=2, num_threads=1,
    )
    return prefix.with_suffix(".model")


def _siglip(out: Path) -> None:
    import tempfile

    import torch
    from transformers import (
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
        SiglipTokenizer,
    )

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = SiglipTokenizer(vocab_file=str(train_sentencepiece(Path(tmp))), model_max_length=16)
        # Padding to max length with </s>, as google/siglip-* does.
        image_processor = SiglipImageProcessor(size={"height": 224, "width": 224}, resample=3,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
        SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, projection_size=32,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=16),
    )
    model = SiglipModel(config)
    # Random init leaves logit_scale/bias at constants; make them distinct so the test can tell.
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-3.0)
    model.save_pretrained(out)

"""SupCon: the loss against a plain reference, no NaN without positives, the m-per-class sampler,
a head that recovers a hidden signal, and encoder training from images into a facestore checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probes.knn import KNNProbe
from probes.supcon import MPerClassSampler, SupConHead, SupConLoss, supcon_loss


def reference_supcon(features: torch.Tensor, labels: torch.Tensor, T: float = 0.07, base_T: float = 0.07,
                     groups=None) -> float:
    """Khosla et al. eq. 2 (L_out) written as loops, in float64; with ``groups``, another image of
    the anchor's own person is left out like the anchor itself."""
    z = features.double() / features.double().norm(dim=1, keepdim=True)
    n = len(labels)
    same = (lambda i, a: a == i) if groups is None else (lambda i, a: groups[a] == groups[i])
    total, anchors = 0.0, 0
    for i in range(n):
        positives = [p for p in range(n) if not same(i, p) and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / T) for a in range(n) if not same(i, a))
        total += -sum(float(z[i] @ z[p]) / T - math.log(denom) for p in positives) / len(positives)
        anchors += 1
    return (T / base_T) * total / anchors


@pytest.mark.parametrize("T", [0.07, 0.5])
def test_loss_equals_reference(T):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(16, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 5, 5, 6, 7])  # 4, 6, 7 have no positive
    got = SupConLoss(T)(f, y)
    assert float(got) == pytest.approx(reference_supcon(f, y, T), rel=1e-9)


def test_loss_with_identities_equals_the_reference_without_same_person_pairs():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    people = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 5, 6, 7, 8])  # name 2 is one person: no positive left
    got = SupConLoss(0.1)(f, y, people)
    assert float(got) == pytest.approx(reference_supcon(f, y, 0.1, groups=people.tolist()), rel=1e-9)
    assert float(got) != pytest.approx(reference_supcon(f, y, 0.1), rel=1e-3)


def test_no_nan_when_anchors_lack_positives_and_gradients_flow():
    f = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 0, 1, 2, 3, 4])  # only two anchors have a positive
    loss = supcon_loss(f, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()
    none = supcon_loss(f, torch.arange(6))  # no anchor has a positive: zero, not NaN
    assert float(none.detach()) == 0.0
    none.backward()
    # Large logits (tiny T) stay finite thanks to the max subtraction.
    assert torch.isfinite(supcon_loss(f.detach() * 100, y, temperature=1e-3))


def test_sampler_gives_every_anchor_positives():
    labels = np.repeat(np.arange(20), [2, 3, 5, 8] * 5)
    labels = np.concatenate([labels, [99]])  # one singleton: left out
    s = MPerClassSampler(labels, m=4, batch_size=16, seed=1)
    assert s.n_singletons == 1 and len(s) == (len(labels) - 1) // 16
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        _, counts = np.unique(labels[b], return_counts=True)
        assert len(b) == 16 and counts.min() >= 2
        assert 99 not in labels[b]
    assert list(MPerClassSampler(labels, m=4, batch_size=16, seed=1)) == batches  # seeded
    with pytest.raises(ValueError, match="multiple of m"):
        MPerClassSampler(labels, m=4, batch_size=18)


def test_identity_aware_sampler_draws_positives_from_other_people():
    rng = np.random.default_rng(0)
    people_per_name = [6, 5, 4, 3, 2, 1, 1, 6]
    person_name = np.repeat(np.arange(8), people_per_name)
    images = rng.integers(2, 9, size=person_name.size)  # several images per person
    person = np.repeat(np.arange(person_name.size), images)
    labels = person_name[person]
    s = MPerClassSampler(labels, groups=person, m=4, batch_size=16, seed=2)
    assert s.n_single_identity == 2 and s.by_identity  # names 5 and 6 are one person each: left out
    for batch in s:
        for c in np.unique(labels[batch]):
            rows = [i for i in batch if labels[i] == c]
            # m = 4 distinct people whenever the name has that many; else every one of them.
            assert len(rows) % 4 == 0 and len(np.unique(person[rows])) >= min(4, people_per_name[c]), (c, rows)
            assert c not in (5, 6)


def _hidden_signal(n_names=8, per_name=80, signal_dim=4, noise_dim=60, seed=0):
    """Name signal in 4 weak dimensions, buried under 60 loud noise dimensions; train/val halves."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_names), per_name)
    means = rng.normal(size=(n_names, signal_dim))
    sig = means[y] + 0.3 * rng.normal(size=(len(y), signal_dim))
    noise = 1.5 * rng.normal(size=(len(y), noise_dim))
    X = np.hstack([sig, noise]).astype(np.float32)
    names = np.array([f"n{c}" for c in y])
    return X[0::2], names[0::2], X[1::2], names[1::2]


def test_head_recovers_a_signal_hidden_in_noise():
    X, y, Xv, yv = _hidden_signal()
    raw = KNNProbe(ks=(10,), k=10).fit(X, y).score(Xv, yv)
    head = SupConHead(64, out_dim=16, epochs=30, batch_size=64, m_per_class=8, lr=3e-3, representation="projection",
                      random_state=0).fit(X, y)
    Z, Zv = head.transform(X), head.transform(Xv)
    assert Z.shape == (len(X), 16)
    np.testing.assert_allclose(np.linalg.norm(Zv, axis=1), 1.0, rtol=1e-5)
    learned = KNNProbe(ks=(10,), k=10).fit(Z, y).score(Zv, yv)
    assert head.loss_history_[-1] < head.loss_history_[0]
    assert learned > raw + 0.15, (raw, learned)
    assert head.samples_per_second_ > 0
    assert SupConHead().representation == "hidden"  # the encoder-output analogue, as the paper probes
    hidden = SupConHead(64, out_dim=16, epochs=1, batch_size=64).fit(X, y).transform(Xv)
    assert hidden.shape == (len(Xv), 64)


def test_cli_supcon_head_writes_a_result_folder(tmp_path):
    import json

    from click.testing import CliRunner

    from probes.cli import main
    from tests.synthetic import planted_store

    planted_store(tmp_path / "s.zarr", n_names=5, images_per_person=4, dim=16, signal=2.0, seed=4)
    res = CliRunner().invoke(main, ["supcon", "--store", str(tmp_path / "s.zarr"), "--model", "toy",
                                    "--hidden-dim", "32", "--out-dim", "8", "--epochs", "3", "--batch-size", "16",
                                    "--out", str(tmp_path / "r"), "--n-boot", "100", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "track3_toy_supcon_all" / "summary.json").read_text())
    assert summary["family"] == "supcon" and summary["probe"]["head"]["temperature"] == 0.07
    assert summary["extra"]["head_trained_on"] == "train" and len(summary["extra"]["head_loss_history"]) == 3
    assert summary["extra"]["representation"] == "hidden" and summary["probe"]["linear"]["converged"]
    assert summary["extra"]["positives"] == "other people of the same name"
    assert summary["ci"]["balanced_accuracy"][1] > 1 / 5


def test_encoder_training_reads_train_images_only_and_saves_a_loadable_checkpoint(tmp_path, monkeypatch):
    import facestore.images
    from facestore import create_store
    from facestore.dataset import scan_dataset
    from facestore.models.spec import Preprocessing
    from facestore.models.timm_family import load_supcon_checkpoint
    from probes.splits import make_split
    from probes.supcon import EncoderTrainingConfig, train_supcon_encoder
    from tests.conftest import write_chips

    root = tmp_path / "chips"
    write_chips(root, {n: {f"{n}{p}": 3 for p in range(4)} for n in ("Ann", "Bob", "Cid")}, size=40)
    store = create_store(tmp_path / "s.zarr")
    store.sync_index(scan_dataset(root), workers=1)
    split = make_split(store, by="identity", val=0.2, test=0.3, seed=0)
    read = []
    real_decode = facestore.images.decode_image
    monkeypatch.setattr(facestore.images, "decode_image", lambda p, **kw: read.append(str(p)) or real_decode(p, **kw))
    cfg = EncoderTrainingConfig(timm_model="test_resnet", pretrained=False, proj_layers=(16, 8), m_per_class=2,
                                batch_size=4, epochs=1, flip=True)
    prep = Preprocessing(size=(32, 32), resize="squash", interpolation="bilinear")
    ckpt = train_supcon_encoder(store, split=split.name, out_dir=tmp_path / "ckpt", config=cfg, preprocessing=prep,
                                data_root=root, device="cpu")
    train_paths = {str(root / p) for p in np.asarray(store.index.paths)[split.rows("train")]}
    assert read and set(read) <= train_paths  # never a validation or test image
    encoder, projector, config = load_supcon_checkpoint(ckpt)
    assert config["timm_model"] == "test_resnet" and config["proj_layers"][-1] == 8
    assert config["extra"]["split"] == {"name": split.name, "hash": split.hash, "rows": "train only"}
    assert config["extra"]["n_images"] == len(split.rows("train"))
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        z = projector(encoder(x))
    assert z.shape == (2, 8) and torch.isfinite(z).all()
    # `facestore build --model supcon-resnet50 --weights CKPT` loads it like any encoder.
    from facestore.models.registry import load_encoder

    enc = load_encoder("supcon-resnet50", weights=str(ckpt), device="cpu")
    out = enc.encode(enc.collate([enc.preprocessor()(np.zeros((40, 40, 3), np.uint8))]))
    assert out["projection"].shape == (1, 8) and out["embedding"].shape[0] == 1
    assert config["extra"]["positives"].startswith("other people")
    # Embedded into the store, the vectors carry the split the encoder saw; another split is refused.
    from facestore.build import build_store
    from probes.errors import SplitError
    from probes.linear_experiment import LinearConfig, run_linear
    from probes.supcon import encoder_split

    monkeypatch.undo()
    build_store(root, store, "supcon-resnet50", weights=str(ckpt), device="cpu", workers=0, progress=False)
    assert encoder_split(store.model_spec("supcon-resnet50"))["hash"] == split.hash
    other = make_split(store, by="identity", val=0.2, test=0.3, seed=1)
    cfg = LinearConfig(model="supcon-resnet50", lambdas=(1e-2,), extend_grid=False, n_boot=50, device="cpu",
                       n_threads=1)
    with pytest.raises(SplitError, match="train one encoder per split seed"):
        run_linear(store, config=cfg, split=other, out=tmp_path / "r")
    summary = run_linear(store, config=cfg, split=split, out=tmp_path / "r")
    assert summary["split"]["hash"] == split.hash


def test_encoder_training_preprocesses_exactly_like_the_build_of_supcon_resnet50():
    """The trainer's pixels are the build's: torchvision's rounded centre-crop offset (the default
    floored one shifts a 235 -> 224 crop by one pixel, a different input everywhere)."""
    from facestore.models.preprocess import ImagePreprocessor
    from facestore.models.registry import get_spec
    from facestore.models.timm_family import SupConEncoder
    from probes.supcon import training_preprocessor

    spec = get_spec("supcon-resnet50")
    build = SupConEncoder(spec, encoder=None, projector=None, device=torch.device("cpu"), precision="fp32",
                          preprocessing=spec.preprocessing, weights={}, view_dims={}, versions={})
    rng = np.random.default_rng(0)
    for shape in ((300, 300, 3), (512, 384, 3), (97, 131, 3)):
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        built = build.model_input(build.preprocessor()(image))
        trained = training_preprocessor(spec.preprocessing)(image)
        assert torch.equal(trained.reshape(built.shape), built), shape
    image = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)  # 235 - 224 = 11: offsets 5 vs 6
    floored = ImagePreprocessor(spec.preprocessing)(image)
    assert not torch.equal(floored.reshape(built.shape), build.model_input(build.preprocessor()(image)))

"""Supervised contrastive learning (Khosla et al. 2020), experiment 3.4.

Three pieces:

- :class:`SupConLoss`, the paper's ``L_out``: features L2-normalised, logits ``z z^T / T`` with
  the row max subtracted (numerical stability), the anchor itself excluded from the denominator,
  the mean log-probability over positives taken outside the log, scaled by ``T / base_T``.
  Anchors without any positive in the batch are dropped from the mean (naive code returns NaN
  there: HobbitLong/SupContrast #141); pytorch-metric-learning does the same.
- :class:`MPerClassSampler`: with 500 names and random batches most anchors have no positive,
  so every batch holds ``m`` images of each of ``batch_size / m`` names. Given identities, the
  ``m`` images of a name come from ``m`` different people where the name has that many, and the
  loss (``groups=``) never counts two images of one person as a pair: "same name" then means
  another person of that name, not the same face again (which would teach identity).
- :class:`SupConHead`: a projection MLP (D -> 2048 -> 128 as in the plan) trained with the loss on
  frozen store features; ``transform`` gives the learned representation on which a linear probe
  is then fitted (:func:`run_supcon_head`) with the same split and metrics as every probe. The
  representation probed by default is the hidden layer (the analogue of the paper's encoder
  output, which the paper and the plan probe); the projection output stays an option.

Encoder training from images (the plan's timm ResNet-50 + projector) is
:func:`train_supcon_encoder`: train split only, saved as a checkpoint that
``facestore build --model supcon-resnet50 --weights CKPT`` embeds like any other encoder. The
checkpoint records the split it was trained on (name and content hash), the store's model spec
carries it (``training.split``), and every probe run on another split is refused
(:func:`check_encoder_split`): that split's test people may be in the encoder's training images.
Train one encoder per split seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from sklearn.exceptions import NotFittedError

from probes.covariates import ProtocolOptions
from probes.errors import ProbeConfigError

if TYPE_CHECKING:
    from probes.names import NameTask

log = logging.getLogger(__name__)

BASE_TEMPERATURE = 0.07


def _torch():
    import torch

    return torch


def resolve_torch_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; ``"cuda"`` without one is an error."""
    torch = _torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from facestore.errors import DeviceError

        raise DeviceError(f"device={device!r} was asked for but torch sees no CUDA device; pass device='cpu'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ProbeConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def supcon_loss(features, labels, *, temperature: float = 0.07, base_temperature: float = BASE_TEMPERATURE,
                groups=None):
    """Functional form of :class:`SupConLoss` (``features`` (B, D) are L2-normalised here).

    ``groups`` (B,) identities: pairs of images of one person are left out of the loss (neither
    positive nor in the denominator, like the anchor itself), so positives are other people of
    the same name. Returns a scalar tensor. When no anchor in the batch has a positive the loss is
    a zero that still carries the graph (so ``backward`` works) rather than NaN.
    """
    torch = _torch()
    if features.ndim != 2:
        raise ProbeConfigError(f"features must be (batch, dim), got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ProbeConfigError(f"labels must be (batch,) matching features {tuple(features.shape)}, got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ProbeConfigError(f"temperature must be > 0, got {temperature}")
    z = torch.nn.functional.normalize(features, dim=1)
    logits = z @ z.T / temperature
    # Max subtraction changes nothing mathematically (it cancels in the log-softmax) but keeps exp finite.
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    b = z.shape[0]
    self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
    if groups is not None:
        if groups.shape != labels.shape:
            raise ProbeConfigError(f"groups must be (batch,) like labels, got {tuple(groups.shape)}")
        self_mask = groups[:, None] == groups[None, :]  # the anchor and every other image of its person
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    # Denominator over every other sample (self excluded): set the diagonal to -inf before logsumexp.
    log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    n_pos = positives.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return (features * 0.0).sum()
    mean_log_prob_pos = (log_prob.masked_fill(~positives, 0.0)).sum(dim=1)[has_pos] / n_pos[has_pos]
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def _module_base():
    return _torch().nn.Module


class SupConLoss(_module_base()):
    """Supervised contrastive loss ``L_out`` (Khosla et al. 2020), as an ``nn.Module``.

    ``forward(features (B, D), labels (B,)) -> scalar``. Features need not be normalised: the
    loss L2-normalises them. Anchors with no positive are excluded from the mean.
    """

    def __init__(self, temperature: float = 0.07, *, base_temperature: float = BASE_TEMPERATURE) -> None:
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, features, labels, groups=None):
        return supcon_loss(features, labels, temperature=self.temperature, base_temperature=self.base_temperature,
                           groups=groups)


class MPerClassSampler:
    """Batch sampler: every batch holds ``m`` samples of each of ``batch_size // m`` classes.

    So every anchor has ``m - 1`` positives. Classes are visited in a fresh random order each
    epoch; a class with fewer than ``m`` samples is drawn with replacement, and classes with a
    single sample are left out (they cannot give a positive) and counted in ``n_singletons``.
    ``len(sampler)`` batches make one epoch of about ``len(labels)`` samples.

    ``groups`` (identities, one per sample): a class's ``m`` samples are drawn from ``m``
    different identities (one image each, chosen at random) when it has that many, cycling
    through its identities otherwise; classes with a single identity are left out (their only
    positives would be the same person) and counted in ``n_single_identity``.

    Iterating yields lists of row indices (use as a DataLoader ``batch_sampler`` or directly).
    """

    def __init__(self, labels, *, groups=None, m: int = 4, batch_size: int = 512, seed: int = 0) -> None:
        labels = np.asarray(labels)
        if m < 2:
            raise ProbeConfigError(f"m must be >= 2 so that every anchor has a positive, got {m}")
        if batch_size < 2 * m or batch_size % m:
            raise ProbeConfigError(f"batch_size must be a multiple of m={m} holding at least two classes, got {batch_size}")
        if groups is not None and len(groups) != len(labels):
            raise ProbeConfigError(f"groups has {len(groups)} entries for {len(labels)} labels")
        self.m = m
        self.batch_size = batch_size
        self.seed = seed
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        members = [order[s:s + c] for s, c in zip(starts, counts)]
        self.n_singletons = int(np.sum(counts < 2))
        self.n_single_identity = 0
        if groups is None:
            # Each class: one "identity" per sample, so drawing identities is drawing samples.
            self._members = [[np.array([i]) for i in rows] for rows in members if len(rows) >= 2]
        else:
            g = np.asarray(groups)
            self._members = []
            for rows in members:
                if len(rows) < 2:
                    continue
                ids, inv = np.unique(g[rows], return_inverse=True)
                if len(ids) < 2:
                    self.n_single_identity += 1
                    continue
                self._members.append([rows[inv == k] for k in range(len(ids))])
        self.by_identity = groups is not None
        self.classes_per_batch = batch_size // m
        if len(self._members) < self.classes_per_batch:
            what = "classes with >= 2 identities" if groups is not None else "classes with >= 2 samples"
            raise ProbeConfigError(
                f"batch_size={batch_size} with m={m} needs {self.classes_per_batch} {what}, "
                f"but only {len(self._members)} exist; lower batch_size or m"
            )
        n_used = int(sum(sum(len(x) for x in people) for people in self._members))
        self._n_batches = max(1, n_used // batch_size)
        self._epoch = 0

    def __len__(self) -> int:
        return self._n_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self._epoch])
        self._epoch += 1
        n_classes = len(self._members)
        class_order = np.array([], dtype=np.int64)
        for _ in range(self._n_batches):
            if len(class_order) < self.classes_per_batch:
                class_order = np.concatenate([class_order, rng.permutation(n_classes)])
            chosen, class_order = class_order[: self.classes_per_batch], class_order[self.classes_per_batch:]
            # A class may appear twice when a fresh permutation was appended; that only adds positives.
            batch = []
            for c in chosen:
                people = self._members[c]
                # m identities: distinct while there are enough, then another pass in a new order.
                picks = np.concatenate([rng.permutation(len(people)) for _ in range(-(-self.m // len(people)))])
                for k in picks[: self.m]:
                    batch.append(int(rng.choice(people[k])))
            yield batch


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int):
    """The plan's projector: Linear(in, hidden) -> ReLU -> Linear(hidden, out)."""
    nn = _torch().nn
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


@dataclass(frozen=True)
class SupConHeadConfig:
    """Hyperparameters of :class:`SupConHead` (recorded in config.json)."""

    hidden_dim: int = 2048
    out_dim: int = 128
    temperature: float = 0.07
    m_per_class: int = 4
    batch_size: int = 512
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    representation: str = "hidden"
    normalize_input: bool = True
    seed: int = 0


class SupConHead:
    """Projection MLP trained with :class:`SupConLoss` on frozen features (sklearn-style transformer).

    ``fit(X, y, groups=None)`` trains the MLP with m-per-class batches (identity-aware with
    ``groups``); ``transform(X)`` returns the learned representation: ``"hidden"`` (default: the
    ReLU layer before the projection, the analogue of the encoder output that the paper and the
    plan probe) or ``"projection"`` (the ``out_dim`` space the loss shaped, L2-normalised). Input
    rows are L2-normalised first when ``normalize_input``.
    """

    def __init__(self, hidden_dim: int = 2048, *, out_dim: int = 128, temperature: float = 0.07,
                 m_per_class: int = 4, batch_size: int = 512, epochs: int = 20, lr: float = 1e-3,
                 weight_decay: float = 1e-4, representation: str = "hidden", normalize_input: bool = True,
                 device: str = "auto", random_state: int = 0) -> None:
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.temperature = temperature
        self.m_per_class = m_per_class
        self.batch_size = batch_size
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.representation = representation
        self.normalize_input = normalize_input
        self.device = device
        self.random_state = random_state

    def config(self) -> SupConHeadConfig:
        return SupConHeadConfig(hidden_dim=self.hidden_dim, out_dim=self.out_dim, temperature=self.temperature,
                                m_per_class=self.m_per_class, batch_size=self.batch_size, epochs=self.epochs,
                                lr=self.lr, weight_decay=self.weight_decay, representation=self.representation,
                                normalize_input=self.normalize_input, seed=self.random_state)

    def _prepare(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if self.normalize_input:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return X

    def fit(self, X, y, *, groups=None) -> SupConHead:
        """Train the projector on ``X`` (n, D) with labels ``y`` (names or ints), ``groups`` their identities."""
        torch = _torch()
        if self.representation not in ("projection", "hidden"):
            raise ProbeConfigError(f"representation must be 'projection' or 'hidden', got {self.representation!r}")
        if self.epochs < 1:
            raise ProbeConfigError(f"epochs must be >= 1, got {self.epochs}")
        X = self._prepare(X)
        y = np.asarray(y)
        if len(X) != len(y):
            raise ProbeConfigError(f"X has {len(X)} rows but y has {len(y)} labels")
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        device = resolve_torch_device(self.device)
        self.device_ = device
        torch.manual_seed(self.random_state)
        model = projection_mlp(X.shape[1], self.hidden_dim, self.out_dim).to(device)
        loss_fn = SupConLoss(self.temperature)
        g_idx = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
        sampler = MPerClassSampler(y_idx, groups=g_idx, m=self.m_per_class,
                                   batch_size=_fit_batch(y_idx, self.m_per_class, self.batch_size, groups=g_idx),
                                   seed=self.random_state)
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total_steps = self.epochs * len(sampler)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        Xt = torch.from_numpy(X).to(device)
        yt = torch.from_numpy(y_idx.astype(np.int64)).to(device)
        gt = None if g_idx is None else torch.from_numpy(g_idx.astype(np.int64)).to(device)
        history = []
        t0 = time.perf_counter()
        n_seen = 0
        model.train()
        for epoch in range(self.epochs):
            losses = []
            for batch in sampler:
                idx = torch.as_tensor(batch, device=device)
                loss = loss_fn(model(Xt[idx]), yt[idx], None if gt is None else gt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                n_seen += len(batch)
            history.append(float(np.mean(losses)))
            log.info("SupCon head epoch %d/%d: loss %.4f", epoch + 1, self.epochs, history[-1])
        self.train_seconds_ = time.perf_counter() - t0
        self.samples_per_second_ = n_seen / max(self.train_seconds_, 1e-9)
        model.eval()
        self.model_ = model
        self.loss_history_ = history
        self.n_singletons_ = sampler.n_singletons
        self.n_single_identity_ = sampler.n_single_identity
        self.by_identity_ = sampler.by_identity
        self.batch_size_ = sampler.batch_size
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X, *, batch_size: int = 8192) -> np.ndarray:
        """The learned representation of ``X`` (float32)."""
        torch = _torch()
        if not hasattr(self, "model_"):
            raise NotFittedError("this SupConHead is not fitted yet; call fit(X, y) first")
        X = self._prepare(X)
        if X.shape[1] != self.n_features_in_:
            raise ProbeConfigError(f"X has {X.shape[1]} features, the head was fitted on {self.n_features_in_}")
        out = []
        with torch.no_grad():
            for s in range(0, len(X), batch_size):
                xb = torch.from_numpy(X[s:s + batch_size]).to(self.device_)
                if self.representation == "hidden":
                    h = self.model_[1](self.model_[0](xb))
                else:
                    h = torch.nn.functional.normalize(self.model_(xb), dim=1)
                out.append(h.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self._out_width()), np.float32)

    def _out_width(self) -> int:
        return self.hidden_dim if self.representation == "hidden" else self.out_dim

    def fit_transform(self, X, y, *, groups=None) -> np.ndarray:
        return self.fit(X, y, groups=groups).transform(X)


def _fit_batch(y_idx: np.ndarray, m: int, batch_size: int, *, groups=None) -> int:
    """Largest batch (multiple of m) the data can fill with distinct classes: small tasks get smaller batches."""
    if groups is None:
        usable = int(np.sum(np.bincount(y_idx) >= 2))
    else:
        people = np.unique(np.stack([y_idx, np.asarray(groups)]), axis=1)[0]  # one entry per (name, person)
        usable = int(np.sum(np.bincount(people) >= 2))
    if usable < 2:
        raise ProbeConfigError("SupCon needs at least two classes with two or more samples each"
                               + (" from two or more people" if groups is not None else ""))
    return max(2 * m, min(batch_size, usable * m) // m * m)


class _ImageRows:
    """torch Dataset over store rows: decode once per access, preprocess like the model will at build time."""

    def __init__(self, paths: list[str], labels: np.ndarray, preprocessor, *, flip: bool, groups=None) -> None:
        self.paths = paths
        self.labels = labels
        self.groups = np.full(len(labels), -1, np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        self.preprocessor = preprocessor
        self.flip = flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        torch = _torch()
        from facestore.images import decode_image

        x = self.preprocessor(decode_image(self.paths[i]))
        # Horizontal flip is the one augmentation that cannot change who is pictured; seeded by the loader.
        if self.flip and torch.rand(()) < 0.5:
            x = torch.flip(x, dims=(-1,))
        return x, int(self.labels[i]), int(self.groups[i])


@dataclass(frozen=True)
class EncoderTrainingConfig:
    """Hyperparameters of :func:`train_supcon_encoder` (stored in the checkpoint's ``extra``)."""

    timm_model: str = "resnet50"
    pretrained: bool = True
    proj_layers: tuple[int, ...] = (2048, 128)
    temperature: float = 0.07
    m_per_class: int = 4
    batch_size: int = 256
    epochs: int = 10
    lr: float = 3e-4
    weight_decay: float = 1e-4
    flip: bool = True
    max_images: int | None = None
    seed: int = 0


def training_preprocessor(preprocessing):
    """The model-ready preprocessing of encoder training: exactly the build's for ``supcon-resnet50``.

    The timm family's build crops with torchvision's rounded centre offset (``crop_rounding="round"``,
    as timm and open_clip do); the default floored offset would shift every training crop by a
    pixel against the images the trained encoder is then built on.
    """
    from facestore.models.preprocess import ImagePreprocessor

    return ImagePreprocessor(preprocessing, crop_rounding="round")


def train_supcon_encoder(store, *, split: str, out_dir: str | Path, config: EncoderTrainingConfig = EncoderTrainingConfig(),
                         names=None, preprocessing=None, data_root: str | Path | None = None,
                         pretrained_file: str | Path | None = None, device: str = "auto", num_workers: int = 0,
                         progress: bool = False) -> Path:
    """Train a timm encoder + projector with :class:`SupConLoss` on the **train** rows of ``split``.

    Images are read from the store index paths (under ``data_root``, default the store's),
    decoded with :func:`facestore.images.decode_image` and preprocessed with ``preprocessing``
    (default: the registry's ``supcon-resnet50`` preprocessing), so training sees what
    ``facestore build --model supcon-resnet50 --weights CKPT`` will feed the encoder. Validation
    and test rows are never read. ``names`` restricts training to those names.

    Saves through :func:`facestore.models.timm_family.save_supcon_checkpoint` and returns the
    checkpoint directory.
    """
    torch = _torch()
    import timm

    from facestore.models.registry import get_spec
    from facestore.models.timm_family import build_projector, save_supcon_checkpoint

    assignment, split_attrs = store.load_split(split)
    rows = np.flatnonzero(assignment == 0)
    labels_all = np.asarray(store.index.labels)
    if names is not None:
        wanted = {str(n) for n in names}
        unknown = wanted - set(store.index.names)
        if unknown:
            raise ProbeConfigError(f"names not in the store: {sorted(unknown)[:10]}")
        keep_label = np.array([n in wanted for n in store.index.names])
        rows = rows[keep_label[labels_all[rows]]]
    if config.max_images is not None and len(rows) > config.max_images:
        rows = np.sort(np.random.default_rng(config.seed).choice(rows, size=config.max_images, replace=False))
    if len(rows) == 0:
        raise ProbeConfigError(f"split {split!r} has no training rows for the asked names")
    root = Path(data_root) if data_root is not None else store.data_root
    if root is None:
        raise ProbeConfigError("the store records no data_root; pass data_root= (the image folder the index was made from)")
    paths = [str(root / p) for p in np.asarray(store.index.paths)[rows].tolist()]
    _, y = np.unique(labels_all[rows], return_inverse=True)
    # Identities (when the store has them): positives are then other people of the same name.
    ids = store.index.identities
    g = None if ids is None else np.unique(np.asarray(ids)[rows], return_inverse=True)[1]
    prep = preprocessing if preprocessing is not None else get_spec("supcon-resnet50").preprocessing
    dev = resolve_torch_device(device)
    torch.manual_seed(config.seed)
    kwargs = {}
    if pretrained_file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    encoder = timm.create_model(config.timm_model, pretrained=config.pretrained or pretrained_file is not None,
                                num_classes=0, **kwargs)
    projector = build_projector([encoder.num_features, *config.proj_layers])
    model = torch.nn.ModuleDict({"encoder": encoder, "projector": projector}).to(dev)
    batch = _fit_batch(y, config.m_per_class, config.batch_size, groups=g)
    sampler = MPerClassSampler(y, groups=g, m=config.m_per_class, batch_size=batch, seed=config.seed)
    loader = torch.utils.data.DataLoader(_ImageRows(paths, y, training_preprocessor(prep), flip=config.flip, groups=g),
                                         batch_sampler=sampler, num_workers=num_workers,
                                         pin_memory=dev.startswith("cuda"))
    loss_fn = SupConLoss(config.temperature)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * len(sampler))
    use_amp = dev.startswith("cuda")
    history = []
    t0 = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        losses = []
        for xb, yb, gb in loader:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                z = model["projector"](model["encoder"](xb))
            loss = loss_fn(z.float(), yb, None if g is None else gb.to(dev, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        log.info("SupCon encoder epoch %d/%d: loss %.4f", epoch + 1, config.epochs, history[-1])
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs} loss {history[-1]:.4f}")
    model.eval()
    extra = {
        "trainer": "probes.supcon.train_supcon_encoder",
        "config": {**asdict(config), "proj_layers": list(config.proj_layers)},
        "split": {"name": split, "hash": split_attrs.get("hash"), "rows": "train only"},
        "n_images": int(len(rows)), "n_names": int(y.max() + 1), "batch_size": int(batch),
        "positives": "other people of the same name (identity-aware sampler and loss)" if g is not None
                     else "other images of the same name (the store has no identities)",
        "names_left_out_single_person": int(sampler.n_single_identity),
        "loss_history": history, "train_seconds": time.perf_counter() - t0, "device": dev,
        "store": str(getattr(store, "path", "")),
    }
    return save_supcon_checkpoint(out_dir, encoder=encoder.cpu(), projector=projector.cpu(),
                                  timm_model=config.timm_model, preprocessing=prep, extra=extra)


def encoder_split(spec: dict | None) -> dict | None:
    """The split a SupCon-trained encoder saw (``{"name", "hash", ...}``), from its stored model spec.

    ``facestore build --model supcon-resnet50 --weights CKPT`` stores the checkpoint's training
    record as the spec's ``training``; None for every other model.
    """
    split = ((spec or {}).get("training") or {}).get("split")
    return split if isinstance(split, dict) and split.get("hash") else None


def check_encoder_split(store, model: str, split) -> None:
    """Refuse to probe an encoder on a split other than the one it was trained on.

    Its training images are that split's train rows; another split's test people were (mostly)
    among them, so a result there measures memorised people. Raises :class:`SplitError`.
    """
    from probes.errors import SplitError

    trained = encoder_split(store.model_spec(model))
    if trained is None or trained["hash"] == split.hash:
        return
    raise SplitError(
        f"model {model!r} is a SupCon encoder trained on split {trained.get('name')!r} (hash "
        f"{trained['hash'][:10]}), but this run uses split {split.name!r} (hash {split.hash[:10]}): that split's "
        "test people were in the encoder's training images. Probe it on its own split "
        f"(--split {trained.get('name')}), or train one encoder per split seed (probes supcon --train-encoder "
        "--seed K --checkpoint CKPT_K, then facestore build --model supcon-resnet50 --weights CKPT_K into a "
        "store of its own)"
    )


@dataclass(frozen=True)
class SupConConfig(ProtocolOptions):
    """One SupCon-head experiment on frozen store features (recorded in config.json).

    ``lambdas``, ``tol``: the linear probe's grid and tolerance on the learned representation
    (None: :class:`probes.linear.LinearSweep`'s defaults). ``null_repeats`` with
    ``forced_choice``: head and probe refit that many times on names shuffled across identities
    (the forced-choice null; each repeat costs a full fit). ``controls``,
    ``control_permutations``, ``foils``, ``allow_incomplete``: as
    :class:`~probes.linear_experiment.LinearConfig`'s; the head is trained once on the true
    training names and held fixed, each within-stratum refit is the linear probe on its
    representation (a head per permutation would multiply the cost by the head's epochs).
    """

    model: str
    view: str | None = None
    names: str | NameTask = "all"
    min_images: int = 0
    head: SupConHeadConfig = field(default_factory=SupConHeadConfig)
    lambdas: tuple[float, ...] | None = None
    tol: float | None = None
    n_boot: int = 1000
    device: str = "auto"
    save_embeddings: bool = False


def experiment_name(config: SupConConfig) -> str:
    """The default experiment (folder) name of a SupCon-head config."""
    from probes.knn import task_slug

    return f"{config.model}{'-' + config.view if config.view else ''}_supcon_{task_slug(config.names)}"


def _head_and_probe(config: SupConConfig, names, tr, va, te, y_tr, y_va, seed: int):
    """Fit the head on train and the linear protocol on its representation; returns the pieces."""
    h = config.head
    head = SupConHead(h.hidden_dim, out_dim=h.out_dim, temperature=h.temperature, m_per_class=h.m_per_class,
                      batch_size=h.batch_size, epochs=h.epochs, lr=h.lr, weight_decay=h.weight_decay,
                      representation=h.representation, normalize_input=h.normalize_input, device=config.device,
                      random_state=seed).fit(tr.X, y_tr, groups=tr.groups)
    Z_tr, Z_va, Z_te = head.transform(tr.X), head.transform(va.X), head.transform(te.X)
    t1 = time.perf_counter()
    sweep = _linear(config, seed).sweep(names).fit(Z_tr, names[y_tr], X_val=Z_va, y_val=names[y_va])
    return head, sweep, Z_te, time.perf_counter() - t1


def _linear(config: SupConConfig, seed: int):
    """The linear protocol read on the head's representation."""
    from probes.linear_experiment import LinearConfig

    return LinearConfig(model=config.model, view=config.view, lambdas=config.lambdas, device=config.device,
                        random_state=seed, **({} if config.tol is None else {"tol": config.tol}))


def run_supcon_head(store, *, config: SupConConfig, split, out, experiment: str | None = None,
            seed_group: str | None = None) -> dict:
    """Experiment 3.4 on frozen features: SupCon head on train, then the linear probe protocol.

    The projection head sees the train rows only (identity-aware when the split has identities).
    The linear probe (:class:`probes.linear.LinearSweep`) on the learned representation is
    selected on validation, refit on train+validation and scores test once, exactly as the plain
    linear probe does on the raw features.
    """
    from probes import covariates as cv
    from probes import stats
    from probes.data import load_xy
    from probes.evaluation import config_record, finish_experiment
    from probes.linear_experiment import accepts_probabilities, sweep_record
    from probes.metrics import balanced_accuracy, top_k_indices
    from probes.names import resolve_names

    check_encoder_split(store, config.model, split)
    kinds = cv.foil_kinds(config.foils, config.controls)
    cv.check_controls(store, config.controls, kinds if config.forced_choice else ())
    t0 = time.perf_counter()
    task = resolve_names(store, config.names, min_images=config.min_images)
    kw = dict(view=config.view, split=split, names=task, allow_incomplete=config.allow_incomplete)
    tr, va, te = (load_xy(store, config.model, subset=s, **kw) for s in ("train", "val", "test"))
    t_load = time.perf_counter() - t0
    h = config.head
    names = np.asarray(task.names)
    head, sweep, Z_te, t_linear = _head_and_probe(config, names, tr, va, te, tr.y, va.y, h.seed)
    scores = sweep.predict_proba_adjusted(Z_te)
    proba = sweep.predict_proba(Z_te)
    trainval_y = np.concatenate([tr.y, va.y])
    extra = {"head_loss_history": head.loss_history_, "head_samples_per_second": head.samples_per_second_,
             "head_batch_size": head.batch_size_, "singleton_names_left_out": head.n_singletons_,
             "single_person_names_left_out": head.n_single_identity_,
             "positives": "other people of the same name" if head.by_identity_ else "other images of the same name",
             "head_trained_on": "train", "representation": h.representation,
             "linear_best_params": sweep.best_params_, "linear_best_val_score": sweep.best_score_,
             "cv_results": sweep.cv_results_}
    warnings = list(sweep.warnings_)
    if config.forced_choice:
        from probes.forced_choice import forced_choice_report

        null_probas, null_labels = [], []
        if config.null_repeats > 0:
            groups = None if tr.groups is None else np.concatenate([tr.groups, va.groups])
            for i in range(config.null_repeats):
                y_perm = stats.shuffle_names_across_identities(trainval_y, groups, seed=h.seed + i)
                _, s_null, Z_null, _ = _head_and_probe(config, names, tr, va, te, y_perm[:len(tr)],
                                                       y_perm[len(tr):], h.seed + i)
                null_probas.append(s_null.predict_proba(Z_null))
                null_labels.append(y_perm)
        rows = cv.stack_subsets(tr, va, te)
        extra["forced_choice"] = forced_choice_report(
            proba, te.y, train_labels=trainval_y, groups=te.groups, seed=h.seed, null_probas=null_probas or None,
            null_train_labels=null_labels or None, foil_kinds=kinds,
            name_values=cv.foil_values(store, kinds, names=task.names, y=rows["y"], rows=rows["rows"],
                                       subset=rows["subset"]))
    experiment = experiment or experiment_name(config)
    log = [f"SupCon head {experiment}: {len(tr)} train rows, device {head.device_}, final loss "
           f"{head.loss_history_[-1]:.4f}, {head.samples_per_second_:.0f} samples/s, representation "
           f"{h.representation}"]
    controls, t_controls = None, 0.0
    if config.controls:
        # The head stays as trained on the true names; the refits are the linear probe on its representation.
        rows = {**cv.stack_subsets(tr, va, te), "X": np.concatenate([head.transform(tr.X), head.transform(va.X), Z_te])}
        lin = _linear(config, h.seed)
        controls, t_controls = cv.run_controls(
            store, covariates=config.controls, factory=lambda classes: cv.AdjustedDecision(lin.sweep(classes)),
            names=task.names, observed=balanced_accuracy(te.y, top_k_indices(scores, k=1)[:, 0]),
            n_permutations=config.control_permutations, n_boot=config.n_boot, seed=h.seed,
            refits="the linear probe (lambda sweep, selection, refit) on the representation of the SupCon head, "
                   "which is trained once on the true training names and held fixed",
            log=log.append, **rows)
    cfg = {"family": "supcon", "experiment": experiment, **config_record(config), "view": te.view,
           "name_task": task.info(),
           "probe": {"head": asdict(h), "device": head.device_, "linear": sweep_record(sweep),
                     "lambdas": None if config.lambdas is None else list(config.lambdas)}}
    extra["seed_group"] = seed_group  # the multi-seed experiment this run belongs to (probes compare)
    kwargs = {"probabilities": proba} if accepts_probabilities() else {}
    return finish_experiment(
        out, experiment=experiment, scores=scores, y_true=te.y, names=task.names, image_ids=te.image_ids,
        groups=te.groups, train_labels=trainval_y, config=cfg, split_info=split.info(), store_path=store.path,
        model_spec=store.model_spec(config.model),
        timings={"load_s": t_load, "head_fit_s": head.train_seconds_, "linear_s": t_linear, "controls_s": t_controls},
        name_task=task, embeddings=Z_te if config.save_embeddings else None, n_boot=config.n_boot,
        seed=h.seed, warnings=warnings, extra=extra, log=log, controls=controls,
        incomplete=cv.incomplete_reasons(tr, va, te), **kwargs)

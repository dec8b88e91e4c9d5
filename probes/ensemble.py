"""Model ensembles (experiment 3.6): concatenation, late fusion, learned weights.

Any set of models in one store:

- **A, concat**: each model's vectors L2-normalised first (so no model dominates by scale), rows
  aligned by image id, then one probe on the concatenation.
- **B, late fusion**: one probe per model; the ensemble's score is the mean of the per-model
  log-probabilities.
- **C, learned weights**: ``sum_m w_m * log p_m`` with the weights fitted on **validation only**
  (minimum validation log-loss), then applied to test.

Images missing from a model (a failed decode, ArCFace's ``no_face``) cannot be scored by every
model: :func:`align_models` keeps the image ids present in all of them and counts the missing
ones per model, and that count goes into summary.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.exceptions import NotFittedError

from probes.errors import ProbeConfigError

ENSEMBLE_MODES = ("concat", "late-fusion", "learned-weights")


@dataclass(frozen=True)
class AlignedFeatures:
    """Per-model feature blocks with rows aligned on the same image ids."""

    models: tuple[str, ...]
    features: tuple[np.ndarray, ...]  # one (n, D_m) block per model, row i = image_ids[i]
    image_ids: np.ndarray
    missing: dict  # model -> number of candidate images that model lacks
    n_candidates: int  # images asked for before intersecting

    @property
    def n_dropped(self) -> int:
        return self.n_candidates - len(self.image_ids)


def align_features(blocks: dict[str, tuple[np.ndarray, np.ndarray]], *, ids=None) -> AlignedFeatures:
    """Align ``{model: (X, image_ids)}`` on image ids present in every model (and in ``ids`` if given).

    Row order follows ``ids`` when given, else the sorted intersection.
    """
    if len(blocks) < 1:
        raise ProbeConfigError("an ensemble needs at least one model")
    per_model_ids = {m: np.asarray(i) for m, (_, i) in blocks.items()}
    for m, (X, i) in blocks.items():
        if len(X) != len(i):
            raise ProbeConfigError(f"model {m!r}: {len(X)} vectors for {len(i)} image ids")
        if len(np.unique(i)) != len(i):
            raise ProbeConfigError(f"model {m!r}: duplicate image ids; each image must appear once per model")
    if ids is None:
        candidates = np.unique(np.concatenate(list(per_model_ids.values())))
    else:
        candidates = np.asarray(ids)
    keep = np.ones(len(candidates), dtype=bool)
    missing = {}
    for m, i in per_model_ids.items():
        present = np.isin(candidates, i)
        missing[m] = int((~present).sum())
        keep &= present
    kept = candidates[keep]
    feats = []
    for m, (X, i) in blocks.items():
        order = np.argsort(i, kind="stable")
        pos = order[np.searchsorted(i[order], kept)]
        feats.append(np.asarray(X)[pos])
    return AlignedFeatures(models=tuple(blocks), features=tuple(feats), image_ids=kept, missing=missing,
                           n_candidates=len(candidates))


def l2_normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def concat_features(blocks) -> np.ndarray:
    """Option A: L2-normalise each block, then concatenate columns."""
    return np.hstack([l2_normalize(b) for b in blocks]).astype(np.float32)


def _log_proba(P: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(P, dtype=np.float64), 1e-12, None))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def late_fusion(probas) -> np.ndarray:
    """Option B: mean of per-model log-probabilities, returned as renormalised probabilities."""
    probas = list(probas)
    if not probas:
        raise ProbeConfigError("late fusion needs at least one model's probabilities")
    shapes = {p.shape for p in probas}
    if len(shapes) != 1:
        raise ProbeConfigError(f"every model's probabilities must have the same shape (rows aligned, same classes), got {shapes}")
    return _softmax(np.mean([_log_proba(p) for p in probas], axis=0))


class LearnedWeights:
    """Option C: non-negative per-model weights on log-probabilities, fitted on validation only.

    ``fit(val_probas, y_val)`` minimises the validation log-loss of
    ``softmax(sum_m w_m log p_m)`` over ``w >= 0`` (parametrised as ``softplus``); ``predict_proba``
    applies the weights to test probabilities. ``weights_`` are recorded in summary.json.
    """

    def __init__(self, *, l2: float = 1e-4, max_iter: int = 200) -> None:
        self.l2 = l2
        self.max_iter = max_iter

    def fit(self, probas, y) -> LearnedWeights:
        import torch

        L = np.stack([_log_proba(p) for p in probas])  # (M, n, C)
        y = np.asarray(y, dtype=np.int64)
        if L.shape[1] != len(y):
            raise ProbeConfigError(f"validation probabilities have {L.shape[1]} rows for {len(y)} labels")
        Lt = torch.from_numpy(L)
        yt = torch.from_numpy(y)
        # softplus(raw) = 1 at init: the start is the sum (a scaled late fusion).
        raw = torch.full((L.shape[0],), float(np.log(np.e - 1)), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([raw], lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            w = torch.nn.functional.softplus(raw)
            loss = torch.nn.functional.cross_entropy(torch.einsum("m,mnc->nc", w, Lt), yt) + self.l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weights_ = torch.nn.functional.softplus(raw).detach().numpy()
        self.n_models_ = L.shape[0]
        return self

    def predict_proba(self, probas) -> np.ndarray:
        if not hasattr(self, "weights_"):
            raise NotFittedError("LearnedWeights is not fitted; call fit(val_probas, y_val) first")
        L = np.stack([_log_proba(p) for p in probas])
        if L.shape[0] != self.n_models_:
            raise ProbeConfigError(f"fitted on {self.n_models_} models, got {L.shape[0]}")
        return _softmax(np.einsum("m,mnc->nc", self.weights_, L))


@dataclass(frozen=True)
class EnsembleConfig:
    """One ensemble experiment over several models of one store (recorded in config.json)."""

    models: tuple[str, ...]
    mode: str = "concat"
    views: tuple[str | None, ...] | None = None
    names: str = "all"
    min_images: int = 0
    weight_decays: tuple[float, ...] | None = None
    epochs: int = 10
    n_boot: int = 1000
    device: str = "auto"
    forced_choice: bool = False
    null_repeats: int = 0
    random_state: int = 0


def _aligned_subset(store, config: EnsembleConfig, task, split, subset: str):
    from probes.data import load_xy

    views = config.views or (None,) * len(config.models)
    xys = {m: load_xy(store, m, view=v, split=split, subset=subset, names=task) for m, v in zip(config.models, views)}
    al = align_features({m: (xy.X, xy.image_ids) for m, xy in xys.items()})
    first = next(iter(xys.values()))
    # Labels and identities come from the index, so any model's rows give them; map by image id.
    lab = dict(zip(first.image_ids.tolist(), first.y.tolist()))
    for xy in xys.values():
        lab.update(zip(xy.image_ids.tolist(), xy.y.tolist()))
    y = np.array([lab[i] for i in al.image_ids.tolist()], dtype=np.int64)
    groups = None
    if first.groups is not None:
        gmap = {}
        for xy in xys.values():
            gmap.update(zip(xy.image_ids.tolist(), xy.groups.tolist()))
        groups = np.array([gmap[i] for i in al.image_ids.tolist()])
    return al, y, groups, {m: xy.view for m, xy in xys.items()}


def run_ensemble(store, *, config: EnsembleConfig, split, out, experiment: str | None = None,
            seed_group: str | None = None) -> dict:
    """Experiment 3.6 with ``config.mode`` in ``concat``, ``late-fusion``, ``learned-weights``.

    Every per-model or concatenated probe follows the linear protocol (select on val, refit on
    train+val, score test once). Learned weights are fitted on validation probabilities of
    train-only probes, so no validation label was seen by the probes that produce them.
    """
    import time

    from probes.evaluation import finish_experiment
    from probes.knn import task_slug
    from probes.linear import LinearConfig
    from probes.names import resolve_names

    if config.mode not in ENSEMBLE_MODES:
        raise ProbeConfigError(f"mode must be one of {ENSEMBLE_MODES}, got {config.mode!r}")
    if len(config.models) < 2:
        raise ProbeConfigError(f"an ensemble needs at least two models, got {list(config.models)}")
    if config.views is not None and len(config.views) != len(config.models):
        raise ProbeConfigError(f"give one view per model: {len(config.views)} views for {len(config.models)} models")
    t0 = time.perf_counter()
    task = resolve_names(store, config.names, min_images=config.min_images)
    tr, ytr, _, views = _aligned_subset(store, config, task, split, "train")
    va, yva, _, _ = _aligned_subset(store, config, task, split, "val")
    te, yte, gte, _ = _aligned_subset(store, config, task, split, "test")
    t_load = time.perf_counter() - t0
    names = np.asarray(task.names)
    lin = LinearConfig(model="+".join(config.models), names=config.names, weight_decays=config.weight_decays,
                       epochs=config.epochs, device=config.device, random_state=config.random_state)
    extra: dict = {"mode": config.mode, "models": list(config.models), "views": views,
                   "missing_images": {s: {"per_model": a.missing, "dropped": a.n_dropped, "kept": len(a.image_ids)}
                                      for s, a in (("train", tr), ("val", va), ("test", te))},
                   "missing_policy": "images absent from any model are dropped from every model (counted above)"}
    t1 = time.perf_counter()
    if config.mode == "concat":
        sweep = lin.sweep(names).fit(concat_features(tr.features), names[ytr], X_val=concat_features(va.features),
                                     y_val=names[yva])
        scores = sweep.predict_proba(concat_features(te.features))
        extra["best_params"] = sweep.best_params_
    else:
        test_probas, val_probas, best = [], [], {}
        for m, Xtr, Xva, Xte in zip(config.models, tr.features, va.features, te.features):
            sweep = lin.sweep(names).fit(Xtr, names[ytr], X_val=Xva, y_val=names[yva])
            test_probas.append(sweep.predict_proba(Xte))
            best[m] = sweep.best_params_
            if config.mode == "learned-weights":
                val_probas.append(sweep.make_probe().fit(Xtr, names[ytr]).predict_proba(Xva))
        extra["best_params"] = best
        if config.mode == "late-fusion":
            scores = late_fusion(test_probas)
        else:
            lw = LearnedWeights().fit(val_probas, yva)
            scores = lw.predict_proba(test_probas)
            extra["weights"] = dict(zip(config.models, lw.weights_.tolist()))
            extra["weights_fitted_on"] = "val (probabilities of train-only probes)"
    t_fit = time.perf_counter() - t1
    trainval_y = np.concatenate([ytr, yva])
    if config.forced_choice:
        from probes.forced_choice import forced_choice_report

        extra["forced_choice"] = forced_choice_report(scores, yte, train_labels=trainval_y, groups=gte,
                                                      seed=config.random_state, null_repeats=config.null_repeats)
    warnings = []
    if any(a.n_dropped for a in (tr, va, te)):
        warnings.append(f"{te.n_dropped} test images lack an embedding in at least one model and were left out")
    experiment = experiment or f"ensemble-{config.mode}_{'+'.join(config.models)}_{task_slug(config.names)}"
    cfg = {"family": "ensemble", "experiment": experiment, "model": "+".join(config.models),
           **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
           "name_task": task.info(), "probe": {"mode": config.mode, "linear": "LinearSweep per model / on the concat"}}
    extra["seed_group"] = seed_group  # the multi-seed experiment this run belongs to (probes compare)
    return finish_experiment(
        out, experiment=experiment.replace("/", "-"), scores=scores, y_true=yte, names=task.names,
        image_ids=te.image_ids, groups=gte, train_labels=trainval_y, config=cfg, split_info=split.info(),
        store_path=store.path, model_spec={m: store.model_spec(m) for m in config.models},
        timings={"load_s": t_load, "fit_s": t_fit}, name_task=task.spec, n_boot=config.n_boot,
        seed=config.random_state, warnings=warnings, extra=extra,
        log=[f"ensemble {config.mode} of {', '.join(config.models)}: {len(tr.image_ids)} train, "
             f"{len(va.image_ids)} val, {len(te.image_ids)} test aligned rows"])

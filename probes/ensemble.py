"""Model ensembles (experiment 3.6): concatenation, late fusion, learned weights.

Any set of models in one store:

- **A, concat**: rows aligned by image id; each model's block is L2-normalised per row, then
  standardised per column and scaled by ``1 / sqrt(D_m)`` (:class:`BlockScaler`, fitted on the
  training rows), so every block has total variance 1 whatever its width or scale; the probe then
  fits the concatenation as it is (``features="none"``: a per-column standardisation of the whole
  concatenation would give a 1,024-d block twice the weight of a 512-d one under the L2 penalty).
- **B, late fusion**: one probe per model; the ensemble's score is the mean of the per-model
  log-probabilities (each probe's own, unadjusted probabilities).
- **C, learned weights**: ``sum_m w_m * log p_m`` with the weights fitted (minimum log-loss) on
  **out-of-fold** probabilities of train+validation: each model's selected probe (its lambda
  chosen on validation) is refit on K-1 of K identity-disjoint folds of train+validation and
  predicts the held-out fold, so the weights see probabilities of the very probes (same lambda,
  nearly the same rows) that the train+validation refits apply to test.

Images missing from a model (a failed decode, ArCFace's ``no_face``) cannot be scored by every
model: :func:`align_models` keeps the image ids present in all of them and counts the missing
ones per model, and that count goes into summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.exceptions import NotFittedError

from probes.covariates import ProtocolOptions
from probes.errors import ProbeConfigError

if TYPE_CHECKING:
    from probes.names import NameTask

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
    """L2-normalise each block's rows, then concatenate columns (no scaling: see :class:`BlockScaler`)."""
    return np.hstack([l2_normalize(b) for b in blocks]).astype(np.float32)


class BlockScaler:
    """Option A's features: per block, rows L2-normalised, columns standardised, block scaled by 1/sqrt(D_m).

    ``fit(blocks)`` learns each block's column means and standard deviations (on training rows);
    ``transform(blocks)`` returns the concatenation, in which every block has total variance 1.
    """

    def fit(self, blocks) -> BlockScaler:
        self.stats_ = []
        for b in blocks:
            Xn = l2_normalize(b).astype(np.float64)
            self.stats_.append((Xn.mean(0), np.maximum(Xn.std(0), 1e-6), Xn.shape[1]))
        return self

    def transform(self, blocks) -> np.ndarray:
        if not hasattr(self, "stats_"):
            raise NotFittedError("BlockScaler is not fitted; call fit(train_blocks) first")
        if len(blocks) != len(self.stats_):
            raise ProbeConfigError(f"fitted on {len(self.stats_)} blocks, got {len(blocks)}")
        out = [((l2_normalize(b) - mu) / sd / np.sqrt(d)) for b, (mu, sd, d) in zip(blocks, self.stats_)]
        return np.hstack(out).astype(np.float32)


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
class EnsembleConfig(ProtocolOptions):
    """One ensemble experiment over several models of one store (recorded in config.json).

    ``lambdas``, ``tol``: every linear probe's grid and tolerance (None: the defaults).
    ``oof_folds``: folds of the out-of-fold probabilities the learned weights are fitted on.
    ``null_repeats`` with ``forced_choice``: the whole ensemble refit that many times on names
    shuffled across identities (the forced-choice null). ``controls``, ``control_permutations``,
    ``foils``, ``allow_incomplete``: as :class:`~probes.linear_experiment.LinearConfig`'s; each
    within-stratum refit is the whole ensemble of the mode (:class:`EnsembleRows`).
    """

    models: tuple[str, ...]
    mode: str = "concat"
    views: tuple[str | None, ...] | None = None
    names: str | NameTask = "all"
    min_images: int = 0
    lambdas: tuple[float, ...] | None = None
    tol: float | None = None
    oof_folds: int = 5
    n_boot: int = 1000
    device: str = "auto"
    random_state: int = 0


def _aligned_subset(store, config: EnsembleConfig, task, split, subset: str):
    """``(aligned features, y, groups, views, rows, incomplete reasons)`` of one subset."""
    from probes.data import load_xy

    views = config.views or (None,) * len(config.models)
    xys = {m: load_xy(store, m, view=v, split=split, subset=subset, names=task, allow_incomplete=config.allow_incomplete)
           for m, v in zip(config.models, views)}
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
    rows = store.rows_of(al.image_ids)
    incomplete = [f"{m}: {xy.incomplete}" for m, xy in xys.items() if xy.incomplete]
    return al, y, groups, {m: xy.view for m, xy in xys.items()}, rows, incomplete


def experiment_name(config: EnsembleConfig) -> str:
    """The default experiment (folder) name of an ensemble config."""
    from probes.knn import task_slug

    return f"ensemble-{config.mode}_{'+'.join(config.models)}_{task_slug(config.names)}".replace("/", "-")


def _out_of_fold(sweep, X, y_names, groups, *, folds: int, seed: int) -> np.ndarray:
    """Probabilities of each train+validation row from the selected probe refit without its fold."""
    from sklearn.model_selection import GroupKFold

    g = np.arange(len(X)) if groups is None else np.asarray(groups)
    k = min(int(folds), len(np.unique(g)))
    if k < 2:
        raise ProbeConfigError("learned weights need at least two identities in train+validation for out-of-fold "
                               "probabilities")
    P = np.zeros((len(X), len(sweep.classes_)))
    for fit_rows, held in GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y_names, g):
        probe = sweep.make_probe()
        best = sweep.best_estimator_
        P[held] = probe.fit(X[fit_rows], y_names[fit_rows], init=(best.coef_, best.intercept_)).predict_proba(X[held])
    return P


class EnsembleProbe:
    """One ensemble of ``config.mode`` as an estimator over per-model feature blocks.

    ``fit(tr_blocks, y_tr, va_blocks, y_va, groups_tv)``: every probe of the mode on train
    (selection on validation), refit on train+validation (``y_*`` index ``classes``;
    ``groups_tv`` the identities of train+validation, for the out-of-fold folds of the learned
    weights); ``predict(te_blocks) -> (scores, probabilities)`` of the test rows. ``extra_`` and
    ``warnings_`` say what was chosen.
    """

    def __init__(self, config: EnsembleConfig, classes, *, seed: int) -> None:
        self.config = config
        self.classes = np.asarray(classes)
        self.seed = seed

    def _linear(self):
        from probes.linear_experiment import LinearConfig

        c = self.config
        return LinearConfig(model="+".join(c.models), lambdas=c.lambdas, device=c.device, random_state=self.seed,
                            **({} if c.tol is None else {"tol": c.tol}))

    def fit(self, tr_blocks, ytr, va_blocks, yva, gtv) -> EnsembleProbe:
        config, names, lin = self.config, self.classes, self._linear()
        self.extra_, self.warnings_ = {}, []
        if config.mode == "concat":
            self.scaler_ = BlockScaler().fit(tr_blocks)
            self.sweep_ = _without_standardising(lin).sweep(names).fit(
                self.scaler_.transform(tr_blocks), names[ytr], X_val=self.scaler_.transform(va_blocks), y_val=names[yva])
            self.extra_["best_params"] = self.sweep_.best_params_
            self.extra_["concat_features"] = "per block: rows L2-normalised, columns standardised, block / sqrt(D_m)"
            self.warnings_ += self.sweep_.warnings_
            return self
        self.sweeps_, oof, best = [], [], {}
        y_tv = names[np.concatenate([ytr, yva])]
        for m, Xtr, Xva in zip(config.models, tr_blocks, va_blocks):
            sweep = lin.sweep(names).fit(Xtr, names[ytr], X_val=Xva, y_val=names[yva])
            self.warnings_ += [f"{m}: {w}" for w in sweep.warnings_]
            self.sweeps_.append(sweep)
            best[m] = sweep.best_params_
            if config.mode == "learned-weights":
                oof.append(_out_of_fold(sweep, np.concatenate([Xtr, Xva]), y_tv, gtv, folds=config.oof_folds,
                                        seed=self.seed))
        self.extra_["best_params"] = best
        if config.mode == "learned-weights":
            self.weights_ = LearnedWeights().fit(oof, np.concatenate([ytr, yva]))
            self.extra_["weights"] = dict(zip(config.models, self.weights_.weights_.tolist()))
            self.extra_["weights_fitted_on"] = (f"out-of-fold probabilities of train+val ({config.oof_folds} "
                                                "identity-disjoint folds, each model's selected lambda), applied to "
                                                "its train+val refit")
        return self

    def predict(self, te_blocks) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, probabilities)`` of the test rows: the decision and the calibrated probabilities."""
        if self.config.mode == "concat":
            X_te = self.scaler_.transform(te_blocks)
            return self.sweep_.predict_proba_adjusted(X_te), self.sweep_.predict_proba(X_te)
        probas = [s.predict_proba(X) for s, X in zip(self.sweeps_, te_blocks)]
        P = late_fusion(probas) if self.config.mode == "late-fusion" else self.weights_.predict_proba(probas)
        return P, P


def _without_standardising(lin):
    """The concat probe's linear config: the blocks are already on an equal footing (no re-standardising)."""
    import dataclasses

    return dataclasses.replace(lin, features="none")


def _fit_ensemble(config: EnsembleConfig, names, tr, va, te, ytr, yva, gtv, seed: int):
    """Every probe of the mode on train (selection on validation), refit on train+validation.

    Returns ``(scores, probabilities, extra, warnings)`` for the test rows.
    """
    probe = EnsembleProbe(config, names, seed=seed).fit(tr.features, ytr, va.features, yva, gtv)
    scores, proba = probe.predict(te.features)
    return scores, proba, probe.extra_, probe.warnings_


class EnsembleRows:
    """:class:`EnsembleProbe` with the estimator interface of :mod:`probes.controls`.

    An ensemble reads several models' blocks and, for learned weights, the identities of its
    out-of-fold folds, which one feature matrix cannot carry. So its ``X`` is one column of row
    positions into ``blocks`` / ``groups`` (float32 is exact below 2**24 rows), and every fit
    re-runs the whole ensemble of the mode (per-model sweeps, block scaling, out-of-fold weights)
    on the rows it is given.
    """

    def __init__(self, *, classes, config: EnsembleConfig, blocks, groups, seed: int) -> None:
        self.classes = np.asarray(classes)
        self.config = config
        self.blocks = blocks
        self.groups = groups
        self.seed = seed

    @staticmethod
    def positions(n: int) -> np.ndarray:
        """The ``X`` that stands for rows ``0 .. n - 1``."""
        if n >= 2 ** 24:
            raise ProbeConfigError(f"{n} rows exceed what a float32 row position holds exactly (2**24)")
        return np.arange(n, dtype=np.float32)[:, None]

    def _rows(self, X) -> np.ndarray:
        return np.rint(np.asarray(X, dtype=np.float64)[:, 0]).astype(np.int64)

    def fit(self, X, y, *, X_val, y_val) -> EnsembleRows:
        lookup = {c: i for i, c in enumerate(self.classes.tolist())}
        tr, va = self._rows(X), self._rows(X_val)
        ytr = np.array([lookup[s] for s in np.asarray(y).tolist()], dtype=np.int64)
        yva = np.array([lookup[s] for s in np.asarray(y_val).tolist()], dtype=np.int64)
        gtv = None if self.groups is None else np.asarray(self.groups)[np.concatenate([tr, va])]
        self.probe_ = EnsembleProbe(self.config, self.classes, seed=self.seed).fit(
            [b[tr] for b in self.blocks], ytr, [b[va] for b in self.blocks], yva, gtv)
        self.classes_ = self.classes
        return self

    def predict_proba(self, X) -> np.ndarray:
        te = self._rows(X)
        return self.probe_.predict([b[te] for b in self.blocks])[0]


def run_ensemble(store, *, config: EnsembleConfig, split, out, experiment: str | None = None,
            seed_group: str | None = None) -> dict:
    """Experiment 3.6 with ``config.mode`` in ``concat``, ``late-fusion``, ``learned-weights``.

    Every per-model or concatenated probe follows the linear protocol (select on val, refit on
    train+val, score test once). Learned weights are fitted on out-of-fold probabilities of the
    selected probes over train+val (see the module docstring) and applied to their train+val refits.
    """
    import time

    from probes import covariates as cv
    from probes.evaluation import config_record, finish_experiment
    from probes.metrics import balanced_accuracy, top_k_indices
    from probes.names import resolve_names
    from probes.supcon import check_encoder_split

    if config.mode not in ENSEMBLE_MODES:
        raise ProbeConfigError(f"mode must be one of {ENSEMBLE_MODES}, got {config.mode!r}")
    if len(config.models) < 2:
        raise ProbeConfigError(f"an ensemble needs at least two models, got {list(config.models)}")
    if config.views is not None and len(config.views) != len(config.models):
        raise ProbeConfigError(f"give one view per model: {len(config.views)} views for {len(config.models)} models")
    for m in config.models:
        check_encoder_split(store, m, split)
    kinds = cv.foil_kinds(config.foils, config.controls)
    cv.check_controls(store, config.controls, kinds if config.forced_choice else ())
    t0 = time.perf_counter()
    task = resolve_names(store, config.names, min_images=config.min_images)
    tr, ytr, gtr, views, rtr, itr = _aligned_subset(store, config, task, split, "train")
    va, yva, gva, _, rva, iva = _aligned_subset(store, config, task, split, "val")
    te, yte, gte, _, rte, ite = _aligned_subset(store, config, task, split, "test")
    t_load = time.perf_counter() - t0
    names = np.asarray(task.names)
    extra: dict = {"mode": config.mode, "models": list(config.models), "views": views,
                   "missing_images": {s: {"per_model": a.missing, "dropped": a.n_dropped, "kept": len(a.image_ids)}
                                      for s, a in (("train", tr), ("val", va), ("test", te))},
                   "missing_policy": "images absent from any model are dropped from every model (counted above)"}
    t1 = time.perf_counter()
    gtv = None if gtr is None else np.concatenate([gtr, gva])
    scores, proba, fitted, warnings = _fit_ensemble(config, names, tr, va, te, ytr, yva, gtv, config.random_state)
    extra.update(fitted)
    t_fit = time.perf_counter() - t1
    trainval_y = np.concatenate([ytr, yva])
    null_probas, null_labels = [], []
    if config.forced_choice:
        from probes import stats

        for i in range(config.null_repeats):
            y_perm = stats.shuffle_names_across_identities(trainval_y, gtv, seed=config.random_state + i)
            null_probas.append(_fit_ensemble(config, names, tr, va, te, y_perm[:len(ytr)], y_perm[len(ytr):], gtv,
                                             config.random_state + i)[1])
            null_labels.append(y_perm)
    all_rows = np.concatenate([rtr, rva, rte])
    all_y = np.concatenate([ytr, yva, yte])
    subset = np.repeat(np.array([0, 1, 2]), [len(ytr), len(yva), len(yte)])
    if config.forced_choice:
        from probes.forced_choice import forced_choice_report

        extra["forced_choice"] = forced_choice_report(
            proba, yte, train_labels=trainval_y, groups=gte, seed=config.random_state,
            null_probas=null_probas or None, null_train_labels=null_labels or None, foil_kinds=kinds,
            name_values=cv.foil_values(store, kinds, names=task.names, y=all_y, rows=all_rows, subset=subset))
    if any(a.n_dropped for a in (tr, va, te)):
        warnings.append(f"{te.n_dropped} test images lack an embedding in at least one model and were left out")
    experiment = experiment or experiment_name(config)
    log = [f"ensemble {config.mode} of {', '.join(config.models)}: {len(tr.image_ids)} train, "
           f"{len(va.image_ids)} val, {len(te.image_ids)} test aligned rows"]
    controls, t_controls = None, 0.0
    if config.controls:
        blocks = [np.concatenate(parts) for parts in zip(tr.features, va.features, te.features)]
        g_all = None if gtr is None else np.concatenate([gtr, gva, gte])
        controls, t_controls = cv.run_controls(
            store, covariates=config.controls,
            factory=lambda classes: EnsembleRows(classes=classes, config=config, blocks=blocks, groups=g_all,
                                                 seed=config.random_state),
            X=EnsembleRows.positions(len(all_y)), y=all_y, rows=all_rows, subset=subset, groups=g_all,
            names=task.names, observed=balanced_accuracy(yte, top_k_indices(scores, k=1)[:, 0]),
            n_permutations=config.control_permutations, n_boot=config.n_boot, seed=config.random_state,
            refits=f"the whole {config.mode} ensemble (every per-model sweep"
                   + (", the out-of-fold weights" if config.mode == "learned-weights" else "")
                   + (", the block scaling and the concatenated sweep" if config.mode == "concat" else "") + ")",
            log=log.append)
    cfg = {"family": "ensemble", "experiment": experiment, "model": "+".join(config.models), **config_record(config),
           "name_task": task.info(), "probe": {"mode": config.mode, "linear": "LinearSweep per model / on the concat"}}
    extra["seed_group"] = seed_group  # the multi-seed experiment this run belongs to (probes compare)
    from probes.linear_experiment import accepts_probabilities

    kwargs = {"probabilities": proba} if accepts_probabilities() else {}
    return finish_experiment(
        out, experiment=experiment.replace("/", "-"), scores=scores, y_true=yte, names=task.names,
        image_ids=te.image_ids, groups=gte, train_labels=trainval_y, config=cfg, split_info=split.info(),
        store_path=store.path, model_spec={m: store.model_spec(m) for m in config.models},
        timings={"load_s": t_load, "fit_s": t_fit, "controls_s": t_controls}, name_task=task, n_boot=config.n_boot,
        seed=config.random_state, warnings=warnings, extra=extra, log=log, controls=controls,
        incomplete=list(dict.fromkeys(itr + iva + ite)), **kwargs)

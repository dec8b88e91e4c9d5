"""The linear-probe experiment: a :class:`LinearConfig`, one split in, one result folder out.

:func:`run_linear` follows the protocol: the :class:`~probes.linear.LinearSweep` path is
selected on the split's validation rows, the chosen head is refit on train+validation and scores
the test rows once. With ``permutations`` N > 0 the whole procedure is repeated N times with
names shuffled across train+validation identities (the permutation null); those refits' test
probabilities are also the forced-choice null. :func:`run_seeds` repeats any family's runner
over one split per seed.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.covariates import ProtocolOptions
from probes.linear import DEFAULT_TOL, LinearSweep
from probes.names import NameTask, task_spec

__all__ = ["LinearConfig", "default_experiment_name", "run_linear", "run_linear_seeds", "run_seeds"]

SEED_METRICS = ("balanced_accuracy", "accuracy", "top5_accuracy", "macro_f1", "prediction_cv")


@dataclass(frozen=True)
class LinearConfig(ProtocolOptions):
    """Everything that defines one linear-probe experiment (recorded in config.json).

    ``lambdas`` None is the default 15-value grid (1e-6 .. 10); ``solver``, ``tol``,
    ``max_iter`` and ``search`` are :class:`~probes.linear.LinearSweep`'s; ``lr``,
    ``max_epochs`` and ``batch_size`` matter only with ``solver="adam"``. ``permutations``:
    whole-fit refits on names shuffled across identities; with ``forced_choice`` they are also its
    null (``null_repeats`` refits are run for it when ``permutations`` is 0). ``foils``: the
    forced-choice protocols (``same-COV`` is added for every control). ``controls``: covariates
    whose controls (:mod:`probes.controls`) go into summary.json, with ``control_permutations``
    within-stratum refits of the whole sweep. ``allow_incomplete``: proceed on a model with rows
    still pending (recorded). ``names`` is a spec or a resolved :class:`~probes.names.NameTask`.
    """

    model: str
    view: str | None = None
    names: str | NameTask = "all"
    min_images: int = 0
    balance: str = "none"
    features: str = "standardize"
    lambdas: tuple[float, ...] | None = None
    solver: str = "lbfgs"
    tol: float = DEFAULT_TOL
    max_iter: int = 1000
    search: str = "coarse-to-fine"
    lr: float = 1e-3
    max_epochs: int = 100
    batch_size: int = 1024
    taus: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    scoring: str = "balanced_accuracy"
    extend_grid: bool = True
    permutations: int = 0
    n_boot: int = 1000
    device: str = "auto"
    n_threads: int | None = None
    save_embeddings: bool = False
    random_state: int = 0

    def sweep(self, classes) -> LinearSweep:
        """The unfitted sweep this config describes."""
        return LinearSweep(
            self.lambdas, solver=self.solver, tol=self.tol, max_iter=self.max_iter, search=self.search, lr=self.lr,
            max_epochs=self.max_epochs, batch_size=self.batch_size, features=self.features, balance=self.balance,
            taus=self.taus, scoring=self.scoring, extend_grid=self.extend_grid, classes=np.asarray(classes),
            device=self.device, n_threads=self.n_threads, random_state=self.random_state,
        )


def default_experiment_name(config: LinearConfig) -> str:
    """``{model}[-{view}]_linear_{names}[_{balance}]``, a plain folder name."""
    from probes.knn import task_slug

    task = task_slug(config.names)
    parts = [config.model + (f"-{config.view}" if config.view else ""), "linear", task]
    if config.balance != "none":
        parts.append(config.balance)
    return "_".join(parts).replace("/", "-")


def accepts_probabilities() -> bool:
    """Whether :func:`probes.evaluation.finish_experiment` takes the calibrated ``probabilities=``."""
    from probes.evaluation import finish_experiment

    return "probabilities" in inspect.signature(finish_experiment).parameters


def sweep_record(sweep: LinearSweep) -> dict:
    """What summary.json's ``probe`` says about a fitted sweep (the estimator, its selection, convergence)."""
    est = sweep.best_estimator_
    return {
        "estimator": "LinearSweep",
        "objective": "mean cross-entropy + (lambda/2) ||W||^2, intercept unpenalised; "
                     "scikit-learn LogisticRegression(C = 1 / (lambda * n))",
        "solver": sweep.solver,
        "tol": sweep.tol,
        "best_params": sweep.best_params_,
        "best_val_score": sweep.best_score_,
        "scoring": sweep.scoring,
        "validation": sweep.validation_,
        "grid": sweep.grid_,
        "grid_extensions": sweep.grid_extensions_,
        "edge_optimum": sweep.edge_optimum_,
        "path_stopped": sweep.path_stopped_,
        "converged": sweep.converged_,
        "refit": {"lambda": est.l2, "C": est.C_, "tau": est.tau if est.balance == "logit-adjust" else None,
                  "n_iter": est.n_iter_, "grad_norm": est.grad_norm_ / est.grad_scale_, "converged": est.converged_,
                  "message": est.solver_message_},
        "device": est.device_,
    }


def run_linear(
    store, *, config: LinearConfig, split, out, experiment: str | None = None, seed_group: str | None = None
) -> dict:
    """Run one linear-probe experiment on one split and write its result folder.

    ``scores`` of the result are the probe's decision (logit-adjusted with
    ``balance="logit-adjust"``: top-1 and top-5 follow it); the model's own probabilities go to
    the calibration metrics and to forced choice. ``seed_group`` names the multi-seed experiment
    this run belongs to (``probes compare`` reports mean and spread over a group). Returns the
    summary (see :func:`probes.evaluation.finish_experiment`).
    """
    from probes import covariates as covs
    from probes import stats
    from probes.data import load_xy
    from probes.evaluation import config_record, finish_experiment
    from probes.metrics import balanced_accuracy, top_k_indices
    from probes.names import resolve_names
    from probes.supcon import check_encoder_split

    experiment = experiment or default_experiment_name(config)
    check_encoder_split(store, config.model, split)
    kinds = covs.foil_kinds(config.foils, config.controls)
    covs.check_controls(store, config.controls, kinds if config.forced_choice else ())
    log = [f"linear probe {experiment}: store {store.path} model {config.model} split {split.name}"]
    t0 = time.perf_counter()
    task = resolve_names(store, config.names, min_images=config.min_images)
    kw = dict(view=config.view, split=split, names=task, allow_incomplete=config.allow_incomplete)
    tr = load_xy(store, config.model, subset="train", **kw)
    va = load_xy(store, config.model, subset="val", **kw)
    te = load_xy(store, config.model, subset="test", **kw)
    t_load = time.perf_counter() - t0
    log.append(f"rows train {len(tr)} val {len(va)} test {len(te)}, names {len(task.names)}, dim {tr.X.shape[1]}")
    names = np.asarray(task.names)
    sweep = config.sweep(names).fit(tr.X, names[tr.y], X_val=va.X, y_val=names[va.y])
    cv = sweep.cv_results_
    log.append(
        f"device {sweep.best_estimator_.device_}; path of {len(cv['param_lambda'])} lambda fits "
        f"({sum(cv['n_iter'])} L-BFGS iterations, converged: {all(cv['converged'])}); best {sweep.best_params_} "
        f"val {config.scoring} {sweep.best_score_:.4f}; refit {sweep.best_estimator_.n_iter_} iterations; "
        f"grid extensions {sweep.grid_extensions_}" + (f"; {sweep.path_stopped_}" if sweep.path_stopped_ else "")
    )
    t1 = time.perf_counter()
    scores = sweep.predict_proba_adjusted(te.X)
    proba = sweep.predict_proba(te.X)
    t_pred = time.perf_counter() - t1
    trainval_y = np.concatenate([tr.y, va.y])
    warnings = list(sweep.warnings_)

    # Refits on names shuffled across identities: the permutation null and the forced-choice null.
    n_null = config.permutations if config.permutations > 0 else (config.null_repeats if config.forced_choice else 0)
    null_probas, null_labels, null_unconverged = [], [], 0
    permutation = None
    if n_null > 0:
        both_groups = None if tr.groups is None else np.concatenate([tr.groups, va.groups])
        X_tv = np.concatenate([tr.X, va.X])
        n_tr = len(tr)

        def fit_and_score(y_perm, i):
            nonlocal null_unconverged
            s = config.sweep(names).fit(X_tv[:n_tr], names[y_perm[:n_tr]], X_val=X_tv[n_tr:], y_val=names[y_perm[n_tr:]])
            null_unconverged += not s.converged_
            null_probas.append(s.predict_proba(te.X))
            null_labels.append(y_perm)
            ba = balanced_accuracy(te.y, np.argmax(s.decision_function(te.X), axis=1))
            log.append(f"shuffled-name refit {i}: lambda {s.best_params_['lambda']:.3g}, test balanced accuracy {ba:.4f}")
            return ba

        t2 = time.perf_counter()
        null = stats.run_permutation_null(fit_and_score, trainval_y, both_groups, n=n_null, seed=config.random_state)
        if config.permutations > 0:
            permutation = {"null": null, "metric": "balanced_accuracy", "seconds": time.perf_counter() - t2}
        if null_unconverged:
            warnings.append(f"{null_unconverged} of {n_null} shuffled-name refits did not converge everywhere")
    cfg = {
        "family": "linear",
        "experiment": experiment,
        **config_record(config),
        "view": te.view,
        "name_task": task.info(),
        "probe": sweep_record(sweep),
    }
    extra = {"cv_results": sweep.cv_results_, "seed_group": seed_group}
    rows = covs.stack_subsets(tr, va, te)
    if config.forced_choice:
        from probes.forced_choice import forced_choice_report

        extra["forced_choice"] = forced_choice_report(
            proba, te.y, train_labels=trainval_y, groups=te.groups, seed=config.random_state,
            null_probas=null_probas or None, null_train_labels=null_labels or None, foil_kinds=kinds,
            name_values=covs.foil_values(store, kinds, names=task.names, y=rows["y"], rows=rows["rows"],
                                       subset=rows["subset"]))
    controls, t_controls = None, 0.0
    if config.controls:
        controls, t_controls = covs.run_controls(
            store, covariates=config.controls, factory=lambda classes: covs.AdjustedDecision(config.sweep(classes)),
            names=task.names, observed=balanced_accuracy(te.y, top_k_indices(scores, k=1)[:, 0]),
            n_permutations=config.control_permutations, n_boot=config.n_boot, seed=config.random_state,
            refits="the whole lambda sweep, selection on validation and the train+validation refit", log=log.append,
            **rows)
    kwargs = {"probabilities": proba} if accepts_probabilities() else {}
    return finish_experiment(
        out,
        experiment=experiment,
        scores=scores,
        y_true=te.y,
        names=task.names,
        image_ids=te.image_ids,
        groups=te.groups,
        train_labels=trainval_y,
        config=cfg,
        split_info=split.info(),
        store_path=store.path,
        model_spec=store.model_spec(config.model),
        timings={
            "load_s": t_load, "sweep_s": sweep.fit_time_, "refit_s": sweep.refit_time_,
            "predict_s": t_pred, "permutation_s": permutation["seconds"] if permutation else 0.0,
            "controls_s": t_controls,
        },
        name_task=task,
        embeddings=te.X if config.save_embeddings else None,
        n_boot=config.n_boot,
        seed=config.random_state,
        permutation=permutation,
        warnings=warnings,
        extra=extra,
        log=log,
        controls=controls,
        incomplete=covs.incomplete_reasons(tr, va, te),
        **kwargs,
    )


def run_seeds(store, *, run, config, seeds, out, experiment: str, by: str = "identity", val: float = 0.1,
              test: float = 0.2) -> dict:
    """``run(store, config=, split=, out=, experiment=, seed_group=)`` over one split per seed.

    Per-seed folders are ``track3_{experiment}-seed{k}``, all in the seed group ``experiment``.
    Returns ``{"experiment", "seeds", "per_seed", "mean", "std"}`` over the headline metrics and
    writes it to ``out/track3_{experiment}-seeds.json``.
    """
    from probes.splits import get_split

    seeds = [int(s) for s in seeds]
    per_seed = []
    for s in seeds:
        split = get_split(store, by=by, seed=s, val=val, test=test)
        per_seed.append(run(store, config=config, split=split, out=out, experiment=f"{experiment}-seed{s}",
                            seed_group=experiment))
    table = {k: np.array([p["metrics"][k] for p in per_seed]) for k in SEED_METRICS}
    agg = {
        "experiment": experiment,
        "seeds": seeds,
        "split": {"by": by, "val": val, "test": test},
        "mean": {k: float(v.mean()) for k, v in table.items()},
        "std": {k: float(v.std(ddof=1)) if v.size > 1 else 0.0 for k, v in table.items()},
        "per_seed": [
            {"seed": s, "path": p["path"], "split": p["split"]["name"], **{k: p["metrics"][k] for k in SEED_METRICS}}
            for s, p in zip(seeds, per_seed)
        ],
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"track3_{experiment}-seeds.json").write_text(json.dumps(agg, indent=2) + "\n")
    return agg


def run_linear_seeds(store, *, config: LinearConfig, seeds, out, experiment: str | None = None,
                     by: str = "identity", val: float = 0.1, test: float = 0.2) -> dict:
    """:func:`run_linear` over one split per seed (see :func:`run_seeds`)."""
    return run_seeds(store, run=run_linear, config=config, seeds=seeds, out=out,
                     experiment=experiment or default_experiment_name(config), by=by, val=val, test=test)

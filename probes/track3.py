"""``probes track3``: the whole Track 3 plan against one store, in the plan's priority order.

Every experiment is declared as data in :mod:`probes.experiments`. For each experiment, name
task and seed, :func:`run_track3`

1. checks that the experiment's models (and, for zero-shot, its text embeddings) are in the
   store and complete, and otherwise records it as *skipped* with the reason and the command
   that would add the missing input;
2. computes a fingerprint of its inputs (the stored model specs and their ok-row counts, the
   split's content hash, the experiment's config, the text embeddings) and records it as
   *unchanged* when the result folder already holds a complete result with that fingerprint;
3. otherwise calls the probe family's ``run_*`` function, which writes the plan's result folder
   ``track3_{experiment}_{task}`` (``-seed{k}`` with several seeds), and saves the fingerprint
   (``fingerprint.json``) and the Track 3 lines of its ``run.log`` next to it.

Finally :func:`probes.compare.compare_results` writes ``track3_comparison.md`` over every result
folder, and a "Track 3 plan status" section (what ran, what was unchanged, what was skipped and
why) is appended to it; the same status is written to ``track3_status.json`` and the whole
session to ``track3_run.log``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from probes.cli_common import ProbeCommand
from probes.experiments import EXPERIMENTS, Experiment, get_experiment

__all__ = ["RunRecord", "Track3Report", "experiment_config", "input_fingerprint", "run_track3", "track3_command"]

logger = logging.getLogger("probes.track3")

FINGERPRINT_FILE = "fingerprint.json"
FINGERPRINT_VERSION = 1
STATUS_FILE = "track3_status.json"
SESSION_LOG = "track3_run.log"
STATUS_HEADING = "## Track 3 plan status"
# The plan's linear experiments run a permutation null (whole fit repeated with names shuffled
# across identities) and forced choice with a shuffled-name null by default, so the report can
# say whether a signal is beyond name frequency without a second command. Small counts keep the
# cost at ~19 extra fits per experiment; the report states the smallest p they can give. The
# permutation refits also serve as the forced-choice null (null_repeats only matters with
# permutations 0: that many refits are then run for forced choice alone).
DEFAULT_PERMUTATIONS = 19
DEFAULT_NULL_REPEATS = 0
# The covariate the plan's linear experiments are controlled for when the store has it
# (`facestore covariates STORE --name-gender`): names carry gender, and so do faces.
DEFAULT_CONTROL = "name_gender"
SPLIT_KINDS = ("identity", "pseudo", "image")
# Runtime choices that do not change what is computed (beyond float round-off), so changing
# them does not invalidate a result.
_RUNTIME_FIELDS = ("device", "n_threads")


@dataclass(frozen=True)
class RunRecord:
    """What happened to one (experiment, name task, seed).

    ``status`` is ``ran`` (result written now), ``unchanged`` (an up-to-date result was already
    there), ``skipped`` (an input is missing: ``reason`` says which and how to add it) or
    ``failed`` (the probe raised a probe or store error: ``reason`` is its message).
    """

    experiment: str
    plan_ref: str
    group: str
    task: str
    seed: int
    status: str
    reason: str = ""
    folder: str = ""
    models: tuple[str, ...] = ()
    balanced_accuracy: float | None = None
    chance: float | None = None
    accuracy: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = list(self.models)
        return d


@dataclass(frozen=True)
class Track3Report:
    """The outcome of :func:`run_track3`: every record, and where the report is."""

    out: Path
    comparison: Path
    records: tuple[RunRecord, ...]
    seconds: float

    def by_status(self, status: str) -> list[RunRecord]:
        return [r for r in self.records if r.status == status]

    @property
    def ok(self) -> bool:
        """True when no experiment failed (skipped ones are fine: their inputs are absent)."""
        return not self.by_status("failed")


# --------------------------------------------------------------------------- configs


def _family_config_class(family: str):
    if family == "linear":
        from probes.linear_experiment import LinearConfig

        return LinearConfig
    if family == "knn":
        from probes.knn import KNNConfig

        return KNNConfig
    if family == "ensemble":
        from probes.ensemble import EnsembleConfig

        return EnsembleConfig
    if family == "supcon":
        from probes.supcon import SupConConfig

        return SupConConfig
    from probes.zeroshot import ZeroShotConfig

    return ZeroShotConfig


def runs_nulls(exp: Experiment) -> bool:
    """True for the plan's linear experiments (and its CLIP linear baseline): they get the
    permutation null and forced choice by default."""
    return exp.family == "linear" and (exp.group == "plan" or exp.plan_ref == "baseline")


def experiment_config(exp: Experiment, *, models: Sequence[str], task, seed: int = 0, device: str = "auto",
                      n_boot: int = 1000, permutations: int = 0, null_repeats: int = 0, controls: Sequence[str] = (),
                      control_permutations: int = 99, allow_incomplete: bool = False):
    """The family config (``LinearConfig``, ``KNNConfig``, ...) that runs ``exp`` on ``task``.

    ``models`` are the store models it runs on (for an ensemble, the present subset).
    ``task`` is a names spec or a resolved :class:`~probes.names.NameTask` (a within-value task).
    ``seed`` seeds the probe's initialisation and the bootstrap; the split has its own seed.
    ``permutations`` / ``null_repeats``: for :func:`runs_nulls` experiments, the whole-fit
    permutation null and forced choice with that many shuffled-name repeats (0: neither);
    ``controls``: for the same experiments, the covariate controls with
    ``control_permutations`` within-stratum refits; an experiment's own options override them.
    ``allow_incomplete`` runs on models with rows still pending (recorded in every result).
    """
    cls = _family_config_class(exp.family)
    fields = {f.name for f in dataclasses.fields(cls)}
    opts = exp.option_dict()
    kw: dict[str, Any] = {"names": task, "n_boot": n_boot}
    if "device" in fields:  # zero-shot is a matrix product on the CPU: no device
        kw["device"] = device
    if exp.family == "ensemble":
        kw["models"] = tuple(models)
    else:
        kw["model"] = models[0]
        kw["view"] = exp.view
    if exp.family == "zeroshot":
        kw["template_set"] = exp.template_set
    if exp.family == "supcon":
        from probes.supcon import SupConHeadConfig

        head_fields = {f.name for f in dataclasses.fields(SupConHeadConfig)}
        head_opts = {k: opts.pop(k) for k in list(opts) if k in head_fields and k not in fields}
        kw["head"] = SupConHeadConfig(**{**head_opts, "seed": seed})
    elif "random_state" in fields:
        kw["random_state"] = seed
    if runs_nulls(exp) and {"permutations", "forced_choice", "null_repeats"} <= fields:
        kw["permutations"] = int(permutations)
        kw["forced_choice"] = permutations > 0 or null_repeats > 0
        kw["null_repeats"] = int(null_repeats)
    if runs_nulls(exp) and controls and "controls" in fields:
        kw["controls"] = tuple(controls)
        kw["control_permutations"] = int(control_permutations)
    if allow_incomplete and "allow_incomplete" in fields:
        kw["allow_incomplete"] = True
    unknown = sorted(set(opts) - fields)
    if unknown:
        raise ValueError(f"experiment {exp.name!r}: options {unknown} are not fields of {cls.__name__} "
                         f"({', '.join(sorted(fields))})")
    kw.update(opts)
    return cls(**kw)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def input_fingerprint(store, exp: Experiment, config, split, *, models: Sequence[str]) -> tuple[str, dict]:
    """``(sha256, inputs)`` of everything an experiment's result depends on.

    Inputs: the experiment's name and family, its family config (without runtime fields such as
    the device), for every model the resolved spec stored with the vectors and the number of
    ok rows, the split's name and content hash, for zero-shot a hash of the stored text
    embeddings with their templates and names, and for every covariate the result uses
    (``--control``, a within-value task, same-covariate foils) a hash of its values and its attrs.
    """
    from probes.covariates import covariate_fingerprint
    from probes.forced_choice import SAME_PREFIX, is_same_covariate
    from probes.names import NameTask

    cfg = _jsonable(config)
    for k in _RUNTIME_FIELDS:
        cfg.pop(k, None)
    status = {m: store.status(m) for m in models}
    inputs: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "experiment": exp.name,
        "family": exp.family,
        "config": cfg,
        "models": {m: {"spec": _jsonable(store.model_spec(m)), "ok_rows": int((status[m] == 1).sum()),
                       "rows": int(status[m].size)} for m in models},
        "split": {"name": split.name, "hash": split.hash},
    }
    used = list(getattr(config, "controls", ()) or ())
    if isinstance(getattr(config, "names", None), NameTask) and config.names.within:
        used.append(config.names.within[0])
    if getattr(config, "forced_choice", False):
        used += [k[len(SAME_PREFIX):] for k in getattr(config, "foils", ()) if is_same_covariate(k)]
    if used:
        inputs["covariates"] = {c: covariate_fingerprint(store, c) for c in sorted(set(used))}
    if exp.family == "zeroshot":
        text = store.text_embeddings(models[0], exp.template_set)
        h = hashlib.sha256(np.ascontiguousarray(text.embeddings, dtype=np.float32).tobytes())
        h.update(json.dumps([list(text.names), list(text.templates), text.logit_scale, text.logit_bias]).encode())
        inputs["text"] = {"template_set": exp.template_set, "sha256": h.hexdigest()}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest, inputs


# --------------------------------------------------------------------------- availability


def _model_problem(store, model: str, stored: set[str], *, allow_incomplete: bool = False) -> str | None:
    if model not in stored:
        return f"model {model} is not in the store"
    st = store.status(model)
    pending = int((st == 0).sum())
    if pending and not allow_incomplete:
        return (f"model {model} is incomplete ({pending} of {st.size} rows pending); finish it with "
                f"{store.fix_command(model)}, or run with --allow-incomplete to use the rows written so far")
    if not int((st == 1).sum()):
        return f"model {model} has no successfully embedded image (see `facestore info`)"
    return None


def _encoder_split_problem(store, models: Sequence[str], split, *, seed: int) -> str | None:
    """Why ``split`` must not probe one of ``models`` (a SupCon encoder trained on another split), or None.

    The encoder's training images are its split's train rows, so another split's test people
    were (mostly) among them: probing it there measures memorised people. The store holds one
    ``supcon-resnet50`` group, i.e. one encoder, so only its own split can run.
    """
    from probes.supcon import encoder_split

    for m in models:
        trained = encoder_split(store.model_spec(m))
        if trained is None or trained["hash"] == split.hash:
            continue
        return (f"model {m} is a SupCon encoder trained on the training identities of split {trained.get('name')}; "
                f"probing it on split {split.name} (seed {seed}) would test it on people it was trained on (test "
                f"leakage). Train one encoder per seed: probes supcon --store STORE --train-encoder --seed {seed} "
                f"--checkpoint CKPT_{seed}, then facestore build --model {m} --weights CKPT_{seed} into a store of "
                f"its own and run probes track3 --seed {seed} on it")
    return None


def _available_models(store, exp: Experiment, stored: set[str], *,
                      allow_incomplete: bool = False) -> tuple[tuple[str, ...], str | None]:
    """The models ``exp`` runs on, or ``((), reason)`` when it cannot run on this store."""
    problems = {m: _model_problem(store, m, stored, allow_incomplete=allow_incomplete) for m in exp.models}
    present = tuple(m for m in exp.models if problems[m] is None)
    if exp.family == "ensemble":
        need = exp.min_models or len(exp.models)
        if len(present) < need:
            missing = "; ".join(p for p in problems.values() if p)
            return (), (f"needs {need} of {', '.join(exp.models)}, {len(present)} usable ({missing}); "
                        f"add them with: {exp.how_to_add}")
        return present, None
    problem = problems[exp.models[0]]
    if problem:
        return (), problem + (f"; add it with: {exp.how_to_add}" if "not in the store" in problem else "")
    views = store.views(exp.models[0])
    if exp.view is not None and exp.view not in views:
        return (), (f"model {exp.models[0]} in the store has no view {exp.view!r} (it has {', '.join(views)}); "
                    "an imported group must use the registry's view names")
    if exp.family == "zeroshot" and exp.template_set not in store.text_template_sets(exp.models[0]):
        from probes.zeroshot import no_text_reason

        return (), no_text_reason(exp.models[0], exp.template_set)
    return present, None


def resolve_split_by(store, by: str) -> str:
    """``--by identity|pseudo|image`` (or ``pseudo:NAME``) as the ``by`` of :func:`probes.splits.get_split`.

    ``identity`` needs the dataset's identities; a store without them needs pseudo-identities
    first (``probes identities``, then ``pseudo``) or an explicit ``image``, whose results are
    controls with a leakage warning.
    """
    from probes.errors import ProbeConfigError

    kind, _, name = by.partition(":")
    if kind == "pseudo-identity":
        kind = "pseudo"
    if kind not in SPLIT_KINDS:
        raise ProbeConfigError(f"--by must be one of {', '.join(SPLIT_KINDS)} (or pseudo:NAME), got {by!r}")
    has_ids = store.index.identities is not None
    derived = [s for s in store.identity_sources if s != "identity"]
    if kind == "identity":
        if not has_ids:
            raise ProbeConfigError(
                f"{store.path} has no identities, so identity-disjoint splits are impossible. Derive "
                "pseudo-identities first (`probes identities --store S --model arcface-r50 --threshold T`) and run "
                "with `--by pseudo`, or accept image-level splits explicitly with `--by image` (every result is "
                "then a control with a leakage warning, never ranked)"
                + (f"; pseudo-identity sets already here: {', '.join(derived)}" if derived else ""))
        return "identity"
    if kind == "image":
        return "image"
    if not derived:
        raise ProbeConfigError(f"{store.path} has no pseudo-identities; make them with `probes identities --store S "
                               "--model arcface-r50 --threshold T`" + (" (or use --by identity: the store has "
                                                                        "identities)" if has_ids else ""))
    if name:
        if name not in derived:
            raise ProbeConfigError(f"no pseudo-identity set {name!r}; have: {', '.join(derived)}")
        return f"pseudo-identity:{name}"
    if len(derived) > 1:
        raise ProbeConfigError(f"several pseudo-identity sets ({', '.join(derived)}): choose one with --by pseudo:NAME")
    return f"pseudo-identity:{derived[0]}"


# --------------------------------------------------------------------------- running


def _run_family(store, exp: Experiment, config, split, out: Path, experiment: str, seed_group: str | None) -> dict:
    if exp.family == "linear":
        from probes.linear_experiment import run_linear

        return run_linear(store, config=config, split=split, out=out, experiment=experiment, seed_group=seed_group)
    if exp.family == "knn":
        from probes.knn import run_knn

        return run_knn(store, config=config, split=split, out=out, experiment=experiment,
                       seed_group=seed_group)
    if exp.family == "ensemble":
        from probes.ensemble import run_ensemble

        return run_ensemble(store, config=config, split=split, out=out, experiment=experiment,
                        seed_group=seed_group)
    if exp.family == "supcon":
        from probes.supcon import run_supcon_head

        return run_supcon_head(store, config=config, split=split, out=out, experiment=experiment,
                               seed_group=seed_group)
    from probes.zeroshot import run_zeroshot

    return run_zeroshot(store, config=config, split=split, out=out, experiment=experiment,
                        seed_group=seed_group)


def _read_fingerprint(folder: Path) -> str | None:
    path = folder / FINGERPRINT_FILE
    if not (path.is_file() and (folder / "summary.json").is_file() and (folder / "predictions.npy").is_file()):
        return None
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (json.JSONDecodeError, AttributeError):
        return None


def _headline(summary: dict) -> dict:
    return {"balanced_accuracy": summary["metrics"]["balanced_accuracy"], "chance": summary["chance"]["uniform"],
            "accuracy": summary["metrics"]["accuracy"]}


def _select(only: Sequence[str] | None) -> tuple[Experiment, ...]:
    if not only:
        return EXPERIMENTS
    chosen = {get_experiment(n).name for n in only}  # unknown names raise with the list
    return tuple(e for e in EXPERIMENTS if e.name in chosen)


def run_track3(
    store,
    out: str | Path,
    *,
    names: Sequence[str] = ("top30", "all"),
    seeds: int = 1,
    seed: int = 0,
    only: Sequence[str] | None = None,
    device: str = "auto",
    n_boot: int = 1000,
    force: bool = False,
    plots: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    by: str = "identity",
    permutations: int = DEFAULT_PERMUTATIONS,
    null_repeats: int = DEFAULT_NULL_REPEATS,
    reference: str | None = None,
    correction: str = "holm",
    controls: Sequence[str] | None = None,
    control_permutations: int | None = None,
    within: str | None = None,
    allow_incomplete: bool = False,
) -> Track3Report:
    """Run the Track 3 plan on ``store`` (a path or an open store); write results under ``out``.

    ``names``: the name tasks (``all``, ``top30``, any ``topK``, a file of names); experiments
    that fix their own task (``arcface_500`` runs ``all``) ignore it. ``seeds``: K
    identity-disjoint splits (seeds ``seed`` .. ``seed + K - 1``); with K > 1 folders end in
    ``-seed{k}`` and the linear experiments are grouped for mean and spread in the comparison.
    ``only``: experiment names to run (default: all of :data:`probes.experiments.EXPERIMENTS`).
    ``force`` re-runs experiments whose inputs did not change. ``echo`` receives one line per
    step (default: the ``probes.track3`` logger). ``by``: ``identity`` (default; a store without
    identities is refused with the two ways out), ``pseudo`` (the store's pseudo-identities,
    ``pseudo:NAME`` when there are several) or ``image`` (image-level splits: every result is a
    control). ``permutations`` / ``null_repeats``: the nulls of the plan's linear experiments
    (:func:`runs_nulls`; 0 turns them off). ``reference`` / ``correction`` go to
    :func:`probes.compare.compare_results`.

    ``controls``: covariates whose controls (:mod:`probes.controls`: oracle, from-face and the
    within-stratum null) the plan's linear experiments run; None (the default) runs
    ``name_gender`` when the store has it and nothing otherwise, ``()`` none.
    ``control_permutations``: the within-stratum refits (default 99, so p can reach 0.01).
    ``within``: a covariate whose values each get the plan's linear experiments on their own
    names (folders ``track3_{experiment}_{task}_within-{covariate}-{value}``); values with too
    few names or identities are recorded as skipped with the reason. ``allow_incomplete`` runs
    on models with rows still pending, and every result records it.
    """
    from tqdm.auto import tqdm

    from facestore import open_store
    from facestore.errors import FacestoreError
    from probes.covariates import (DEFAULT_CONTROL_PERMUTATIONS, check_controls, within_experiment, within_tasks)
    from probes.errors import ProbeConfigError, ProbeError
    from probes.knn import task_slug
    from probes.names import resolve_names
    from probes.splits import get_split

    if seeds < 1:
        raise ProbeConfigError(f"seeds must be >= 1, got {seeds}")
    if permutations < 0 or null_repeats < 0:
        raise ProbeConfigError(f"permutations and null_repeats must be >= 0, got {permutations} and {null_repeats}")
    n_control = DEFAULT_CONTROL_PERMUTATIONS if control_permutations is None else int(control_permutations)
    if n_control < 1:
        raise ProbeConfigError(f"control_permutations must be >= 1 (99 lets p reach 0.01), got {control_permutations}")
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ProbeConfigError("give at least one name task, e.g. names=('top30', 'all')")
    t_start = time.perf_counter()
    st = store if hasattr(store, "model_spec") else open_store(store, mode="a")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    session_log = out / SESSION_LOG
    emit = echo or logger.info

    def say(line: str) -> None:
        emit(line)
        with session_log.open("a", encoding="utf-8") as fh:
            fh.write(f"{_dt.datetime.now().isoformat(timespec='seconds')} {line}\n")

    experiments = _select(only)
    split_by = resolve_split_by(st, by)
    stored = set(st.models)
    say(f"track3: store {st.path} ({st.n} images, models: {', '.join(sorted(stored)) or 'none'}); "
        f"{len(experiments)} experiments, name tasks {', '.join(names)}, {seeds} seed(s), splits by {split_by} "
        f"-> {out}")
    if split_by == "image":
        say("warning: image-level splits: the same person can be in train and test; every result is reported as "
            "a control with a leakage warning, never ranked")
    if controls is None:
        controls = (DEFAULT_CONTROL,) if DEFAULT_CONTROL in st.index.covariates else ()
        if controls:
            say(f"control: the store has a {DEFAULT_CONTROL} covariate, so the plan's linear experiments run its "
                f"controls by default (oracle, from the face, beyond {DEFAULT_CONTROL} with {n_control} within-stratum "
                "permutations); --no-control turns them off")
    else:
        controls = tuple(controls)
        if controls:
            say(f"control: {', '.join(controls)} for the plan's linear experiments ({n_control} within-stratum "
                "permutations each)")
    check_controls(st, controls)
    if within:
        check_controls(st, (within,))
        say(f"within: the plan's linear experiments also run inside each value of {within}")
    if allow_incomplete:
        say("warning: --allow-incomplete: models with rows still pending run on the rows written so far; every "
            "result records it")

    task_errors: dict[str, str | None] = {}
    for task in {t for e in experiments for t in (e.names or names)}:
        try:
            resolve_names(st, task)
            task_errors[task] = None
        except ProbeError as e:
            task_errors[task] = str(e)

    # Plan every unit first so that the progress bar has a true total.
    units: list[tuple[Experiment, tuple[str, ...], str, int]] = []
    records: list[RunRecord] = []
    for exp in experiments:
        models, reason = _available_models(st, exp, stored, allow_incomplete=allow_incomplete)
        for task in exp.names or names:
            for s in range(seed, seed + seeds):
                if reason is None and task_errors[task]:
                    reason_t = f"name task {task!r}: {task_errors[task]}"
                else:
                    reason_t = reason
                if reason_t is not None:
                    records.append(RunRecord(exp.name, exp.plan_ref, exp.group, task, s, "skipped", reason_t,
                                             models=exp.models))
                else:
                    units.append((exp, models, task, s))
    said: set[tuple[str, str]] = set()
    for r in records:  # one line per experiment and reason, not per task and seed
        if (r.experiment, r.reason) not in said:
            said.add((r.experiment, r.reason))
            say(f"skip {r.experiment}: {r.reason}")
    if controls or within:
        # The lines above promise controls "for the plan's linear experiments": say which of them
        # run here, since on a store without their models (the demo) none does.
        controlled = list(dict.fromkeys(exp.name for exp, *_ in units if runs_nulls(exp)))
        what = " and ".join(x for x in ((", ".join(controls) + " controls") if controls else "",
                                        f"--within {within}" if within else "") if x)
        say(f"{what}: run for {', '.join(controlled)}" if controlled else
            f"{what}: none of the plan's linear experiments ({', '.join(e.name for e in EXPERIMENTS if runs_nulls(e))}) "
            "is among the experiments that run here (skipped or not selected), so no result here gets them")

    splits: dict[int, Any] = {}

    def run_unit(exp, models, task, s, folder_name: str, seed_group: str | None, label: str,
                 unit_controls: Sequence[str]) -> dict | None:
        """Run (or find unchanged) one result folder; append its record; the summary, or None if it failed."""
        folder = out / f"track3_{folder_name}"
        base = {"experiment": exp.name, "plan_ref": exp.plan_ref, "group": exp.group, "task": label, "seed": s,
                "folder": str(folder), "models": models}
        t0 = time.perf_counter()
        try:
            split = splits[s]
            config = experiment_config(exp, models=models, task=task, seed=s, device=device, n_boot=n_boot,
                                       permutations=permutations, null_repeats=null_repeats,
                                       controls=unit_controls, control_permutations=n_control,
                                       allow_incomplete=allow_incomplete)
            digest, inputs = input_fingerprint(st, exp, config, split, models=models)
            if not force and _read_fingerprint(folder) == digest:
                summary = json.loads((folder / "summary.json").read_text())
                records.append(RunRecord(**base, status="unchanged", reason="inputs unchanged since the last run",
                                         **_headline(summary)))
                say(f"unchanged {folder.name}: inputs (store spec, split {split.hash[:10]}, config) are the same")
                return summary
            say(f"run {folder.name}: {exp.family} on {', '.join(models)}, split {split.name}"
                + (f", controls {', '.join(config.controls)}" if getattr(config, "controls", ()) else ""))
            summary = _run_family(st, exp, config, split, out, folder_name, seed_group)
        except (ProbeError, FacestoreError) as e:
            records.append(RunRecord(**base, status="failed", reason=f"{type(e).__name__}: {e}",
                                     seconds=time.perf_counter() - t0))
            say(f"FAILED {folder.name}: {type(e).__name__}: {e}")
            return None
        seconds = time.perf_counter() - t0
        written = Path(summary["path"])
        # Written after the (atomic) result folder, atomically too: a kill in between leaves a
        # complete result without a fingerprint, which the next run simply redoes.
        tmp = written / (FINGERPRINT_FILE + ".tmp")
        tmp.write_text(json.dumps(
            {"fingerprint": digest, "inputs": inputs, "experiment": exp.name, "written": summary.get("created")},
            indent=2, sort_keys=True) + "\n")
        tmp.replace(written / FINGERPRINT_FILE)
        head = _headline(summary)
        with (written / "run.log").open("a", encoding="utf-8") as fh:
            fh.write(f"track3: experiment {exp.name} (plan {exp.plan_ref or exp.group}), task {label}, seed {s}, "
                     f"models {', '.join(models)}\n")
            fh.write(f"track3: input fingerprint {digest} (split {split.name}); {seconds:.1f} s\n")
        records.append(RunRecord(**base, status="ran", seconds=seconds, **head))
        say(f"done {folder.name}: balanced accuracy {head['balanced_accuracy']:.4f} (chance {head['chance']:.4f}), "
            f"top-1 {head['accuracy']:.4f}, {seconds:.1f} s")
        for cov, c in (summary.get("controls") or {}).items():
            b = c["beyond"]
            say(f"  control {cov}: oracle {c['oracle']['balanced_accuracy']:.4f}, from the face "
                f"{c['from_face']['balanced_accuracy']:.4f}, beyond {cov}: p {b['p_value']:.3g} "
                f"({b['n_permutations']} within-stratum permutations, {c['seconds']:.1f} s)")
        return summary

    bar = tqdm(total=len(units), desc="track3", unit="experiment", disable=not progress)
    for exp, models, task, s in units:
        slug = task_slug(task)
        folder_name = f"{exp.name}_{slug}" + (f"-seed{s}" if seeds > 1 else "")
        bar.set_postfix_str(folder_name)
        try:
            if s not in splits:
                splits[s] = get_split(st, by=split_by, seed=s)
        except (ProbeError, FacestoreError) as e:
            records.append(RunRecord(exp.name, exp.plan_ref, exp.group, task, s, "failed", f"{type(e).__name__}: {e}",
                                     models=models))
            say(f"FAILED track3_{folder_name}: {type(e).__name__}: {e}")
            bar.update(1)
            continue
        leak = _encoder_split_problem(st, models, splits[s], seed=s)
        if leak:  # an encoder trained on another split's training people: never probed here
            records.append(RunRecord(exp.name, exp.plan_ref, exp.group, task, s, "skipped", leak,
                                     folder=str(out / f"track3_{folder_name}"), models=models))
            say(f"skip track3_{folder_name}: {leak}")
            bar.update(1)
            continue
        run_unit(exp, models, task, s, folder_name, f"{exp.name}_{slug}" if seeds > 1 else None, task, controls)
        bar.update(1)
        if not (within and runs_nulls(exp)):
            continue
        label_base = f"{task} within {within}"
        try:
            plan = within_tasks(st, names=task, split=splits[s], covariate=within, models=models)
        except (ProbeError, FacestoreError) as e:
            records.append(RunRecord(exp.name, exp.plan_ref, exp.group, label_base, s, "failed",
                                     f"{type(e).__name__}: {e}", models=models))
            say(f"FAILED within {within} of {folder_name}: {type(e).__name__}: {e}")
            continue
        for sk in plan.skipped:
            reason = f"within {within}={sk['value']}: {sk['reason']}"
            records.append(RunRecord(exp.name, exp.plan_ref, exp.group, f"{label_base}={sk['value']}", s, "skipped",
                                     reason, models=models))
            say(f"skip {within_experiment(f'{exp.name}_{slug}', within, sk['value'])}: {reason}")
        bar.total += len(plan.tasks)
        bar.refresh()
        for value, vtask in plan.tasks:
            base_name = within_experiment(f"{exp.name}_{slug}", within, value)
            bar.set_postfix_str(base_name)
            # Controls qualify the overall task; inside one value there is no covariate left to control.
            run_unit(exp, models, vtask, s, base_name + (f"-seed{s}" if seeds > 1 else ""),
                     base_name if seeds > 1 else None, vtask.spec, ())
            bar.update(1)
    bar.close()

    comparison = _write_report(out, records, n_boot=n_boot, plots=plots, say=say, reference=reference,
                               correction=correction, split_by=split_by)
    report = Track3Report(out=out, comparison=comparison, records=tuple(records),
                          seconds=time.perf_counter() - t_start)
    (out / STATUS_FILE).write_text(json.dumps(
        {"store": str(st.path), "names": names, "seeds": seeds, "by": split_by, "permutations": permutations,
         "null_repeats": null_repeats, "controls": list(controls), "control_permutations": n_control,
         "within": within, "allow_incomplete": allow_incomplete, "seconds": report.seconds,
         "records": [r.to_dict() for r in records]}, indent=2) + "\n")
    counts = {k: len(report.by_status(k)) for k in ("ran", "unchanged", "skipped", "failed")}
    say(f"track3 finished in {report.seconds:.1f} s: " + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f"; report: {comparison}")
    return report


def _status_markdown(records: Sequence[RunRecord], *, split_by: str = "identity") -> str:
    splits = {"identity": "identity-disjoint splits", "image": ("image-level splits (`--by image`): every result "
                                                                 "is a control with a leakage warning")}
    lines = [
        STATUS_HEADING, "",
        ("Every experiment of the plan, in its priority order, with what `probes track3` did with it. "
         "Skipped experiments lack an input in the store; the reason says how to add it. Splits: "
         + splits.get(split_by, f"pseudo-identity-disjoint splits ({split_by.split(':', 1)[-1]})") + "."), "",
        "| experiment | plan | task | seed | status | balanced acc. (chance) | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ba = "" if r.balanced_accuracy is None else f"{r.balanced_accuracy:.4f} ({r.chance:.4f})"
        reason = r.reason.replace("|", "\\|")
        lines.append(f"| {r.experiment} | {r.plan_ref or r.group} | {r.task} | {r.seed} | {r.status} | {ba} | {reason} |")
    return "\n".join(lines) + "\n"


def _write_report(out: Path, records: list[RunRecord], *, n_boot: int, plots: bool, say, reference=None,
                  correction: str = "holm", split_by: str = "identity") -> Path:
    from probes.compare import compare_results
    from probes.results import find_results

    md = out / "track3_comparison.md"
    order = {e.name: i for i, e in enumerate(EXPERIMENTS)}
    ordered = sorted(records, key=lambda r: (order.get(r.experiment, len(order)), r.task, r.seed))
    status = _status_markdown(ordered, split_by=split_by)
    if find_results(out):
        md = Path(compare_results(out, n_boot=n_boot, plots=plots, reference=reference,
                                  correction=correction)["markdown"])
        text = md.read_text(encoding="utf-8")
        md.write_text(text.rstrip("\n") + "\n\n" + status, encoding="utf-8")
    else:
        md.write_text(
            "# Track 3 comparison\n\nNo experiment could run on this store: every one lacks an input "
            "(see the reasons below).\n\n" + status, encoding="utf-8")
        say("no experiment could run; the report lists what each one needs")
    return md


# --------------------------------------------------------------------------- CLI


def _list_experiments() -> str:
    lines = []
    for e in EXPERIMENTS:
        ref = f"plan {e.plan_ref}" if e.group == "plan" else (e.plan_ref or e.group)
        lines.append(f"{e.name:<22} {e.family:<9} {', '.join(e.models):<44} {ref}")
        lines.append(f"{'':<22} {e.summary}")
    return "\n".join(lines)


@click.command("track3", cls=ProbeCommand)
@click.option("--store", "store_path", default=None, type=click.Path(exists=True, file_okay=False),
              help="The store (made with facestore build).")
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Results directory: track3_{experiment}_{task}/ folders and track3_comparison.md.")
@click.option("--names", default="top30,all", show_default=True,
              help="Comma-separated name tasks: all, top30 (any topK), or files with one name per line.")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Repeat over K identity-disjoint splits (seeds --seed .. --seed+K-1).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the first split.")
@click.option("--only", default=None, help="Comma-separated experiment names (see --list); default: all.")
@click.option("--device", default="auto", show_default=True, help="cpu | cuda | cuda:N | auto")
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Bootstrap replicates of every CI and of the paired comparisons.")
@click.option("--force", is_flag=True, help="Re-run experiments whose inputs did not change.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots of the comparison and the HTML report.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--list", "list_only", is_flag=True, help="List the plan's experiments and exit.")
@click.option("--by", "split_by", default="identity", show_default=True,
              help="Split kind: identity | pseudo (pseudo:NAME) | image. A store without identities needs "
                   "`probes identities` first (then pseudo) or an explicit image (results are then controls).")
@click.option("--permutations", default=DEFAULT_PERMUTATIONS, show_default=True, type=click.IntRange(min=0),
              help="Whole-fit permutation null refits of the plan's linear experiments (0: none); when given (>= 1) "
                   "also the within-stratum permutations of the controls (else 99).")
@click.option("--null-repeats", default=DEFAULT_NULL_REPEATS, show_default=True, type=click.IntRange(min=0),
              help="Forced-choice null refits of the plan's linear experiments when --permutations is 0 (else the "
                   "permutation refits serve); forced choice is off when both are 0.")
@click.option("--reference", default=None,
              help="Reference experiment of the paired comparisons (default: clip_linear when it ran).")
@click.option("--correction", default="holm", show_default=True, type=click.Choice(["holm", "bh"]),
              help="Multiplicity correction of the report: holm (family-wise) or bh (false discovery rate).")
@click.option("--control", "controls", multiple=True,
              help="Covariate the plan's linear experiments are controlled for (oracle, from the face, beyond it with "
                   "a within-stratum null); repeatable or comma-separated [default: name_gender when the store has "
                   "it].")
@click.option("--no-control", is_flag=True, help="Run no covariate control (not even the default name_gender).")
@click.option("--within", default=None,
              help="Also run the plan's linear experiments inside each value of this covariate "
                   "(folders track3_{experiment}_{task}_within-{covariate}-{value}).")
@click.option("--allow-incomplete", is_flag=True,
              help="Run on models whose rows are not all written yet, using the rows written so far; every result "
                   "records it.")
@click.pass_context
def track3_command(ctx, store_path, out, names, seeds, seed, only, device, n_boot, force, no_plots, no_progress,
                   list_only, split_by, permutations, null_repeats, reference, correction, controls, no_control,
                   within, allow_incomplete):
    """Run the Track 3 plan in its priority order; write every result folder and track3_comparison.md.

    Experiments whose models are not in the store are skipped with the reason in the report;
    experiments whose inputs (store spec, split hash, config, covariates) did not change are not
    re-run. With a name_gender covariate in the store (facestore covariates STORE --name-gender)
    the plan's linear experiments also answer "is it more than gender?".
    """
    from probes.cli_common import split_list
    from probes.covariates import control_permutations

    if list_only:
        click.echo(_list_experiments())
        return
    if store_path is None:
        raise click.UsageError("--store is required (or use --list to see the experiments)")
    only_list = [n.strip() for n in only.split(",") if n.strip()] if only else None
    if only_list:
        try:
            _select(only_list)
        except KeyError as e:
            raise click.BadParameter(str(e.args[0]), param_hint="--only") from None
    control_list = split_list(controls)
    if no_control and control_list:
        raise click.UsageError("give --control COVARIATE or --no-control, not both")
    # The rule of docs/probes.md: --permutations, when given, also sizes the within-stratum null.
    given = ctx.get_parameter_source("permutations") not in (click.core.ParameterSource.DEFAULT, None)
    try:
        report = run_track3(store_path, out, names=names.split(","), seeds=seeds, seed=seed, only=only_list,
                            device=device, n_boot=n_boot, force=force, plots=not no_plots,
                            progress=not no_progress and sys.stderr.isatty(),
                            echo=lambda line: click.echo(line, err=True), by=split_by,
                            permutations=permutations, null_repeats=null_repeats, reference=reference,
                            correction=correction, controls=() if no_control else (control_list or None),
                            control_permutations=control_permutations(permutations if given else None),
                            within=within, allow_incomplete=allow_incomplete)
    except KeyboardInterrupt:
        # Ctrl-C printed only "Aborted!": say that nothing finished is lost and how to go on.
        click.echo("\ntrack3 interrupted: every result folder written so far is complete and kept (the one being "
                   "written stays a hidden temporary folder that the next run removes); run the same command again to resume: experiments whose inputs did not "
                   "change are skipped", err=True)
        from facestore.cli import EXIT_INTERRUPTED

        ctx.exit(EXIT_INTERRUPTED)
    counts = ", ".join(f"{len(report.by_status(k))} {k}" for k in ("ran", "unchanged", "skipped", "failed"))
    click.echo(f"track3: {counts} -> {report.comparison}")
    if not no_plots and (Path(out) / "comparison.json").is_file():  # the HTML report renders comparison.json
        from probes.report import build_report

        click.echo(f"html report: {build_report(out, store=store_path).index}")
    if not report.ok:
        failed = "; ".join(f"{r.experiment} [{r.task}]: {r.reason}" for r in report.by_status("failed"))
        raise click.ClickException(f"{len(report.by_status('failed'))} experiment(s) failed: {failed}")


if __name__ == "__main__":  # `python -m probes.track3 ...` works before the `probes` group registers the command
    track3_command()

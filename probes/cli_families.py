"""Click commands of the probe families (SupCon, zero-shot, ensembles, kNN, audits, identities).

``probes/cli.py`` adds every command of :data:`COMMANDS` to the ``probes`` group. Each command
is a thin layer over one library function that a notebook can call too, and (except
``identities``, which writes into the store) ends in the shared result folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from probes.cli_common import ProbeCommand, family_options, split_list


def _store_option(f):
    return click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False),
                        help="The store (made by facestore build).")(f)


def _split_options(f):
    f = click.option("--test", "test_fraction", default=0.2, show_default=True, type=float,
                     help="Test fraction of images of a new split (with --seed / --seeds).")(f)
    f = click.option("--val", "val_fraction", default=0.1, show_default=True, type=float,
                     help="Validation fraction of images of a new split (with --seed / --seeds).")(f)
    f = click.option("--by", default="identity", show_default=True,
                     help="How a new split groups rows: identity | image | pseudo-identity:<name>.")(f)
    f = click.option("--seed", default=0, show_default=True, type=int, help="Split seed when --split is not given.")(f)
    f = click.option("--split", "split_name", default=None, help="A saved split's name (default: make one from --seed).")(f)
    return f


def _seeds_option(f):
    return click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1),
                        help="Repeat over K new splits (seeds --seed .. --seed+K-1); per-seed folders -seed{k}.")(f)


def _task_options(f):
    f = click.option("--min-images", default=0, show_default=True, type=int, help="Keep names with at least N images.")(f)
    f = click.option("--names", default="all", show_default=True, help="all | top30 | topK | FILE (one name per line).")(f)
    return f


def _common_out(f):
    f = click.option("--experiment", default=None, help="Experiment name (folder track3_{experiment}).")(f)
    f = click.option("--out", required=True, type=click.Path(file_okay=False), help="Results directory.")(f)
    f = click.option("--n-boot", default=1000, show_default=True, type=int, help="Bootstrap replicates of the CIs.")(f)
    f = click.option("--device", default="auto", show_default=True, help="cpu | cuda | auto")(f)
    return f


def _forced_choice_options(f):
    f = click.option("--null-repeats", default=0, show_default=True, type=int,
                     help="Forced-choice null: refits on names shuffled across identities.")(f)
    f = click.option("--forced-choice", is_flag=True,
                     help="Also report 2-/4-way forced choice (raw, prior-corrected, prior-only).")(f)
    return f


def _open(path: str, mode: str):
    from facestore import open_store

    return open_store(path, mode=mode)


def _split(store, split_name, by, seed, val: float = 0.1, test: float = 0.2):
    from probes.splits import get_split

    return get_split(store, split=split_name, by=by, seed=seed, val=val, test=test)


def _report(summ: dict) -> None:
    m, ci, ch = summ["metrics"], summ["ci"], summ["chance"]
    click.echo(f"{summ['experiment']}: {m['n_test']} test images, {m['n_classes']} names")
    click.echo(f"  balanced accuracy {m['balanced_accuracy']:.4f} [{ci['balanced_accuracy'][0]:.4f}, "
               f"{ci['balanced_accuracy'][1]:.4f}]  chance {ch['uniform']:.4f}  p={summ['p_value']['balanced_accuracy']:.3g}")
    click.echo(f"  top-1 {m['accuracy']:.4f}  majority {ch['majority']:.4f}  prior-matched {ch['prior_matched']:.4f}"
               f"  -> {summ['path']}")
    _report_details(summ)


def _report_details(summ: dict) -> None:
    """Forced choice, controls and warnings of one result (also printed per seed)."""
    for fc in summ.get("extra", {}).get("forced_choice", []):
        if fc.get("skipped"):
            click.echo(f"  {fc['n_way']}-way {fc['foils']} foils: not run ({fc['skipped']})")
            continue
        null = fc.get("null") or {}
        beside = "" if not null.get("by_score") else "  (null " + ", ".join(
            f"{k} {v['mean']:.3f}" for k, v in null["by_score"].items()) + ")"
        click.echo(f"  {fc['n_way']}-way {fc['foils']} foils: raw {fc['raw']['accuracy']:.3f}  prior-corrected "
                   f"{fc['prior_corrected']['accuracy']:.3f}  prior-only {fc['prior_only']['accuracy']:.3f}{beside}")
    report_controls(summ)
    for w in summ["warnings"]:
        click.echo(f"warning: {w}", err=True)


def report_controls(summ: dict) -> None:
    """One line per ``--control`` covariate: the oracle, the from-face score and the beyond verdict."""
    for cov, c in (summ.get("controls") or {}).items():
        o, f, b = c["oracle"], c["from_face"], c["beyond"]
        click.echo(f"  control {cov}: oracle {o['balanced_accuracy']:.4f} [{o['balanced_accuracy_ci'][0]:.4f}, "
                   f"{o['balanced_accuracy_ci'][1]:.4f}], from the face {f['balanced_accuracy']:.4f} ({cov} from the "
                   f"face {f['covariate']['balanced_accuracy']:.4f}); beyond {cov}: {b['balanced_accuracy']:.4f} vs "
                   f"within-stratum null {b['null_mean']:.4f}, p = {b['p_value']:.3g} ({b['n_permutations']} "
                   f"permutations, {c['seconds']:.1f} s): " + ("significant" if b["significant"] else "not significant"))
        miss = c.get("missing") or {}
        if miss.get("n_images"):
            click.echo(f"    {miss['n_images']} images with {cov} {', '.join(miss['labels'])} kept as a value of "
                       "their own")


def family_config(*, controls, permutations, foils, forced_choice, allow_incomplete) -> dict:
    """The config fields every family shares, from the shared options (:func:`probes.cli_common.family_options`)."""
    from probes.covariates import control_permutations
    from probes.forced_choice import check_foil_kind

    kinds = split_list(foils)
    for k in kinds:
        check_foil_kind(k)
    return {"controls": split_list(controls), "control_permutations": control_permutations(permutations),
            "foils": kinds or ("uniform", "popularity"), "forced_choice": bool(forced_choice or kinds),
            "allow_incomplete": bool(allow_incomplete)}


def check_permutations(permutations, controls) -> None:
    """``--permutations`` sizes the controls' null in the families that have no plain permutation null."""
    if permutations is not None and not split_list(controls):
        raise click.UsageError("--permutations sets the within-stratum null of --control (this family has no other "
                               "permutation null); add --control COVARIATE, e.g. --control name_gender")


def run_within_splits(store, *, run, config, splits, out, name: str, within: str) -> None:
    """``--within``: the names task inside each value of ``within``, on every split (one per seed)."""
    from probes.covariates import run_within

    several = len(splits) > 1
    for s, split in splits:
        res = run_within(store, run=run, config=config, split=split, out=out, experiment=name, covariate=within,
                         seed_group=name if several else None, suffix=f"-seed{s}" if several else "",
                         echo=lambda line: click.echo(line, err=True))
        for value, summ in res["values"].items():
            m, ci, ch = summ["metrics"], summ["ci"], summ["chance"]
            click.echo(f"within {within}={value}" + (f" (seed {s})" if several else "") + f": {m['n_classes']} names, "
                       f"balanced accuracy {m['balanced_accuracy']:.4f} [{ci['balanced_accuracy'][0]:.4f}, "
                       f"{ci['balanced_accuracy'][1]:.4f}] chance {ch['uniform']:.4f} "
                       f"p={summ['p_value']['balanced_accuracy']:.3g}  -> {summ['path']}")
        if not res["values"]:
            click.echo(f"warning: no value of {within} has a task of its own on split {split.name}", err=True)


def _run(store_path, *, run, config, default_name: str, split_name, seed, seeds, by, val, test, out, experiment,
         within: str | None = None):
    """One split (echo its report) or, with ``seeds`` > 1, one per seed (echo the mean); ``within``
    adds the within-value tasks. Returns the summary of a single split (None with seeds)."""
    from probes.linear_experiment import run_seeds
    from probes.splits import get_split

    store = _open(store_path, "r" if split_name else "a")
    name = experiment or default_name
    if seeds > 1:
        if split_name:
            raise click.UsageError("--seeds makes one split per seed; do not combine it with --split")
        agg = run_seeds(store, run=run, config=config, seeds=range(seed, seed + seeds), out=out,
                        experiment=name, by=by, val=val, test=test)
        splits = [(s, get_split(store, by=by, seed=s, val=val, test=test)) for s in range(seed, seed + seeds)]
    else:
        split = _split(store, split_name, by, seed, val, test)
        summ = run(store, config=config, split=split, out=out, experiment=experiment)
        splits = [(seed, split)]
    if seeds > 1:
        for row in agg["per_seed"]:
            click.echo(f"seed {row['seed']}: balanced acc {row['balanced_accuracy']:.4f} top-1 {row['accuracy']:.4f}"
                       f"  {row['path']}")
            # Each seed's forced choice and control verdicts: the mean below does not hold them.
            _report_details(json.loads((Path(row["path"]) / "summary.json").read_text()))
        m, sd = agg["mean"], agg["std"]
        click.echo(f"mean over {seeds} seeds: balanced acc {m['balanced_accuracy']:.4f} +/- "
                   f"{sd['balanced_accuracy']:.4f}, top-1 {m['accuracy']:.4f} +/- {sd['accuracy']:.4f}")
        summ = None
    else:
        _report(summ)
    if within:
        run_within_splits(store, run=run, config=config, splits=splits, out=out, name=name, within=within)
    return summ


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@click.command("knn", cls=ProbeCommand)
@_store_option
@click.option("--model", required=True, help="Model group in the store.")
@click.option("--view", default=None, help="View of the model (default: the model's default view).")
@_split_options
@_seeds_option
@_task_options
@click.option("--ks", default="10,20,100,200", show_default=True,
              help="Comma-separated k values, chosen among on validation (one search).")
@click.option("--k", "k_fixed", default=None, type=int, help="Fix k instead of choosing it on validation.")
@click.option("--temperatures", default="0.02,0.07,0.2", show_default=True,
              help="Comma-separated vote temperatures T (weights exp(sim / T)), chosen among on validation.")
@click.option("--temperature", default=None, type=float, help="Fix T instead of choosing it on validation.")
@_forced_choice_options
@family_options()
@_common_out
def knn_cmd(store_path, model, view, split_name, seed, by, val_fraction, test_fraction, seeds, names, min_images, ks,
            k_fixed, temperatures, temperature, forced_choice, null_repeats, controls, within, foils, allow_incomplete,
            permutations, device, n_boot, out, experiment):
    """FAISS kNN (cosine, weighted votes): k and T chosen on validation, test scored once with train+val."""
    from probes.knn import KNNConfig, experiment_name, run_knn

    check_permutations(permutations, controls)
    config = KNNConfig(model=model, view=view, names=names, min_images=min_images, ks=_ints(ks), k=k_fixed,
                       temperatures=_floats(temperatures), temperature=temperature, device=device, n_boot=n_boot,
                       null_repeats=null_repeats, random_state=seed,
                       **family_config(controls=controls, permutations=permutations, foils=foils,
                                       forced_choice=forced_choice, allow_incomplete=allow_incomplete))
    summ = _run(store_path, run=run_knn, config=config, default_name=experiment_name(config), split_name=split_name,
                seed=seed, seeds=seeds, by=by, val=val_fraction, test=test_fraction, out=out, experiment=experiment,
                within=within)
    if summ is not None:
        x = summ["extra"]
        click.echo(f"  k={x['k']} T={x['temperature']} ({x['k_and_temperature']}), faiss {x['search_device']}")


@click.command("supcon", cls=ProbeCommand)
@_store_option
@click.option("--model", default=None, help="Model group whose frozen features the head trains on.")
@click.option("--view", default=None, help="View of the model (default: the model's default view).")
@_split_options
@_seeds_option
@_task_options
@click.option("--hidden-dim", default=2048, show_default=True, type=int, help="Hidden width of the projection MLP.")
@click.option("--out-dim", default=128, show_default=True, type=int, help="Output width of the projection MLP.")
@click.option("--temperature", default=0.07, show_default=True, type=float, help="SupCon loss temperature.")
@click.option("--m-per-class", default=4, show_default=True, type=int, help="Images per name in each batch.")
@click.option("--batch-size", default=512, show_default=True, type=int, help="SupCon batch size.")
@click.option("--epochs", default=20, show_default=True, type=int, help="SupCon training epochs.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="SupCon AdamW learning rate.")
@click.option("--lambdas", default=None,
              help="Comma-separated L2 strengths of the linear probe on the head's representation (default grid).")
@click.option("--representation", default="hidden", show_default=True,
              type=click.Choice(["hidden", "projection"]),
              help="Which layer the linear probe reads: hidden (the encoder-output analogue) or projection.")
@click.option("--train-encoder", is_flag=True,
              help="Train a timm encoder + projector from the train images instead (writes --checkpoint).")
@click.option("--checkpoint", default=None, type=click.Path(file_okay=False),
              help="With --train-encoder: the checkpoint folder for `facestore build --weights`.")
@click.option("--timm-model", default="resnet50", show_default=True, help="With --train-encoder: the timm model.")
@click.option("--no-pretrained", is_flag=True, help="With --train-encoder: start from random weights.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="With --train-encoder: the image folder (default: the store's data root).")
@click.option("--workers", default=0, show_default=True, type=int, help="With --train-encoder: DataLoader workers.")
@_forced_choice_options
@family_options()
@click.option("--save-embeddings", is_flag=True, help="Write the test rows' learned representation.")
@click.option("--device", default="auto", show_default=True, help="cpu | cuda | auto")
@click.option("--n-boot", default=1000, show_default=True, type=int, help="Bootstrap replicates of the CIs.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Results directory (head mode).")
@click.option("--experiment", default=None, help="Experiment name (folder track3_{experiment}).")
def supcon_cmd(store_path, model, view, split_name, seed, by, val_fraction, test_fraction, seeds, names, min_images,
               hidden_dim, out_dim, temperature, m_per_class, batch_size, epochs, lr, lambdas, representation,
               train_encoder, checkpoint, timm_model, no_pretrained, data_root, workers, forced_choice, null_repeats,
               controls, within, foils, allow_incomplete, permutations, save_embeddings, device, n_boot, out,
               experiment):
    """Experiment 3.4: a SupCon projection head on frozen features + linear probe, or (--train-encoder)
    a SupCon encoder trained from the train images into a facestore checkpoint (one per split seed)."""
    from probes.supcon import (EncoderTrainingConfig, SupConConfig, SupConHeadConfig, experiment_name,
                               run_supcon_head, train_supcon_encoder)

    if train_encoder:
        if not checkpoint:
            raise click.UsageError("--train-encoder needs --checkpoint DIR")
        if seeds > 1:
            raise click.UsageError("--train-encoder trains one encoder on one split: run it once per --seed, each "
                                   "into its own --checkpoint")
        if split_list(controls) or within or foils:
            raise click.UsageError("--control, --within and --foils apply to the SupCon head's probe; an encoder is "
                                   "probed once built: facestore build ... --model supcon-resnet50, then probes linear")
        store = _open(store_path, "r" if split_name else "a")
        split = _split(store, split_name, by, seed, val_fraction, test_fraction)
        cfg = EncoderTrainingConfig(timm_model=timm_model, pretrained=not no_pretrained, temperature=temperature,
                                    m_per_class=m_per_class, batch_size=batch_size, epochs=epochs, lr=lr,
                                    proj_layers=(hidden_dim, out_dim), seed=seed)
        task = None if names == "all" else _task_names(store, names, min_images)
        path = train_supcon_encoder(store, split=split.name, out_dir=checkpoint, config=cfg, names=task,
                                    data_root=data_root, device=device, num_workers=workers, progress=True)
        click.echo(f"checkpoint -> {path} (trained on split {split.name}); embed it with: facestore build ... "
                   f"--model supcon-resnet50 --weights {path}; probe it on that split only (--split {split.name})")
        return
    if not model or not out:
        raise click.UsageError("the SupCon head needs --model and --out (or pass --train-encoder)")
    head = SupConHeadConfig(hidden_dim=hidden_dim, out_dim=out_dim, temperature=temperature,
                            m_per_class=m_per_class, batch_size=batch_size, epochs=epochs, lr=lr,
                            representation=representation, seed=seed)
    check_permutations(permutations, controls)
    config = SupConConfig(model=model, view=view, names=names, min_images=min_images, head=head, n_boot=n_boot,
                          lambdas=_floats(lambdas) if lambdas else None,
                          device=device, save_embeddings=save_embeddings, null_repeats=null_repeats,
                          **family_config(controls=controls, permutations=permutations, foils=foils,
                                          forced_choice=forced_choice, allow_incomplete=allow_incomplete))
    _run(store_path, run=run_supcon_head, config=config, default_name=experiment_name(config), split_name=split_name,
         seed=seed, seeds=seeds, by=by, val=val_fraction, test=test_fraction, out=out, experiment=experiment,
         within=within)


def _task_names(store, names, min_images):
    from probes.names import resolve_names

    return list(resolve_names(store, names, min_images=min_images).names)


@click.command("zeroshot", cls=ProbeCommand)
@_store_option
@click.option("--model", required=True, help="A text model's group (clip-vit-b-32, siglip-base).")
@click.option("--view", default=None, help="Image view in the joint space (default: the model's default view).")
@_split_options
@_seeds_option
@_task_options
@click.option("--template-set", default="plan", show_default=True, help="Stored template set (facestore text).")
@click.option("--template", default="ensemble", show_default=True, help="'ensemble', a template index or its text.")
@click.option("--prior-correction", default="none", show_default=True,
              type=click.Choice(["none", "mean-logit", "fit-bias"]),
              help="Remove the text encoder's name prior from the decision, fitted on validation images only.")
@click.option("--null-repeats", default=0, show_default=True, type=int,
              help="Forced-choice null: test names shuffled across identities (exact: zero-shot saw no names).")
@click.option("--forced-choice", is_flag=True,
              help="Also report 2-/4-way forced choice (raw, prior-corrected, prior-only).")
@family_options()
@_common_out
def zeroshot_cmd(store_path, model, view, split_name, seed, by, val_fraction, test_fraction, seeds, names, min_images,
                 template_set, template, prior_correction, null_repeats, forced_choice, controls, within, foils,
                 allow_incomplete, permutations, device, n_boot, out, experiment):
    """Experiment 3.5: zero-shot names from stored text embeddings (CLIP softmax, SigLIP scale + bias)."""
    from probes.zeroshot import ZeroShotConfig, experiment_name, run_zeroshot

    check_permutations(permutations, controls)
    config = ZeroShotConfig(model=model, view=view, template_set=template_set, template=template,
                            prior_correction=prior_correction, names=names, min_images=min_images, n_boot=n_boot,
                            null_repeats=null_repeats, random_state=seed,
                            **family_config(controls=controls, permutations=permutations, foils=foils,
                                            forced_choice=forced_choice, allow_incomplete=allow_incomplete))
    summ = _run(store_path, run=run_zeroshot, config=config, default_name=experiment_name(config),
                split_name=split_name, seed=seed, seeds=seeds, by=by, val=val_fraction, test=test_fraction, out=out,
                experiment=experiment, within=within)
    if summ is not None:
        for t, v in summ["extra"]["per_template_val_balanced_accuracy"].items():
            click.echo(f"  val balanced accuracy {v:.4f}  {t}")


@click.command("ensemble", cls=ProbeCommand)
@_store_option
@click.option("--models", required=True, help="Comma-separated model groups (at least two).")
@click.option("--views", default=None, help="Comma-separated views, one per model (default: each default view).")
@click.option("--mode", default="concat", show_default=True,
              type=click.Choice(["concat", "late-fusion", "learned-weights"]),
              help="concat (equal-footing blocks), late-fusion (mean log-probabilities) or learned-weights "
                   "(fitted on out-of-fold probabilities).")
@_split_options
@_seeds_option
@_task_options
@click.option("--lambdas", default=None, help="Comma-separated L2 strengths of every linear probe (default grid).")
@click.option("--oof-folds", default=5, show_default=True, type=click.IntRange(min=2),
              help="learned-weights: identity-disjoint folds of the out-of-fold probabilities.")
@_forced_choice_options
@family_options()
@_common_out
def ensemble_cmd(store_path, models, views, mode, split_name, seed, by, val_fraction, test_fraction, seeds, names,
                 min_images, lambdas, oof_folds, forced_choice, null_repeats, controls, within, foils, allow_incomplete,
                 permutations, device, n_boot, out, experiment):
    """Experiment 3.6: concatenation, late fusion or out-of-fold weights over several models."""
    from probes.ensemble import EnsembleConfig, experiment_name, run_ensemble

    check_permutations(permutations, controls)
    model_list = tuple(m.strip() for m in models.split(",") if m.strip())
    view_list = None if views is None else tuple(v.strip() or None for v in views.split(","))
    config = EnsembleConfig(models=model_list, mode=mode, views=view_list, names=names, min_images=min_images,
                            lambdas=_floats(lambdas) if lambdas else None, oof_folds=oof_folds, n_boot=n_boot,
                            device=device, null_repeats=null_repeats, random_state=seed,
                            **family_config(controls=controls, permutations=permutations, foils=foils,
                                            forced_choice=forced_choice, allow_incomplete=allow_incomplete))
    summ = _run(store_path, run=run_ensemble, config=config, default_name=experiment_name(config),
                split_name=split_name, seed=seed, seeds=seeds, by=by, val=val_fraction, test=test_fraction, out=out,
                experiment=experiment, within=within)
    if summ is not None:
        miss = summ["extra"]["missing_images"]["test"]
        click.echo(f"  test images kept {miss['kept']}, dropped {miss['dropped']} (missing per model {miss['per_model']})")
        if "weights" in summ["extra"]:
            click.echo("  weights (fitted out of fold): "
                       + ", ".join(f"{m} {w:.3f}" for m, w in summ["extra"]["weights"].items()))


@click.command("audit", cls=ProbeCommand)
@_store_option
@click.option("--model", required=True, help="A face-identity model group (e.g. arcface-r50) or any model.")
@click.option("--view", default=None, help="View of the model (default: the model's default view).")
@_split_options
@_task_options
@click.option("--threshold", default=None, type=float,
              help="Same-person cosine similarity of the model (default: calibrated on the training identities).")
@click.option("--quantile", default=0.99, show_default=True, type=click.FloatRange(0.5, 1, max_open=True),
              help="Calibration: the threshold is this quantile of the nearest different-identity similarity.")
@click.option("--k", "k", default=20, show_default=True, type=int, help="Neighbours of the kNN votes.")
@click.option("--temperature", default=0.07, show_default=True, type=float, help="Vote weights exp(sim / T).")
@click.option("--allow-incomplete", is_flag=True,
              help="Run on a model whose rows are not all written yet, using the rows written so far; "
                   "summary.json records it.")
@_common_out
def audit_cmd(store_path, model, view, split_name, seed, by, val_fraction, test_fraction, names, min_images, threshold,
              quantile, k, temperature, allow_incomplete, device, n_boot, out, experiment):
    """Identity-leak audit: test identities also in training, test images with a same-person training
    neighbour, kNN with and without them."""
    from probes.audit import run_audit

    store = _open(store_path, "r" if split_name else "a")
    split = _split(store, split_name, by, seed, val_fraction, test_fraction)
    summ = run_audit(store, model=model, split=split, out=out, threshold=threshold,
                     quantile=quantile, view=view, names=names, min_images=min_images, k=k,
                     temperature=temperature, device=device, n_boot=n_boot, seed=seed, experiment=experiment,
                     allow_incomplete=allow_incomplete)
    a = summ["extra"]["audit"]
    h = a["headline"]
    if h["share_test_identities_in_train"] is not None:
        click.echo(f"test identities also in train+val: {h['share_test_identities_in_train']:.4f} "
                   f"(of {a['n_test_identities']}; identities: {a['identity_source']})")
    cal = a["calibration"]
    click.echo(f"same-person threshold {a['threshold']:.4f} ("
               + (cal["rule"] if cal else "given with --threshold") + ")")
    expected = "" if h["expected_share_without_leak"] is None else f" (expected without leak {h['expected_share_without_leak']:.4f})"
    click.echo(f"test images whose nearest train+val neighbour reaches it: {a['share_nearest_above_threshold']:.4f}"
               + expected)
    click.echo(f"kNN accuracy {a['knn_accuracy']:.4f}; without above-threshold neighbours "
               f"{a['knn_accuracy_excluding_above_threshold']:.4f}")
    if "knn_accuracy_excluding_same_identity" in a:
        click.echo(f"kNN accuracy without same-identity neighbours {a['knn_accuracy_excluding_same_identity']:.4f}")
    click.echo("identity leak suspected: " + ("; ".join(h["reasons"]) if h["leak_suspected"] else "no"))
    _report(summ)


@click.command("identities", cls=ProbeCommand)
@_store_option
@click.option("--model", required=True, help="A face-identity model group (e.g. arcface-r50).")
@click.option("--view", default=None, help="View of the model (default: the model's default view).")
@click.option("--threshold", required=True, type=float, help="Link images with cosine similarity >= T.")
@click.option("--k", "k", default=10, show_default=True, type=int, help="Neighbours searched per image.")
@click.option("--name", default=None, help="Saved name (default pseudo-<model>-t<T>).")
@click.option("--device", default="auto", show_default=True, help="cpu | cuda | auto")
def identities_cmd(store_path, model, view, threshold, k, name, device):
    """Pseudo-identities: connected components of the thresholded kNN graph, saved in the store."""
    from probes.audit import build_pseudo_identities

    store = _open(store_path, "a")
    saved, attrs = build_pseudo_identities(store, model=model, view=view, threshold=threshold, k=k, name=name,
                                           device=device)
    click.echo(json.dumps({"name": saved, **attrs}, indent=2))
    click.echo(f"split by them with: probes split --store {store_path} --by pseudo-identity:{saved}", err=True)


COMMANDS: list = [supcon_cmd, zeroshot_cmd, ensemble_cmd, knn_cmd, audit_cmd, identities_cmd]

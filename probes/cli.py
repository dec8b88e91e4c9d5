"""The ``probes`` command line: a thin layer, each command calls one library function.

torch, sklearn and zarr are imported inside the commands so that ``probes --help`` is instant.
Every user error prints as one line with the exit code of its class, the same table as
``facestore``'s (:mod:`probes.cli_common`, docs/faq.md).
"""

from __future__ import annotations

import json
import sys

import click

from probes.cli_common import CONTEXT, ProbeGroup, family_options
from probes.cli_families import COMMANDS, family_config, report_controls, run_within_splits
from probes.track3 import track3_command


def _open(path: str, mode: str):
    from facestore import open_store

    return open_store(path, mode=mode)


@click.group(cls=ProbeGroup, context_settings=CONTEXT)
@click.version_option(package_name="facestore", prog_name="probes")
def main():
    """Probe frozen face embeddings for first-name signal, with an honest protocol.

    Splits are identity-disjoint, the test split is locked (selection on train/val only),
    every metric has a 95% CI and is shown beside its chance baselines.
    """


@main.command("split")
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False), help="The store.")
@click.option("--by", default="identity", show_default=True, help="identity | image | pseudo-identity:<name>")
@click.option("--val", default=0.1, show_default=True, type=float, help="Validation fraction of images.")
@click.option("--test", default=0.2, show_default=True, type=float, help="Test fraction of images.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the first split.")
@click.option("--seeds", default=1, show_default=True, type=int, help="Make K splits, seeds seed..seed+K-1.")
def split_cmd(store_path, by, val, test, seed, seeds):
    """Make identity-disjoint stratified splits and save them in the store (prints JSON)."""
    from probes.splits import make_split

    store = _open(store_path, "a")
    infos = [make_split(store, by=by, val=val, test=test, seed=seed + k).info() for k in range(seeds)]
    for info in infos:
        for w in info["warnings"]:
            click.echo(f"warning: {w}", err=True)
    click.echo(json.dumps(infos if seeds > 1 else infos[0], indent=2))


@main.command("linear")
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False), help="The store.")
@click.option("--model", required=True, help="Model group in the store.")
@click.option("--view", default=None, help="View of the model (default: the model's default view).")
@click.option("--split", "split_name", default=None, help="A saved split's name (default: make one from --seed).")
@click.option("--seed", default=0, show_default=True, type=int, help="Split seed when --split is not given.")
@click.option("--seeds", default=1, show_default=True, type=int, help="Repeat over K splits (seeds seed..seed+K-1).")
@click.option("--by", default="identity", show_default=True,
              help="How new splits group rows: identity | image | pseudo-identity:<name>.")
@click.option("--val", "val_fraction", default=0.1, show_default=True, type=float,
              help="Validation fraction of images of new splits (with --seed or --seeds).")
@click.option("--test", "test_fraction", default=0.2, show_default=True, type=float,
              help="Test fraction of images of new splits (with --seed or --seeds).")
@click.option("--names", default="all", show_default=True, help="all | top30 | topK | FILE (one name per line).")
@click.option("--min-images", default=0, show_default=True, type=int, help="Keep names with at least N images.")
@click.option("--balance", default="none", show_default=True, type=click.Choice(["none", "weighted", "logit-adjust"]),
              help="none; weighted (class-balanced loss); logit-adjust (decision minus tau x log prior, tau chosen "
                   "on validation).")
@click.option("--features", default="standardize", show_default=True,
              type=click.Choice(["none", "standardize", "l2", "l2-standardize"]),
              help="Feature preprocessing fitted on the fit rows.")
@click.option("--lambdas", default=None,
              help="Comma-separated L2 strengths lambda of mean CE + lambda/2 ||W||^2 (scikit-learn C = 1/(lambda n)); "
                   "default 15 values from 1e-6 to 10.")
@click.option("--weight-decays", "weight_decays", default=None, hidden=True,
              help="Old name of --lambdas (the same L2 strengths).")
@click.option("--solver", default="lbfgs", show_default=True, type=click.Choice(["lbfgs", "adam"]),
              help="lbfgs: full-batch L-BFGS to convergence; adam: mini-batch Adam (explicit option).")
@click.option("--tol", default=1e-4, show_default=True, type=float,
              help="Convergence: max |gradient| <= tol x the intercept-only model's max |weight gradient|.")
@click.option("--max-iter", default=1000, show_default=True, type=int, help="L-BFGS iterations per lambda.")
@click.option("--search", default="coarse-to-fine", show_default=True, type=click.Choice(["coarse-to-fine", "full"]),
              help="coarse-to-fine: every other lambda strong to weak, stopped once validation got worse, then the "
                   "best value's neighbours; full: every lambda.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Learning rate (--solver adam only).")
@click.option("--max-epochs", default=100, show_default=True, type=int, help="Epochs at most (--solver adam only).")
@click.option("--batch-size", default=1024, show_default=True, type=int, help="Batch size (--solver adam only).")
@click.option("--lrs", default=None, hidden=True, help="Old option: one learning rate (--solver adam only).")
@click.option("--epochs", default=None, type=int, hidden=True, help="Old name of --max-epochs (--solver adam only).")
@click.option("--permutations", default=0, show_default=True, type=click.IntRange(min=0),
              help="Permutation null: N refits with names shuffled across identities (also the forced-choice null); "
                   "with --control also the within-stratum permutations (else 99).")
@click.option("--n-boot", default=1000, show_default=True, type=int, help="Bootstrap replicates of the CIs.")
@click.option("--save-embeddings", is_flag=True, help="Also write embeddings.npy of the test rows.")
@click.option("--forced-choice", is_flag=True,
              help="Also report 2-/4-way forced choice (raw, prior-corrected, prior-only) in summary.json.")
@click.option("--null-repeats", default=0, show_default=True, type=int,
              help="Forced-choice null refits on shuffled names when --permutations is 0 (else those refits serve).")
@click.option("--device", default="auto", show_default=True, help="cpu | cuda | cuda:N | auto")
@click.option("--threads", default=None, type=int, help="torch CPU threads (default: torch's).")
@family_options(permutations=False)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Results directory.")
@click.option("--experiment", default=None, help="Experiment name (folder track3_{experiment}).")
def linear_cmd(store_path, model, view, split_name, seed, seeds, by, val_fraction, test_fraction, names, min_images,
               balance, features, lambdas, weight_decays, solver, tol, max_iter, search, lr, max_epochs, batch_size,
               lrs, epochs, permutations, n_boot, save_embeddings, forced_choice, null_repeats, device, threads,
               controls, within, foils, allow_incomplete, out, experiment):
    """Fit the L2 logistic-regression path, select on val, refit on train+val, evaluate on test once."""
    from probes.linear_experiment import LinearConfig, default_experiment_name, run_linear, run_linear_seeds
    from probes.splits import get_split

    def floats(text):
        try:
            return tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None

    if lambdas and weight_decays:
        raise click.UsageError("give --lambdas (or its old name --weight-decays), not both")
    grid = lambdas or weight_decays
    if lrs is not None:
        values = floats(lrs)
        if len(values) != 1:
            raise click.BadParameter("--lrs takes one learning rate now (the L-BFGS path has none)", param_hint="--lrs")
        lr = values[0]
    if epochs is not None:
        max_epochs = epochs
    if solver != "adam" and (lrs is not None or epochs is not None):
        click.echo("warning: --lrs/--epochs/--batch-size apply to --solver adam only; ignored by lbfgs", err=True)
    config = LinearConfig(
        model=model, view=view, names=names, min_images=min_images, balance=balance, features=features,
        lambdas=floats(grid) if grid else None, solver=solver, tol=tol, max_iter=max_iter, search=search, lr=lr,
        max_epochs=max_epochs, batch_size=batch_size, permutations=permutations, n_boot=n_boot, device=device,
        n_threads=threads, save_embeddings=save_embeddings, null_repeats=null_repeats,
        **family_config(controls=controls, permutations=permutations, foils=foils, forced_choice=forced_choice,
                        allow_incomplete=allow_incomplete),
    )
    store = _open(store_path, "r" if split_name else "a")
    name = experiment or default_experiment_name(config)
    if seeds > 1:
        if split_name:
            raise click.UsageError("--seeds makes one split per seed; do not combine it with --split")
        agg = run_linear_seeds(store, config=config, seeds=range(seed, seed + seeds), out=out,
                               experiment=experiment, by=by, val=val_fraction, test=test_fraction)
        for row in agg["per_seed"]:
            click.echo(f"seed {row['seed']}: balanced acc {row['balanced_accuracy']:.4f} "
                       f"top-1 {row['accuracy']:.4f}  {row['path']}")
        m, s = agg["mean"], agg["std"]
        click.echo(f"mean over {seeds} seeds: balanced acc {m['balanced_accuracy']:.4f} +/- "
                   f"{s['balanced_accuracy']:.4f}, top-1 {m['accuracy']:.4f} +/- {s['accuracy']:.4f}")
        if within:
            splits = [(s, get_split(store, by=by, seed=s, val=val_fraction, test=test_fraction))
                      for s in range(seed, seed + seeds)]
            run_within_splits(store, run=run_linear, config=config, splits=splits, out=out, name=name, within=within)
        return
    split = get_split(store, split=split_name, by=by, seed=seed, val=val_fraction, test=test_fraction)
    summ = run_linear(store, config=config, split=split, out=out, experiment=experiment)
    m, ci, ch = summ["metrics"], summ["ci"], summ["chance"]
    p = summ["probe"]
    click.echo(f"{summ['experiment']}: {m['n_test']} test images, {m['n_classes']} names")
    click.echo(f"  lambda {p['best_params']['lambda']:.3g} (C {p['refit']['C']:.3g})"
               + (f", tau {p['best_params']['tau']:g}" if p["best_params"].get("tau") is not None else "")
               + f"; converged {p['converged']}")
    click.echo(f"  balanced accuracy {m['balanced_accuracy']:.4f} [{ci['balanced_accuracy'][0]:.4f}, "
               f"{ci['balanced_accuracy'][1]:.4f}]  chance {ch['uniform']:.4f}  p={summ['p_value']['balanced_accuracy']:.3g}")
    click.echo(f"  top-1 {m['accuracy']:.4f} [{ci['accuracy'][0]:.4f}, {ci['accuracy'][1]:.4f}]  "
               f"majority {ch['majority']:.4f}  prior-matched {ch['prior_matched']:.4f}")
    click.echo(f"  top-5 {m['top5_accuracy']:.4f}  prediction CV {m['prediction_cv']:.3f}  -> {summ['path']}")
    report_controls(summ)
    for w in summ["warnings"]:
        click.echo(f"warning: {w}", err=True)
    if within:
        run_within_splits(store, run=run_linear, config=config, splits=[(seed, split)], out=out, name=name,
                          within=within)


@main.command("compare")
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Paired bootstrap replicates.")
@click.option("--reference", default=None,
              help="Experiment every other one is compared with (paired, same test images); "
                   "default: the plan's CLIP baseline clip_linear when present.")
@click.option("--correction", default="holm", show_default=True, type=click.Choice(["holm", "bh"]),
              help="Multiplicity correction: holm (family-wise) or bh (Benjamini-Hochberg, false discovery rate).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (the report then links none).")
def compare_cmd(results_dir, n_boot, reference, correction, no_plots):
    """Write RESULTS_DIR/track3_comparison.md (+ comparison.csv/json and PNG plots)."""
    from probes.compare import compare_results

    report = compare_results(results_dir, n_boot=n_boot, plots=not no_plots, reference=reference,
                             correction=correction)
    for s in report["skipped"]:
        click.echo(f"warning: skipped {s['path']}: {s['reason']}", err=True)
    click.echo(f"{len(report['experiments'])} ranked experiments, {len(report['control_rows'])} controls, "
               f"{len(report['skipped'])} skipped -> {report['markdown']}")


@main.command("report")
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder of the site (default: RESULTS_DIR/report).")
@click.option("--store", "store_path", default=None, type=click.Path(),
              help="The store the results came from, when it moved (default: each summary.json's store_path).")
def report_cmd(results_dir, out, store_path):
    """Write a static HTML report of RESULTS_DIR (index.html + one page per experiment) and print its path.

    It renders comparison.json and every result folder; face galleries need the store and its images.
    """
    from probes.report import build_report

    site = build_report(results_dir, out=out, store=store_path)
    click.echo(str(site.index))


@main.command("demo")
@click.argument("directory", default="facestore-demo", type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="A smaller dataset and fewer bootstrap draws (about a minute).")
@click.option("--device", default="auto", show_default=True, help="cpu | cuda | cuda:N | auto")
@click.option("--no-progress", is_flag=True, help="No progress bars (they show only on a terminal anyway).")
def demo_cmd(directory, quick, device, no_progress):
    """Make a synthetic face-chip dataset in DIRECTORY, build a store, run the Track 3 probes and write the HTML report."""
    from probes.demo import run_demo

    run_demo(directory, quick=quick, device=device, progress=not no_progress and sys.stderr.isatty(), echo=click.echo)


for _command in COMMANDS:
    main.add_command(_command)
main.add_command(track3_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

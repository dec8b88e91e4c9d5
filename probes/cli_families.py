"""Click commands of the probe families (SupCon, zero-shot, ensembles, kNN, audits, identities).

``probes/cli.py`` adds every command of :data:`COMMANDS` to the ``probes`` group. Each command
is a thin layer over one library function that a notebook can call too, and (except
``identities``, which writes into the store) ends in the shared result folder.
"""

from __future__ import annotations

import json

import click


def _store_option(f):
    return click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False),
                        help="The store.")(f)


def _split_options(f):
    f = click.option("--by", default="identity", show_default=True,
                     help="How a new split groups rows: identity | image | pseudo-identity:<name>.")(f)
    f = click.option("--seed", default=0, show_default=True, type=int, help="Split seed when --split is not given.")(f)
    f = click.option("--split", "split_name", default=None, help="A saved split's name (default: make one from --seed).")(f)
    return f


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
                     help="Shuffled-name null repeats for the forced-choice scores.")(f)
    f = click.option("--forced-choice", is_flag=True,
                     help="Also report 2-/4-way forced choice (raw, prior-corrected, prior-only).")(f)
    return f


def _open(path: str, mode: str):
    from facestore import open_store

    return open_store(path, mode=mode)


def _errors():
    from facestore.errors import FacestoreError

    from probes.errors import ProbeError

    return (ProbeError, FacestoreError, KeyError, FileNotFoundError)


def _split(store, split_name, by, seed):
    from probes.splits import get_split

    return get_split(store, split=split_name, by=by, seed=seed)


def _report(summ: dict) -> None:
    m, ci, ch = summ["metrics"], summ["ci"], summ["chance"]
    click.echo(f"{summ['experiment']}: {m['n_test']} test images, {m['n_classes']} names")
    click.echo(f"  balanced accuracy {m['balanced_accuracy']:.4f} [{ci['balanced_accuracy'][0]:.4f}, "
               f"{ci['balanced_accuracy'][1]:.4f}]  chance {ch['uniform']:.4f}  p={summ['p_value']['balanced_accuracy']:.3g}")
    click.echo(f"  top-1 {m['accuracy']:.4f}  majority {ch['majority']:.4f}  prior-matched {ch['prior_matched']:.4f}"
               f"  -> {summ['path']}")
    for fc in summ.get("extra", {}).get("forced_choice", []):
        click.echo(f"  {fc['n_way']}-way {fc['foils']} foils: raw {fc['raw']['accuracy']:.3f}  prior-corrected "
                   f"{fc['prior_corrected']['accuracy']:.3f}  prior-only {fc['prior_only']['accuracy']:.3f}")
    for w in summ["warnings"]:
        click.echo(f"warning: {w}", err=True)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@click.command("knn")
@_store_option
@click.option("--model", required=True, help="Model group in the store.")
@click.option("--view", default=None, help="View of the model (default: the model's default view).")
@_split_options
@_task_options
@click.option("--ks", default="10,20,100,200", show_default=True, help="Comma-separated k values (one search).")
@click.option("--k", "k_main", default=20, show_default=True, type=int, help="The k of the headline result.")
@click.option("--temperature", default=0.07, show_default=True, type=float, help="Vote weights exp(sim / T).")
@_forced_choice_options
@_common_out
def knn_cmd(store_path, model, view, split_name, seed, by, names, min_images, ks, k_main, temperature,
            forced_choice, null_repeats, device, n_boot, out, experiment):
    """FAISS kNN (cosine, weighted votes) of test against train+val, every k from one search."""
    from probes.knn import KNNConfig, run_knn

    config = KNNConfig(model=model, view=view, names=names, min_images=min_images, ks=_ints(ks), k=k_main,
                       temperature=temperature, device=device, n_boot=n_boot, forced_choice=forced_choice,
                       null_repeats=null_repeats, random_state=seed)
    try:
        store = _open(store_path, "r" if split_name else "a")
        summ = run_knn(store, config=config, split=_split(store, split_name, by, seed), out=out, experiment=experiment)
    except _errors() as e:
        raise click.ClickException(str(e)) from e
    _report(summ)
    per_k = summ["extra"]["per_k"]
    click.echo("  per k: " + "  ".join(f"k={k} bal {v['balanced_accuracy']:.4f}" for k, v in per_k.items())
               + f"  (T={temperature}, faiss {summ['extra']['search_device']})")


COMMANDS: list = [knn_cmd]

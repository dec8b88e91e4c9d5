"""The ``facestore`` command line: a thin click layer, one library function per command.

Heavy libraries (torch, transformers, zarr) are imported inside the commands, so that
``facestore --help`` is instant. Every user error prints as one line (``Error: ...``), never
as a traceback, with one exit code per class of error (documented in docs/faq.md):

====  ==================================================================================
0     success
1     the command ran and found problems: ``verify`` found some, ``build --strict`` recorded
      failures, a build or import could not complete, a model group is unfinished
2     usage or input error: a bad option or argument, an unknown model or view, weights or
      options that do not fit the model, an unusable dataset or file, no store at the path, a
      spec that differs from the stored one
3     the store is damaged (a checksum, size, dtype or length that disagrees with the format,
      a missing member) or in a format this facestore cannot write: run ``facestore verify``
      (or ``facestore upgrade``)
4     the store is locked by another live process (after the bounded wait)
5     permission denied, or another operating-system error (disk full, I/O error)
130   interrupted (Ctrl-C, 128 + SIGINT): what was committed is kept, the same command resumes
====  ==================================================================================
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import warnings
from typing import Any

import click

from facestore.errors import (
    BuildError,
    BuildUsageError,
    DatasetChangedError,
    DatasetError,
    DeviceError,
    FacestoreError,
    IncompleteModelError,
    ModelConfigError,
    ModelNotFoundError,
    NonFiniteError,
    SpecMismatchError,
    StoreCorruptError,
    StoreError,
    StoreExistsError,
    StoreFormatError,
    StoreLockedError,
    StoreNotFoundError,
    TemplateError,
    ViewNotFoundError,
    WeightsNotFoundError,
    WeightsUnreadableError,
)

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_DAMAGED, EXIT_LOCKED, EXIT_OS = 0, 1, 2, 3, 4, 5
# Ctrl-C: the shell convention 128 + SIGINT, so a script can tell an interrupt from a failure.
EXIT_INTERRUPTED = 130

#: Error classes -> exit code, most specific first (the first match wins).
_EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], int], ...] = (
    ((StoreCorruptError, NonFiniteError, StoreFormatError), EXIT_DAMAGED),
    ((StoreLockedError,), EXIT_LOCKED),
    ((WeightsUnreadableError,), EXIT_OS),  # permission denied, as for any other file
    ((BuildUsageError, ModelNotFoundError, ModelConfigError, DatasetError, DatasetChangedError, SpecMismatchError,
      StoreNotFoundError, StoreExistsError, TemplateError, ViewNotFoundError, WeightsNotFoundError, DeviceError),
     EXIT_USAGE),
    ((BuildError, IncompleteModelError, StoreError), EXIT_PROBLEMS),
)


def exit_code(error: BaseException) -> int:
    """The exit code of ``facestore`` for ``error`` (see the module docstring)."""
    for classes, code in _EXIT_CODES:
        if isinstance(error, classes):
            return code
    if isinstance(error, OSError) and not isinstance(error, FacestoreError):
        return EXIT_OS
    return EXIT_PROBLEMS


def _os_error_message(e: OSError) -> str:
    """Say which path and which user, instead of a traceback."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): the uid still says who
        user = "?"
    where = f" {e.filename}" if e.filename else ""
    if e.errno == errno.EROFS:
        return (f"read-only file system:{where}; this command writes to the store (info, verify without "
                "--repair, export and the probes only read it): copy the store to a writable place, or mount it "
                "read-write")
    if isinstance(e, PermissionError):
        return (f"permission denied:{where} (running as user {user}, uid {os.getuid()}); ask its owner for access, "
                "or work on a copy you own")
    return f"{e.strerror or type(e).__name__}:{where} ({e})"


class _Group(click.Group):
    """A click group that turns user errors into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        # Warnings (an old store format, library versions that differ from the first build) are
        # messages for the user: one line each, not Python's "file:line: RuntimeWarning" plus the
        # source line. Only the formatting changes; filters and recording (pytest) are untouched.
        saved, warnings.formatwarning = warnings.formatwarning, _format_warning
        try:
            return super().invoke(ctx)
        except FacestoreError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(exit_code(e))
        except BrokenPipeError:  # `facestore models | head`: the reader has all it wanted; say nothing
            _silence_stdout()
            ctx.exit(EXIT_PROBLEMS)
        except OSError as e:  # permissions, a full disk, I/O errors: the path and the user, not a traceback
            click.echo(f"Error: {_os_error_message(e)}", err=True)
            ctx.exit(EXIT_OS)
        except KeyboardInterrupt:  # Ctrl-C: click would print only "Aborted!"
            resumable = ctx.invoked_subcommand in ("build", "import", "index", "upgrade", "text")
            click.echo("\nError: interrupted" + ("; everything committed so far is kept: run the same command again "
                                                  "to resume (`facestore info STORE` shows what is done)"
                                                  if resumable else ""), err=True)
            ctx.exit(EXIT_INTERRUPTED)
        finally:
            warnings.formatwarning = saved


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not hit the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (click's test runner)
        pass


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    return f"Warning: {message}\n"


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable)


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    # verbose: facestore's own lines (the device, precision and providers that actually ran). Not
    # the root logger's: open_clip logs a dozen INFO lines per model load to it ("root: Parsing
    # model identifier ..."), which buried ours.
    logging.getLogger("facestore").setLevel(logging.INFO if verbose else logging.WARNING)
    # huggingface_hub logs through a handler of its own; propagating to ours too printed every
    # hub line twice.
    logging.getLogger("huggingface_hub").propagate = False


def _disable_library_progress_bars() -> None:
    """``--no-progress`` silences the libraries' bars too (transformers' "Loading weights" bar).

    transformers reads huggingface_hub's switch when it is imported, so it need not be imported
    here (seconds, for a build of weight-free models); only an already imported one is told.
    """
    try:
        import huggingface_hub.utils
    except ImportError:
        return
    huggingface_hub.utils.disable_progress_bars()
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].disable_progress_bar()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="facestore", prog_name="facestore")
def main() -> None:
    """Extract frozen-encoder embeddings once per model into a Zarr store, and inspect it."""


# --------------------------------------------------------------------------- build


def _parse_weights(values: tuple[str, ...], models: tuple[str, ...]) -> Any:
    """``--weights DIR`` (one model) or ``--weights NAME=DIR`` (any number)."""
    if not values:
        return None
    mapping: dict[str, str] = {}
    plain: list[str] = []
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name in models:
            if name in mapping:
                raise click.UsageError(f"--weights given twice for {name}")
            mapping[name] = path
        else:
            plain.append(v)
    if plain and (mapping or len(plain) > 1):
        raise click.UsageError(
            f"--weights {plain[0]!r}: with several --weights, give each as NAME=DIR where NAME is one of the "
            f"--model names ({', '.join(models)})"
        )
    return plain[0] if plain else mapping


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True), help="image folder ROOT/<name>/... or manifest CSV")
@click.option("--store", "store_path", required=True, type=click.Path(), help="store directory (created if absent)")
@click.option("--model", "models", required=True, multiple=True, help="registry name; repeat for several models (one decode)")
@click.option("--weights", multiple=True, help="local weights: DIR (one model) or NAME=DIR (repeatable)")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="images per forward pass; recorded with the vectors (a resume must use the same)")
@click.option("--device", default="auto", show_default=True,
              help="auto|cpu|cuda|cuda:N; CPU vs CUDA is recorded with the vectors")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="decode processes; 0 decodes in this process [default: usable cores - 1]")
@click.option("--decode", default="auto", show_default=True, type=click.Choice(["auto", "pil", "draft"]),
              help="auto: torchvision for plain JPEGs, PIL otherwise (identical pixels); pil: PIL only; "
                   "draft: PIL's DCT-scaled JPEG decoding (faster, different pixels, recorded)")
@click.option("--dtype", default="float16", show_default=True, type=click.Choice(["float16", "float32"]),
              help="storage dtype of the vectors (computed in float32 or the --precision)")
@click.option("--chunk-rows", default=8192, show_default=True, type=click.IntRange(min=1),
              help="rows per store chunk: the unit of writing and of resuming")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="compute precision; auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32")
@click.option("--arcface-align", type=click.Choice(["detect", "center"]), default=None,
              help="ArcFace: detect landmarks and align (default), or crop the chip's centre")
@click.option("--no-face", type=click.Choice(["record", "center"]), default=None,
              help="ArcFace, chips without a detected face: record as no_face (default) or use the centre crop")
@click.option("--strict", is_flag=True, help="exit non-zero if any image failed (after recording it)")
@click.option("--follow-symlinks", is_flag=True,
              help="index images whose real location (through a symbolic link) is outside the dataset root, and "
                   "record them; without it they are skipped (folder) or refused (manifest)")
@click.option("--rehash", is_flag=True,
              help="before building, fingerprint every stored image again, not only those whose size or mtime "
                   "changed (catches edits that restored the modification time)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option("--json", "as_json", is_flag=True, help="print the build report as JSON")
def build(data, store_path, models, weights, batch_size, device, workers, decode, dtype, chunk_rows, precision,
          arcface_align, no_face, strict, follow_symlinks, rehash, no_progress, as_json) -> None:
    """Extract embeddings of every image for each --model; resumable, appends new images.

    Under torchrun (`torchrun --nproc-per-node N -m facestore build ...`) each rank takes whole chunks.
    """
    from facestore.build import build_store
    from facestore.dataset import scan_dataset
    from facestore.distributed import context_from_env

    _setup_logging(verbose=True)
    if no_progress:
        _disable_library_progress_bars()
    options = {k: v for k, v in (("arcface_align", arcface_align), ("no_face", no_face)) if v is not None}
    # Scanned here so the dataset options reach the index; build_store takes the scanned dataset as is.
    dataset = scan_dataset(data, follow_symlinks=follow_symlinks)
    ctx = context_from_env()
    if rehash and (ctx is None or ctx.is_main):
        _rehash(store_path, dataset)
    report = build_store(
        dataset, store_path, list(models), weights=_parse_weights(weights, models), batch_size=batch_size,
        device=device, workers=workers, dtype=dtype, chunk_rows=chunk_rows, precision=precision,
        strict=strict, options=options, progress=not no_progress, decode=decode,
    )
    if ctx is None or ctx.is_main:
        click.echo(_json(report.to_dict()) if as_json else report.summary())


def _rehash(store_path: str, dataset) -> None:
    """``--rehash``: check every stored image's content before the build appends (nothing to do for a new store)."""
    from pathlib import Path

    from facestore.store.store import open_store

    if (Path(store_path) / "zarr.json").exists():
        rep = open_store(store_path, mode="a").sync_index(dataset, rehash=True, lock_wait_s=3600)
        click.echo(f"re-fingerprinted {rep.rehashed} stored images: unchanged", err=True)


# --------------------------------------------------------------------------- models


@main.command()
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="print the matching specs as JSON")
def models(pattern: str, as_json: bool) -> None:
    """List registry models matching PATTERN (shell wildcard): dims, views, source, licence."""
    from facestore.models import get_spec, list_models

    names = list_models(pattern)
    if not names:
        raise ModelNotFoundError(f"no model matches {pattern!r}; available: {', '.join(list_models())}")
    specs = [get_spec(n) for n in names]
    if as_json:
        click.echo(_json([s.to_dict() | {"description": s.description} for s in specs]))
        return
    for s in specs:
        views = ", ".join(f"{v.name} {v.dim}" for v in s.views)
        flags = " [text]" if s.text else ""
        click.echo(f"{s.name:<18} {s.family:<10} views: {views}{flags}")
        click.echo(f"{'':<18} source: {s.source}; licence: {s.licence}")
    if any(s.family == "arcface" for s in specs):
        click.echo("\nNote: insightface's pretrained models (arcface-r50) are licensed for non-commercial research "
                   "use only.")


# --------------------------------------------------------------------------- store: index, inspection, integrity


@main.command("index")
@click.option("--data", required=True, type=click.Path(exists=True), help="image folder ROOT/<name>/... or manifest CSV")
@click.option("--store", "store_path", required=True, type=click.Path(), help="store directory (created if absent)")
@click.option("--follow-symlinks", is_flag=True,
              help="index images whose real location (through a symbolic link) is outside the dataset root, and "
                   "record them; without it they are skipped (folder) or refused (manifest)")
@click.option("--rehash", is_flag=True,
              help="fingerprint every stored image again, not only those whose size or mtime changed "
                   "(catches edits that restored the modification time)")
@click.option("--workers", default=8, show_default=True, type=click.IntRange(min=1), help="hashing threads")
def index_(data, store_path, follow_symlinks, rehash, workers) -> None:
    """Create a store with the dataset's index (or append new images), without building a model.

    Fill it with `facestore import` (vectors computed elsewhere) or `facestore build`.
    """
    from facestore.store.store import index_dataset

    _setup_logging(verbose=False)
    rep = index_dataset(data, store_path, follow_symlinks=follow_symlinks, rehash=rehash, workers=workers)
    msg = f"store {store_path}: {rep.total} images ({rep.added} new)"
    if rep.new_names:
        msg += f", {len(rep.new_names)} new name(s)"
    if rep.rehashed:
        msg += f"; {rep.rehashed} re-fingerprinted, unchanged"
    click.echo(msg)
    if rep.skipped:
        click.echo(f"{len(rep.skipped)} entr{'y' if len(rep.skipped) == 1 else 'ies'} not indexed (recorded; "
                   f"`facestore info {store_path} --json` lists them):")
        for p, r in rep.skipped[:10]:
            click.echo(f"  {p}: {r}")
    if rep.missing:
        click.echo(f"{len(rep.missing)} stored image(s) are no longer in the dataset (kept), e.g. {rep.missing[0]}")


#: Failed images ``facestore info`` prints per model (``--json`` lists every one).
_FAILURES_SHOWN = 5


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the whole description as JSON")
def info(store_path: str, as_json: bool) -> None:
    """Describe a store: images, names, models with their status counts and failed images, covariates."""
    from facestore.store.store import open_store

    store = open_store(store_path, mode="r")
    data = store.info()
    if as_json:
        click.echo(_json(data))
        return
    click.echo(f"store {data['path']}: {data['n_images']} images, {data['n_names']} names"
               + (f", {data['n_identities']} identities" if data["n_identities"] is not None else "")
               + f" (images per name {data['images_per_name']['min']}-{data['images_per_name']['max']})")
    attrs = data["attrs"]
    click.echo(f"format {attrs.get('encoding-type')} {attrs.get('encoding-version')}; data root {attrs.get('data_root')}")
    for m, s in data["models"].items():
        status = ", ".join(f"{k} {v}" for k, v in s["status"].items())
        views = ", ".join(f"{v} {d}" for v, d in s["views"].items())
        # The exact command, with the recorded settings a resume must repeat (others are refused).
        state = "complete" if s["complete"] else f"INCOMPLETE: finish it with {store.fix_command(m)}"
        click.echo(f"  {m} [{s['kind']}]: {views}; {s['dtype']}; {status}; {state}")
        shown = s["failures"][:_FAILURES_SHOWN]
        for f in shown:
            detail = f["detail"].removeprefix(f"{f['reason']}: ")  # the detail starts with the reason again
            click.echo(f"    failed: {f['image_id']}: {f['reason']}" + (f" ({detail})" if detail else ""))
        if len(s["failures"]) > len(shown):
            click.echo(f"    ... and {len(s['failures']) - len(shown)} more failed images "
                       f"(`facestore info {store_path} --json` lists them all)")
        if s["text_template_sets"]:
            click.echo(f"    text embeddings: {', '.join(s['text_template_sets'])}")
    if data["covariates"]:
        parts = []
        for c, meta in data["covariates"].items():
            src = f" from {meta['source']}" if meta.get("source") else ""
            parts.append(f"{c} ({meta['kind']}{src})")
        click.echo(f"covariates: {', '.join(parts)}")
    if data["splits"]:
        click.echo(f"splits: {', '.join(data['splits'])}")
    if data["identity_sources"]:
        click.echo(f"identity sources: {', '.join(data['identity_sources'])}")
    if data["skipped"]["count"]:
        click.echo(f"{data['skipped']['count']} dataset entries not indexed (not regular files, links outside the "
                   "root, ...): `facestore info --json` lists them")


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path())
@click.option("--data", type=click.Path(), default=None, help="dataset to check fingerprints against [default: the build's]")
@click.option("--no-files", is_flag=True, help="skip re-fingerprinting the images (check the store only)")
@click.option("--repair", is_flag=True,
              help="reset the rows of damaged model chunks to pending, so that the next build (or the same import) "
                   "recomputes exactly those chunks")
@click.option("--json", "as_json", is_flag=True, help="print the problems as JSON")
def verify(store_path: str, data: str | None, no_files: bool, repair: bool, as_json: bool) -> None:
    """Check a store (index, models, splits, covariates, images); exits 1 and lists the problems if any."""
    from facestore.store.verify import repair_store, verify_store

    problems = verify_store(store_path, data=data, check_files=not no_files)
    if repair:
        reset = repair_store(store_path)
        for m, chunks in reset.items():
            click.echo(f"reset {len(chunks)} chunk(s) of {m} to pending: {chunks[:20]}; now run the build (or import) "
                       "again to recompute them", err=True)
    if as_json:
        click.echo(_json([{"kind": p.kind, "model": p.model, "message": p.message, "chunks": list(p.chunks)}
                          for p in problems]))
    if problems:
        if not as_json:
            for p in problems:
                click.echo(f"  {p}", err=True)
        click.echo(f"Error: {len(problems)} problem(s) found in {store_path} (listed above)", err=True)
        sys.exit(EXIT_PROBLEMS)
    if not as_json:
        click.echo(f"{store_path}: OK")


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path())
def upgrade(store_path: str) -> None:
    """Migrate a store of an older format to the current one (checksummed chunks), in place."""
    from facestore.store.upgrade import upgrade_store

    rep = upgrade_store(store_path)
    if rep["arrays"] == 0 and rep["from"] == rep["to"]:
        click.echo(f"{store_path}: already format {rep['to']}; nothing to do")
        return
    click.echo(f"{store_path}: upgraded from format {rep['from']} to {rep['to']} ({rep['arrays']} arrays rewritten); "
               f"`facestore verify {store_path}` checks it")


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path())
@click.option("--from", "from_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV with an image_id or path column; every other column becomes a covariate")
@click.option("--name-gender", is_flag=True,
              help="derive name_gender (f/m/unknown) and name_gender_probability from the names with the shipped "
                   "lexicon (offline)")
@click.option("--threshold", type=click.FloatRange(0, 0.5), default=None,
              help="--name-gender: largest uncertainty 0.5 - |0.5 - p| still placed [default: the lexicon's, 0.1]")
@click.option("--replace", is_flag=True, help="--from: overwrite covariates of the same name")
def covariates(store_path, from_file, name_gender, threshold, replace) -> None:
    """Add per-image covariates to a store: from a CSV, or the names' gender from a lexicon."""
    from facestore.store.covariates import add_name_gender, covariates_from_csv
    from facestore.store.store import open_store

    if not from_file and not name_gender:
        raise click.UsageError("give --from FILE.csv, --name-gender, or both")
    if threshold is not None and not name_gender:
        raise click.UsageError("--threshold applies to --name-gender")
    store = open_store(store_path, mode="a")
    if from_file:
        rep = covariates_from_csv(store, from_file, replace=replace)
        click.echo(f"added {', '.join(rep['covariates'])} for {rep['rows_matched']} images "
                   f"({rep['rows_missing']} store images not in the file: missing values)")
    if name_gender:
        rep = add_name_gender(store, threshold=threshold)
        c = rep["names"]
        # The lexicon's source names its version already ("nomquamgender 0.1.4 (...)"): say it once.
        source = rep["source"] if str(rep["version"]) in str(rep["source"]) else f"{rep['source']} {rep['version']}"
        click.echo(f"added name_gender ({source}, threshold {rep['threshold']}): names f {c['f']}, "
                   f"m {c['m']}, unknown {c['unknown']}")
        if rep["unknown"]:
            shown = ", ".join(rep["unknown"][:20])
            more = f" and {len(rep['unknown']) - 20} more" if len(rep["unknown"]) > 20 else ""
            click.echo(f"unknown (not in the lexicon, or too ambiguous): {shown}{more}")


@main.command("import")
@click.argument("store_path", metavar="STORE", type=click.Path())
@click.option("--model", required=True, help="model group name to create (e.g. arcface-phase3)")
@click.option("--embeddings", required=True, type=click.Path(exists=True, dir_okay=False), help="(N, D) .npy")
@click.option("--ids", "ids_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="image IDs: .npy of strings or a text file, one per line, in the rows' order")
@click.option("--view", default="embedding", show_default=True, help="name of the view the vectors are stored as")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float16", "float32"]),
              help="storage dtype")
@click.option("--allow-missing", is_flag=True, help="record store images without a vector as not_imported")
@click.option("--ignore-unknown-ids", is_flag=True,
              help="skip vectors whose image ID is not in the store (vectors for a superset of its images)")
def import_(store_path, model, embeddings, ids_path, view, dtype, allow_missing, ignore_unknown_ids) -> None:
    """Store embeddings computed elsewhere, keyed by image ID (resumable: rerun it after an interruption)."""
    import numpy as np

    from facestore.store.store import open_store
    from facestore.store.transfer import import_embeddings, read_ids

    try:
        summary = import_embeddings(open_store(store_path, mode="a"), model,
                                    embeddings=np.load(embeddings, allow_pickle=False), ids=read_ids(ids_path),
                                    view=view, dtype=dtype, allow_missing=allow_missing,
                                    ignore_unknown_ids=ignore_unknown_ids, source=str(embeddings))
    except (ValueError, KeyError) as e:
        if isinstance(e, FacestoreError):
            raise
        raise click.UsageError(str(e.args[0] if e.args else e)) from None
    msg = (f"imported {summary['imported']} vectors into {model}/{summary['view']} "
           f"({summary['not_imported']} store images without a vector)")
    if summary["ignored_unknown_ids"]:
        msg += f"; ignored {summary['ignored_unknown_ids']} vectors whose image ID is not in the store"
    click.echo(msg)


@main.command("export")
@click.argument("store_path", metavar="STORE", type=click.Path())
@click.option("--model", required=True, help="a model stored in STORE")
@click.option("--view", default=None, help="[default: the model's default view]")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder (created)")
def export(store_path, model, view, out) -> None:
    """Write embeddings.npy, image_ids.npy, labels.npy, names.json, spec.json (ok rows)."""
    from facestore.store.store import open_store
    from facestore.store.transfer import export_embeddings

    summary = export_embeddings(open_store(store_path, mode="r"), model, out=out, view=view)
    click.echo(f"exported {summary['rows']} x {summary['dim']} ({model}/{summary['view']}) to {summary['out']}")


# --------------------------------------------------------------------------- text, doctor, demo


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path())
@click.option("--model", required=True, help="a model with a text tower (clip-vit-b-32, siglip-base)")
@click.option("--templates", "templates_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="one template per line with {} for the name [default: the plan's five]")
@click.option("--template-set", default=None, help="name to store them under; without --templates, a built-in set: plan (default) or "
              "name-tailored [default: plan, or the file's stem]")
@click.option("--weights", type=click.Path(exists=True), default=None, help="local weights directory")
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda|cuda:N")
def text(store_path, model, templates_file, template_set, weights, device) -> None:
    """Store name x template text embeddings for zero-shot probes."""
    from pathlib import Path

    from facestore.text import build_text_embeddings, read_templates

    templates = read_templates(templates_file) if templates_file else None
    if template_set is None:
        template_set = Path(templates_file).stem if templates_file else "plan"
    report = build_text_embeddings(store_path, model, templates=templates, template_set=template_set,
                                   weights=weights, device=device)
    click.echo(report.summary())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def doctor(as_json: bool) -> None:
    """Report versions, devices, bf16 support, onnxruntime providers, faiss GPUs, HF cache (for bug reports)."""
    from facestore.doctor import doctor_report, format_report

    report = doctor_report()
    click.echo(_json(report) if as_json else format_report(report))


@main.command()
@click.argument("directory", default="facestore-demo", type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="a smaller dataset and fewer bootstrap draws (about a minute)")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-progress", is_flag=True, help="no progress bars (they show only on a terminal anyway)")
def demo(directory: str, quick: bool, device: str, no_progress: bool) -> None:
    """Make a synthetic face-chip dataset in DIRECTORY, build a store, run the Track 3 probes and write the HTML report."""
    # The demo runs both packages, so it lives in probes (the upper layer) and is resolved here, at
    # the CLI edge, only when asked for: facestore itself never imports probes.
    try:
        from probes.demo import run_demo
    except ImportError as e:
        raise click.ClickException(
            f"facestore demo runs the probes package too, and it could not be imported ({e}); "
            "install the whole distribution (pip install -e .) or run `probes demo`"
        ) from e

    # Bars only on a terminal: in a log or a pipe they are carriage-return noise.
    run_demo(directory, quick=quick, device=device, progress=not no_progress and sys.stderr.isatty(), echo=click.echo)

"""What every ``probes`` command shares: one exit code per class of error, ``-h``, and the
options that every probe family takes (``--control``, ``--within``, ``--foils``,
``--allow-incomplete``).

Exit codes are facestore's (docs/faq.md), so a script that runs both tools reads them alike:

====  ==================================================================================
0     success
1     the command ran and found problems: an experiment of ``probes track3`` failed, a model
      group is unfinished (rows still pending: finish it, or pass ``--allow-incomplete``)
2     usage or input error: a bad option, an unknown model, view, split, names task or
      covariate, too little data for the asked task, an unusable results folder
3     the store is damaged (a checksum, size or dtype that disagrees, non-finite vectors):
      run ``facestore verify``
4     the store is locked by another live process
5     permission denied, or another operating-system error (disk full, I/O error)
130   interrupted (Ctrl-C, 128 + SIGINT): what was committed is kept, the same command resumes
====  ==================================================================================

Every :class:`~probes.errors.ProbeError` is an input error (2); facestore's errors keep the code
``facestore`` gives them (:func:`facestore.cli.exit_code`); an ``OSError`` is 5. The message is
one line (``Error: ...``), never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import click

__all__ = ["CONTEXT", "ProbeCommand", "ProbeGroup", "exit_code", "family_options", "split_list"]

# `-h` as well as `--help`, on the group and (inherited by their contexts) on every command.
CONTEXT = {"help_option_names": ["-h", "--help"]}


def exit_code(error: BaseException) -> int:
    """The exit code of ``probes`` (and ``facestore``) for ``error``: see the module docstring."""
    from facestore.cli import EXIT_OS, EXIT_PROBLEMS, EXIT_USAGE
    from facestore.cli import exit_code as facestore_exit_code
    from facestore.errors import FacestoreError

    from probes.errors import ProbeError

    if isinstance(error, ProbeError):
        return EXIT_USAGE
    if isinstance(error, FacestoreError):
        return facestore_exit_code(error)
    if isinstance(error, OSError):
        return EXIT_OS
    return EXIT_PROBLEMS


def _message(error: BaseException) -> str:
    from facestore.cli import _os_error_message
    from facestore.errors import FacestoreError

    from probes.errors import ProbeError

    if isinstance(error, OSError) and not isinstance(error, (FacestoreError, ProbeError)):
        return _os_error_message(error)
    return str(error)


def _user_errors() -> tuple[type[BaseException], ...]:
    from facestore.errors import FacestoreError

    from probes.errors import ProbeError

    return (ProbeError, FacestoreError, OSError)


def _handled(invoke, ctx: click.Context) -> Any:
    try:
        return invoke(ctx)
    except _user_errors() as e:
        click.echo(f"Error: {_message(e)}", err=True)
        ctx.exit(exit_code(e))
    except KeyboardInterrupt:  # Ctrl-C: click would print only "Aborted!" and exit 1 ("found problems")
        from facestore.cli import EXIT_INTERRUPTED

        click.echo("\nError: interrupted; result folders are written whole or not at all, so nothing finished is "
                   "lost: run the same command again", err=True)
        ctx.exit(EXIT_INTERRUPTED)


class ProbeCommand(click.Command):
    """A command that prints a user error as one line and exits with its class's code."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("context_settings", dict(CONTEXT))
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _progress_on_stderr():
            return _handled(super().invoke, ctx)


class _ProgressHandler(logging.Handler):
    """``probes.progress`` lines on stderr, a permutation line at most every ``every`` seconds
    (99 of them would bury the result), every other line (start, stop) always."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__(logging.INFO)
        self.every, self.last = every, float("-inf")

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if line.startswith("permutation "):
            now = time.monotonic()
            if now - self.last < self.every:
                return
            self.last = now
        click.echo(line, err=True)


@contextlib.contextmanager
def _progress_on_stderr():
    logger = logging.getLogger("probes.progress")
    if any(isinstance(h, _ProgressHandler) for h in logger.handlers):  # a command inside a command
        yield
        return
    handler, level = _ProgressHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class ProbeGroup(click.Group):
    """The ``probes`` group: its commands are :class:`ProbeCommand` and errors are handled the same way."""

    command_class = ProbeCommand

    def invoke(self, ctx: click.Context) -> Any:
        return _handled(super().invoke, ctx)


def split_list(values) -> tuple[str, ...]:
    """A repeatable, comma-separated option as one tuple (``--control a,b --control c``)."""
    out: list[str] = []
    for v in values or ():
        out += [x.strip() for x in str(v).split(",") if x.strip()]
    return tuple(dict.fromkeys(out))


def family_options(*, permutations: bool = True):
    """``--control``, ``--within``, ``--foils``, ``--allow-incomplete`` (and, for families without
    a plain permutation null, ``--permutations`` for the controls' null)."""

    def deco(f):
        if permutations:
            f = click.option("--permutations", default=None, type=click.IntRange(min=1),
                             help="Within-stratum permutations of --control (default 99, so p can reach 0.01).")(f)
        f = click.option("--allow-incomplete", is_flag=True,
                         help="Run on a model whose rows are not all written yet (a build still running or "
                              "interrupted), using the rows written so far; summary.json records it.")(f)
        f = click.option("--foils", "foils", multiple=True,
                         help="Forced-choice foils: uniform, popularity, same-COVARIATE (e.g. same-gender: the foil "
                              "has the true name's value); repeatable or comma-separated [default: uniform,popularity; "
                              "--control COV adds same-COV]. Implies --forced-choice.")(f)
        f = click.option("--within", "within", default=None,
                         help="Also run the names task inside each value of this covariate (e.g. the female names "
                              "on the female-labelled images), one result folder per value "
                              "(track3_{experiment}_within-{covariate}-{value}).")(f)
        f = click.option("--control", "controls", multiple=True,
                         help="Covariate to control for (e.g. name_gender): summary.json gains controls.{covariate} "
                              "(oracle, from-face, beyond with a within-stratum permutation null); repeatable or "
                              "comma-separated.")(f)
        return f

    return deco

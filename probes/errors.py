"""The errors the probe library raises.

Every error subclasses a builtin as well as :class:`ProbeError`, so callers can catch either
(``SplitNotFoundError`` is also a ``LookupError``). Messages say what was wrong, what was
expected and how to fix it.
"""

from __future__ import annotations


class ProbeError(Exception):
    """Base class of every probes error."""


class ProbeConfigError(ProbeError, ValueError):
    """An argument or hyperparameter is invalid (unknown option, bad range)."""


class SplitError(ProbeError, ValueError):
    """A split cannot be made as asked, or a split violates identity disjointness."""


class SplitNotFoundError(ProbeError, LookupError):
    """No split of that name in the store."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


class NameTaskError(ProbeError, ValueError):
    """A name task (``all``, ``top30``, a file, ``--min-images``) cannot be resolved."""


class NotEnoughDataError(ProbeError, ValueError):
    """Too few rows or classes for the asked operation (empty subset, one class)."""


class ResultFormatError(ProbeError, ValueError):
    """A result folder is missing files or has files of the wrong shape."""


class CovariateError(ProbeError, LookupError):
    """A covariate the store does not have, or one a control cannot use (numeric, a single value)."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


class ResultsNotFoundError(ProbeError, FileNotFoundError):
    """No result folder where one was expected (``probes compare``, ``probes report``)."""

"""The errors facestore raises.

Every error subclasses a builtin as well as :class:`FacestoreError`, so callers can catch
either (``StoreNotFoundError`` is also a ``FileNotFoundError``), as zarr does. Messages say
what was wrong, what was expected and how to fix it.
"""

from __future__ import annotations


class FacestoreError(Exception):
    """Base class of every facestore error."""


class DatasetError(FacestoreError, ValueError):
    """The dataset (image folder or manifest) cannot be ingested as given."""


class StoreError(FacestoreError):
    """Base class of store problems."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No facestore store at the given path."""


class StoreExistsError(StoreError, FileExistsError):
    """A store (or another non-empty directory) is already where a new store was asked for."""


class StoreFormatError(StoreError, ValueError):
    """The store exists but is not a facestore store this version can read."""


class StoreCorruptError(StoreFormatError):
    """A member of the store is damaged or missing: a chunk whose checksum or size is wrong, a
    missing array or chunk file, a dtype or length that disagrees with the format.

    The message names the member (model, view, chunk and rows where it applies) and says to run
    ``facestore verify``.
    """


class IncompleteModelError(StoreError, ValueError):
    """A model group is still being built or imported, or rows a caller needs are still pending.

    Raised by readers that must not see partial data (``probes``' ``load_xy``); the message names
    the command that finishes the group and the ``allow_incomplete`` escape hatch.
    """


class NonFiniteError(StoreError, ValueError):
    """Vectors that should be finite hold NaN or inf (a damaged or hand-edited store)."""


class ViewNotFoundError(StoreError, KeyError):
    """A view name that the model group does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message (stray quotes)
        return str(self.args[0]) if self.args else ""


class SpecMismatchError(StoreError, ValueError):
    """A build's resolved model spec differs from the one already stored."""


class StoreLockedError(StoreError, RuntimeError):
    """Another live process holds a write lock of the store (a model group, the index)."""


class DatasetChangedError(StoreError, ValueError):
    """Images already in the store changed on disk since they were indexed."""


class ModelNotFoundError(FacestoreError, LookupError):
    """A model name that is neither in the registry nor in the store."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(FacestoreError, FileNotFoundError):
    """Weights could not be found locally and could not be downloaded."""


class ModelConfigError(FacestoreError, ValueError):
    """A model cannot be loaded or run as asked: the weights, options or precision given do not fit
    it (a checkpoint of another architecture, an option it does not take, a random-init baseline
    given weights). The message names the model and what to change."""


class WeightsUnreadableError(FacestoreError, PermissionError):
    """A weights file exists but this process may not read it."""


class TemplateError(FacestoreError, ValueError):
    """Prompt templates that cannot be used (no ``{}`` slot, empty file, duplicates)."""


class DeviceError(FacestoreError, RuntimeError):
    """The requested device or execution provider is not available."""


class BuildError(FacestoreError, RuntimeError):
    """A build could not complete (``--strict`` failures, distributed setup)."""


class BuildUsageError(BuildError, ValueError):
    """A build asked for something that cannot be done as given (a model named twice, weights for a
    model not built, an option none of the models takes): a usage error, not a failed build."""


class ImageDecodeError(FacestoreError, ValueError):
    """An image could not be decoded. ``reason`` is a short code stored per row."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PreprocessFailure(FacestoreError, ValueError):
    """A decoded image cannot be fed to a model (for example ``no_face`` for ArcFace).

    Raised by a model's preprocessor; the build records ``reason`` for that row and skips it.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

"""Checks on a ``--weights`` folder before a family library reads it, so that errors say what is wrong.

Left to themselves the libraries report an empty folder as a traceback, a folder of pickled
files as "no file named model.safetensors", and an unreadable ``model.safetensors`` as "No such
file or directory ... pickled files". :func:`require_files` names the files a family expects and
what the folder holds instead; :func:`check_readable` says "permission denied", naming the file,
its owner and mode and the user running the build.
"""

from __future__ import annotations

import getpass
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

# WeightsUnreadableError lives with the other errors (the CLI maps it to its exit code); imported
# here too, where it has always been importable from.
from facestore.errors import WeightsNotFoundError, WeightsUnreadableError

__all__ = ["WeightsUnreadableError", "check_readable", "describe_folder", "pickled_hint", "readable_files",
           "require_files", "require_folder"]

#: Pickled checkpoint suffixes: facestore never loads them, and says so when they are all there is.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _open(path: Path):  # one seam for tests: the suite runs as root, which reads any file
    return open(path, "rb")


def describe_folder(path: Path, *, limit: int = 12) -> str:
    """``"it is empty"`` or ``"it holds a.json, b.bin, ..."`` (names only, sorted, at most ``limit``)."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except PermissionError:
        return "its listing is not readable (permission denied)"
    except OSError as e:
        return f"it cannot be listed ({e.strerror or e})"
    if not names:
        return "it is empty"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return "it holds " + ", ".join(names[:limit]) + more


def pickled_hint(path: Path) -> str:
    """A sentence on pickled checkpoints found in ``path`` ("" when there are none)."""
    try:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLED_SUFFIXES)
    except OSError:
        return ""
    if not pickled:
        return ""
    return (f" Found pickled {', '.join(pickled)}: facestore never unpickles weights; convert them with "
            "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors') or re-save with "
            "save_pretrained(..., safe_serialization=True).")


def require_folder(model: str, weights: str | os.PathLike, *, expected: str) -> Path:
    """``weights`` as a folder that exists and can be listed, else a message naming ``expected``."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"{model}: --weights {str(path)!r} does not exist; pass {expected}")
    if not path.is_dir():
        raise WeightsNotFoundError(f"{model}: --weights {str(path)!r} is not a directory; pass {expected}")
    return path


def require_files(model: str, folder: Path, groups: Sequence[Sequence[str]], *, expected: str) -> list[Path]:
    """The files of ``folder`` that satisfy each group (one glob pattern of each group must match).

    Raises :class:`WeightsNotFoundError` naming what is missing, what was expected and what the
    folder holds (pickled files get their own advice).
    """
    found: list[Path] = []
    missing: list[str] = []
    for alternatives in groups:
        hits = sorted({p for pattern in alternatives for p in folder.glob(pattern) if p.is_file()})
        if hits:
            found.extend(hits)
        else:
            missing.append(" or ".join(alternatives))
    if missing:
        raise WeightsNotFoundError(
            f"{model}: --weights {str(folder)!r} has no {'; no '.join(missing)}; expected {expected}, but "
            f"{describe_folder(folder)}.{pickled_hint(folder)}"
        )
    return found


def check_readable(model: str, paths: Iterable[Path]) -> None:
    """Open every file once; a permission problem raises :class:`WeightsUnreadableError` naming it."""
    for p in paths:
        try:
            with _open(Path(p)) as f:
                f.read(1)
        except PermissionError:
            raise WeightsUnreadableError(f"{model}: permission denied reading {p} ({_who(Path(p))}); make it "
                                         "readable for this user (chmod a+r) or copy the weights to a folder you "
                                         "own, then pass that folder as --weights") from None
        except IsADirectoryError:
            continue


def _who(path: Path) -> str:
    """``"owner uid 0, mode -rw-------; running as alice (uid 1000)"``."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "?"
    me = f"running as {user} (uid {os.getuid()})" if hasattr(os, "getuid") else f"running as {user}"
    try:
        st = path.stat()
    except OSError:
        return me
    return f"owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}; {me}"


def readable_files(folder: Path, patterns: Sequence[str]) -> list[Path]:
    """Files of ``folder`` matching any of ``patterns`` (what a family will read), sorted."""
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})

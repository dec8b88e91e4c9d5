"""A per-key write lock in the store directory, with stale-lock detection.

The lock is a file created with ``O_EXCL`` holding the owner's host, pid, process start time
and a heartbeat. A lock is stale when its process is gone (same host: the pid is dead or was
reused by a newer process) or, for another host, when its heartbeat is older than
``stale_after`` seconds. A stale lock is broken with a warning; a live one raises
:class:`~facestore.errors.StoreLockedError` saying who holds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path

from facestore.errors import StoreLockedError


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Context manager holding ``<store>/.locks/<key>.lock``."""

    def __init__(self, path: str | os.PathLike, *, owner: str = "", stale_after: float = 600.0) -> None:
        self.path = Path(path)
        self.owner = owner
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self._held = False

    def _record(self) -> dict:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "start": _process_start(pid),
            "owner": self.owner,
            "token": self.token,
            "acquired": time.time(),
            "heartbeat": time.time(),
        }

    def _is_stale(self, rec: dict) -> bool:
        if rec.get("host") == socket.gethostname():
            pid = int(rec.get("pid", -1))
            if pid <= 0 or not _pid_alive(pid):
                return True
            start = rec.get("start")
            return start is not None and _process_start(pid) not in (None, start)
        return time.time() - float(rec.get("heartbeat", 0)) > self.stale_after

    def acquire(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                rec = self.read()
                if rec is None:  # vanished or half-written by a process killed mid-create
                    if self.path.exists() and time.time() - self.path.stat().st_mtime < 5:
                        continue
                    self.path.unlink(missing_ok=True)
                    continue
                if self._is_stale(rec):
                    warnings.warn(
                        f"breaking stale lock {self.path} (held by pid {rec.get('pid')} on {rec.get('host')}, "
                        f"owner {rec.get('owner')!r}, which is no longer running)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise StoreLockedError(
                    f"{self.path.parent.parent} is being written by {rec.get('owner') or 'another build'} "
                    f"(pid {rec.get('pid')} on {rec.get('host')}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rec.get('acquired', 0)))}). "
                    "Wait for it to finish; if that process is gone for good, delete "
                    f"{self.path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self._held = True
            return self
        raise StoreLockedError(f"could not acquire {self.path}: it keeps changing; is another build starting?")

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def heartbeat(self) -> None:
        """Refresh the heartbeat (long builds call this per chunk so other hosts see the lock is live)."""
        if self._held:
            rec = self.read() or self._record()
            rec["heartbeat"] = time.time()
            tmp = self.path.with_suffix(f".{self.token}.tmp")
            tmp.write_text(json.dumps(rec))
            os.replace(tmp, self.path)

    def release(self) -> None:
        if self._held:
            rec = self.read()
            if rec is not None and rec.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""A per-key write lock in the store directory, with stale-lock detection and a bounded wait.

The lock is a file holding the owner's host, pid, process start time and a heartbeat; it is
created complete in one step (written to a temporary file, then hard-linked to its name, which
fails if the name exists), so no reader ever sees a half-written lock. A lock is stale when its
process is gone (same host: the pid is dead or was reused by a newer process) or, for another
host, when its heartbeat is older than ``stale_after`` seconds. While held, a timer thread
refreshes the heartbeat every ``stale_after / 4`` seconds, however long one unit of work takes.

Acquiring applies the same stale detection on every attempt: a stale lock is broken with a
warning, a live one is waited for (at most ``wait_s``) and then reported with who holds it in
:class:`~facestore.errors.StoreLockedError`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path

from facestore.errors import StoreLockedError

log = logging.getLogger("facestore.store")

#: A lock file younger than this that cannot be parsed is taken as being created right now.
_CREATE_GRACE_S = 5.0


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(rec: dict) -> str:
    """``"facestore build (pid 12 on host, since 2025-01-01 12:00:00)"`` from a lock record."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec.get("acquired", 0) or 0)))
    # Owners often name their pid already ("facestore build (pid 12)"): say it once.
    owner = (rec.get("owner") or "another process").removesuffix(f" (pid {rec.get('pid')})")
    return f"{owner} (pid {rec.get('pid')} on {rec.get('host')}, since {since})"


def locked_member(lock_path: Path) -> str:
    """What a lock file guards, for messages: ``"model 'dinov2-base' in S"``, ``"the index of S"``."""
    store, key = lock_path.parent.parent, lock_path.name.removesuffix(".lock")
    return {"index": f"the index of {store}", "create": str(store)}.get(key, f"model {key!r} in {store}")


class StoreLock:
    """Context manager holding ``<store>/.locks/<key>.lock``."""

    def __init__(self, path: str | os.PathLike, *, owner: str = "", stale_after: float = 600.0,
                 heartbeat_s: float | None = None) -> None:
        self.path = Path(path)
        self.owner = owner
        self.stale_after = stale_after
        self.heartbeat_s = stale_after / 4 if heartbeat_s is None else heartbeat_s
        self.token = uuid.uuid4().hex
        self._held = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        pid = os.getpid()
        now = time.time()
        return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid), "owner": self.owner,
                "token": self.token, "acquired": now, "heartbeat": now}

    def is_stale(self, rec: dict) -> bool:
        """Whether the holder recorded in ``rec`` is gone (dead or reused pid; old heartbeat elsewhere)."""
        if rec.get("host") == socket.gethostname():
            try:
                pid = int(rec.get("pid", -1))
            except (TypeError, ValueError):
                return True
            if pid <= 0 or not _pid_alive(pid):
                return True
            start = rec.get("start")
            return start is not None and _process_start(pid) not in (None, start)
        try:
            beat = float(rec.get("heartbeat", 0))
        except (TypeError, ValueError):
            return True
        return time.time() - beat > self.stale_after

    _is_stale = is_stale  # the old private name

    def _create(self) -> bool:
        """Create the lock file, complete, in one step; False if it exists."""
        tmp = self.path.with_name(f".{self.path.name}.{self.token}.tmp")
        tmp.write_text(json.dumps(self._record()))
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(tmp.read_text())
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _try_acquire(self) -> dict | None:
        """Take the lock if free or stale; otherwise return the live holder's record."""
        for _ in range(5):
            if self._create():
                return None
            rec = self.read()
            if rec is None:
                try:
                    age = time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile
                if age < _CREATE_GRACE_S:
                    return {"owner": "a process creating this lock", "pid": "?", "host": "?", "acquired": time.time()}
                warnings.warn(f"breaking unreadable lock {self.path} (left by a process killed while creating it)",
                              RuntimeWarning, stacklevel=4)
                self.path.unlink(missing_ok=True)
                continue
            if self.is_stale(rec):
                warnings.warn(
                    f"breaking stale lock {self.path} (held by pid {rec.get('pid')} on {rec.get('host')}, "
                    f"owner {rec.get('owner')!r}, which is no longer running)",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._break(rec)
                continue
            return rec
        return {"owner": "processes that keep taking it", "pid": "?", "host": "?", "acquired": time.time()}

    def _break(self, rec: dict) -> None:
        # Remove the stale file only if it is still the one judged stale (not a new holder's).
        cur = self.read()
        if cur is None or cur.get("token") == rec.get("token"):
            self.path.unlink(missing_ok=True)

    def acquire(self, *, wait_s: float = 0.0, poll_s: float = 0.2) -> StoreLock:
        """Take the lock, waiting at most ``wait_s`` seconds for a live holder (stale ones are broken)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + max(0.0, wait_s)
        announced = False
        while True:
            holder = self._try_acquire()
            if holder is None:
                self._held = True
                self._start_heartbeat()
                return self
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waited = f" (waited {wait_s:.0f} s)" if wait_s > 0 else ""
                raise StoreLockedError(
                    f"{locked_member(self.path)} is being written by {describe_holder(holder)}{waited}. Wait for it "
                    f"to finish; if that process is gone for good, delete {self.path}"
                )
            if not announced:
                log.warning("waiting up to %.0f s for %s, held by %s", remaining, self.path, describe_holder(holder))
                announced = True
            time.sleep(min(poll_s, remaining))

    def read(self) -> dict | None:
        try:
            rec = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.heartbeat()
            except OSError as e:  # a full disk must not kill the build from a daemon thread
                log.warning("could not refresh the heartbeat of %s: %s", self.path, e)

    def heartbeat(self) -> None:
        """Refresh the heartbeat (a timer thread does this while the lock is held; callable any time)."""
        with self._mutex:
            if not self._held:
                return
            rec = self.read()
            if rec is not None and rec.get("token") != self.token:
                log.warning("lock %s was taken over by %s; not refreshing it", self.path, describe_holder(rec))
                return
            rec = rec or self._record()
            rec["heartbeat"] = time.time()
            tmp = self.path.with_name(f".{self.path.name}.{self.token}.tmp")
            tmp.write_text(json.dumps(rec))
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._mutex:
            if self._held:
                rec = self.read()
                if rec is not None and rec.get("token") == self.token:
                    self.path.unlink(missing_ok=True)
                self._held = False

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""Hugging Face hub access that fails fast, and once, on a machine without network.

Without ``HF_HUB_OFFLINE=1``, a hub load on a machine that cannot reach the hub retries for
about 30 s, logging every retry (twice, once per handler), before its error. Before any hub
load, :func:`offline_reason` tells whether the hub can be used: ``HF_HUB_OFFLINE`` set, or a
TCP connection to the hub endpoint that fails within :data:`PROBE_TIMEOUT_S` (checked once per
process). When it cannot, :func:`hub_call` runs the load in huggingface_hub's offline mode, so a
copy in the local cache still loads, and a missing one fails at once with one message saying
what to do (``--weights DIR``, ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from typing import Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlsplit

from facestore.errors import WeightsNotFoundError

T = TypeVar("T")

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


@functools.lru_cache(maxsize=8)
def _probe(host: str, port: int, timeout_s: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection, else why not (cached: one probe per process)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.gaierror:
        return f"{host} cannot be resolved (no DNS)"
    except TimeoutError:
        return f"{host}:{port} did not answer within {timeout_s:g} s"
    except OSError as e:
        return f"{host}:{port} is not reachable ({e.strerror or e})"


def offline_reason(*, env: Mapping[str, str] | None = None, endpoint: str | None = None,
                   probe: Callable[[str, int, float], str | None] = _probe) -> str | None:
    """Why the hub cannot be used from here, or None when a hub load may go ahead.

    ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set counts as offline. Behind a proxy the
    direct probe says nothing about reachability, so it is skipped and the hub is tried.
    """
    env = os.environ if env is None else env
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if str(env.get(var, "")).strip().lower() in _TRUE:
            return f"{var}={env[var]} is set"
    if any(env.get(v) for v in _PROXY_VARS):
        return None
    url = urlsplit(endpoint or _endpoint())
    if not url.hostname:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    return probe(url.hostname, port, PROBE_TIMEOUT_S)


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """huggingface_hub's offline mode for the calls inside (the cache only, no request, no retry).

    ``huggingface_hub.constants.is_offline_mode()`` reads this flag at call time; transformers,
    timm and open_clip all go through it. Restored on exit: the process is not left offline.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def offline_message(model: str, repo: str, reason: str, *, expected: str) -> str:
    """The one message for "not cached and the hub cannot be used"."""
    from huggingface_hub import constants

    hint = ("" if reason.startswith(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
            else " If this machine is meant to be offline, set HF_HUB_OFFLINE=1 to skip the network check.")
    return (
        f"{model}: {repo!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot be used "
        f"({reason}). Pass --weights DIR with a local copy ({expected}), or download it once on a machine with "
        f"network (`hf download {repo}`) and copy the cache here.{hint}"
    )


def hub_call(fn: Callable[[], T], *, model: str, repo: str, expected: str,
             catch: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError),
             passthrough: Callable[[BaseException], bool] | None = None) -> T:
    """Run the hub load ``fn``: as is when the hub is reachable, else from the cache only.

    Offline, a load that finds nothing in the cache raises one :class:`WeightsNotFoundError`
    (``offline_message``) at once instead of retrying for half a minute; errors for which
    ``passthrough`` is true (a gated repo) are left to the caller, as are all errors online.
    """
    reason = offline_reason()
    if reason is None:
        return fn()
    with offline_mode():
        try:
            return fn()
        except WeightsNotFoundError:
            raise
        except catch as e:
            if passthrough is not None and passthrough(e):
                raise
            raise WeightsNotFoundError(offline_message(model, repo, reason, expected=expected)) from e

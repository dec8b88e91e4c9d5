"""Where and at what precision a model runs: one resolution shared by every torch family.

``device`` is ``auto|cpu|cuda|cuda:N``; CUDA asked for but missing is a :class:`DeviceError`,
never a silent CPU run. ``precision`` is ``auto|fp32|bf16|fp16``: ``auto`` is bf16 autocast on
CUDA (fp16 where the GPU lacks bf16) and on CPUs that compute bf16 natively, fp32 otherwise
(emulated bf16 is slower than fp32). The resolved precision is recorded in the store's spec.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from facestore.errors import DeviceError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str) -> Any:
    """``auto|cpu|cuda|cuda:N`` -> ``torch.device``; CUDA asked for but missing raises ``DeviceError``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device or "").startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} requested but torch sees no CUDA device (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); use --device cpu or --device auto, or install a CUDA "
                "build of torch that matches the driver (`facestore doctor` shows what torch sees)"
            )
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise DeviceError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
        return dev
    raise DeviceError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16/AMX, Arm BF16)."""
    try:
        import torch

        if bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return True
    except (AttributeError, RuntimeError, ImportError):
        pass
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision: str, device: Any) -> str:
    """``auto|fp32|bf16|fp16`` -> the compute precision actually used on ``device``."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not cuda:
        raise DeviceError("precision 'fp16' is CUDA-only (CPU fp16 autocast is slow and inexact); use bf16 or fp32")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    return precision


def autocast_dtype(precision: str) -> Any:
    """The torch dtype autocast runs in for ``precision`` (``None`` for fp32: no autocast)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

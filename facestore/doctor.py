"""An environment report: what a user pastes into a bug report.

:func:`doctor_report` gathers library versions, torch devices and bf16 support, the
onnxruntime execution providers (and the onnxruntime / onnxruntime-gpu clash insightface users
lose days to), faiss GPU availability and the Hugging Face cache and offline settings.
:func:`format_report` renders it for a terminal. Nothing here raises: a library that fails to
import is reported as such.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

# distribution name -> import name, in the order they are shown
_LIBRARIES = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("transformers", "transformers"),
    ("timm", "timm"),
    ("open_clip_torch", "open_clip"),
    ("insightface", "insightface"),
    ("onnxruntime", "onnxruntime"),
    ("onnxruntime-gpu", "onnxruntime"),
    ("zarr", "zarr"),
    ("numcodecs", "numcodecs"),
    ("faiss-cpu", "faiss"),
    ("faiss-gpu", "faiss"),
    ("faiss-gpu-cu12", "faiss"),
    ("scikit-learn", "sklearn"),
    ("numpy", "numpy"),
    ("pillow", "PIL"),
    ("click", "click"),
    ("facestore", "facestore"),
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:  # report, never crash: this is the tool for broken installs
        return {"error": f"cannot import torch: {e}"}
    info: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": _cpu_bf16(torch),
        "devices": [],
    }
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["devices"].append({
                "index": i,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            })
        info["cuda_bf16"] = bool(torch.cuda.is_bf16_supported())
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps is not None and mps.is_available())
    return info


def _cpu_bf16(torch: Any) -> bool:
    """Whether this CPU has native bf16 (AVX-512 BF16 / AMX): where bf16 autocast pays off."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def _onnxruntime_info() -> dict[str, Any]:
    cpu, gpu = _version("onnxruntime"), _version("onnxruntime-gpu")
    info: dict[str, Any] = {"onnxruntime": cpu, "onnxruntime-gpu": gpu, "warnings": []}
    if cpu and gpu:
        info["warnings"].append(
            "both onnxruntime and onnxruntime-gpu are installed: they share one module and the CPU "
            "package hides the CUDA provider. Fix: pip uninstall -y onnxruntime onnxruntime-gpu && "
            "pip install onnxruntime-gpu"
        )
    try:
        import onnxruntime

        info["available_providers"] = list(onnxruntime.get_available_providers())
        info["device"] = onnxruntime.get_device()
    except Exception as e:
        info["available_providers"] = []
        info["error"] = f"cannot import onnxruntime: {e}"
    return info


def _faiss_info() -> dict[str, Any]:
    try:
        import faiss
    except Exception as e:
        return {"error": f"cannot import faiss: {e}", "gpus": 0}
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return {"version": getattr(faiss, "__version__", None), "gpus": int(get_num_gpus()) if get_num_gpus else 0}


def _hf_info() -> dict[str, Any]:
    try:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
        offline = bool(constants.HF_HUB_OFFLINE)
    except Exception:
        cache = os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    return {
        "hub_cache": str(cache),
        "offline": offline,
        "token_present": bool(os.environ.get("HF_TOKEN")) or os.path.exists(
            os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "token")),
    }


def _pipeline_info() -> dict[str, Any]:
    """What a build would use here: usable cores, default decode workers, /dev/shm, the JPEG decoder."""
    info: dict[str, Any] = {}
    try:
        from facestore.build import cgroup_cpu_limit, default_workers, shm_free_bytes, usable_cores

        info["usable_cores"] = usable_cores()
        info["cgroup_cpu_quota"] = cgroup_cpu_limit()
        info["default_workers"] = default_workers()
        free = shm_free_bytes()
        info["dev_shm_free_mib"] = None if free is None else round(free / 2**20)
    except Exception as e:  # report, never crash
        info["error"] = f"{type(e).__name__}: {e}"
    try:
        from facestore.images import fast_jpeg_available

        info["jpeg_decoder"] = ("torchvision (libjpeg-turbo, pixels identical to PIL) for plain JPEGs, PIL otherwise"
                                if fast_jpeg_available() else "PIL only (torchvision's decoder missing or different)")
    except Exception as e:
        info["jpeg_decoder"] = f"unknown ({type(e).__name__}: {e})"
    try:
        from facestore.models.hub import offline_reason

        info["hub"] = offline_reason() or "reachable (or behind a proxy)"
    except Exception as e:
        info["hub"] = f"unknown ({type(e).__name__}: {e})"
    return info


def doctor_report() -> dict[str, Any]:
    """Everything the report shows, as JSON-able data."""
    versions = {dist: _version(dist) for dist, _ in _LIBRARIES}
    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "torch": _torch_info(),
        "onnxruntime": _onnxruntime_info(),
        "faiss": _faiss_info(),
        "huggingface": _hf_info(),
        "pipeline": _pipeline_info(),
    }
    warnings = list(report["onnxruntime"]["warnings"])
    torch_info = report["torch"]
    if torch_info.get("cuda_available") and "CUDAExecutionProvider" not in report["onnxruntime"]["available_providers"]:
        warnings.append("torch sees a GPU but onnxruntime has no CUDAExecutionProvider: ArcFace would run on the "
                        "CPU (and `--device cuda` refuses it). Install onnxruntime-gpu (see above).")
    if torch_info.get("cuda_available") and report["faiss"].get("gpus", 0) == 0:
        warnings.append("torch sees a GPU but faiss has none: kNN probes run on the CPU (install faiss-gpu-cu12).")
    shm = report["pipeline"].get("dev_shm_free_mib")
    if shm is not None and shm < 1024:
        warnings.append(f"/dev/shm has {shm} MiB free: builds lower their decode prefetch depth or worker count to "
                        "fit (a container's default 64 MB holds under two batches); run the container with "
                        "--shm-size=8g to decode on every core.")
    report["warnings"] = warnings
    return report


def format_report(report: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`doctor_report` for a terminal or a bug report."""
    lines = [f"python        {report['python']}  ({report['platform']}, {report['cpu_count']} CPUs)", "", "libraries:"]
    for dist, v in report["versions"].items():
        if v is not None or dist in ("torch", "transformers", "timm", "open_clip_torch", "insightface",
                                     "onnxruntime", "zarr", "numcodecs", "faiss-cpu", "scikit-learn", "numpy"):
            lines.append(f"  {dist:<16} {v or 'not installed'}")
    t = report["torch"]
    lines += ["", "torch:"]
    if "error" in t:
        lines.append(f"  {t['error']}")
    else:
        lines.append(f"  CUDA build {t['cuda_build'] or 'none'}; CUDA available: {t['cuda_available']}; "
                     f"CPU threads: {t['cpu_threads']} ({t['cpu_capability']}); CPU bf16: {t['cpu_bf16']}; MPS: {t['mps_available']}")
        for d in t["devices"]:
            lines.append(f"  cuda:{d['index']} {d['name']} {d['memory_gib']} GiB (sm {d['capability']})")
        if t["cuda_available"]:
            lines.append(f"  CUDA bf16: {t['cuda_bf16']}")
    o = report["onnxruntime"]
    lines += ["", "onnxruntime:",
              f"  onnxruntime {o['onnxruntime'] or 'not installed'}; onnxruntime-gpu {o['onnxruntime-gpu'] or 'not installed'}",
              f"  available providers: {', '.join(o['available_providers']) or 'none'}"]
    f = report["faiss"]
    lines += ["", "faiss:", f"  {f.get('error') or 'version ' + str(f.get('version'))}; GPUs: {f.get('gpus', 0)}"]
    h = report["huggingface"]
    lines += ["", "huggingface:", f"  hub cache: {h['hub_cache']}", f"  offline: {h['offline']}; token present: {h['token_present']}"]
    p = report.get("pipeline", {})
    lines += ["", "build pipeline:"]
    if "error" in p:
        lines.append(f"  {p['error']}")
    else:
        quota = p.get("cgroup_cpu_quota")
        lines.append(f"  usable cores {p.get('usable_cores')} (affinity mask"
                     + (f", cgroup quota {quota:g}" if quota is not None else ", no cgroup quota")
                     + f"); default decode workers {p.get('default_workers')}; /dev/shm free: "
                     + (f"{p['dev_shm_free_mib']} MiB" if p.get("dev_shm_free_mib") is not None else "n/a"))
    lines.append(f"  JPEG decoding: {p.get('jpeg_decoder')}")
    lines.append(f"  hub: {p.get('hub')}")
    if report["warnings"]:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in report["warnings"]]
    return "\n".join(lines)

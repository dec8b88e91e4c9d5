"""Multi-process builds under ``torchrun``: rank discovery, chunk ownership, barriers.

``torchrun --nproc-per-node N -m facestore build ...`` starts N copies of the build. Each reads
its rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``), joins a process group (gloo on the CPU, nccl on CUDA) and owns
the chunks ``c`` with ``c % world_size == rank``. Ownership is by *whole chunk* because zarr
writers that split a chunk lose rows silently; whole-chunk writers are safe concurrently. Each
rank resumes on its own (it only looks at the status of its own chunks), so a killed multi-rank
build resumes with the same command, or with a different number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

from facestore.errors import BuildError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a multi-process build."""

    rank: int
    world_size: int
    local_rank: int
    #: Build processes on this machine (torchrun's LOCAL_WORLD_SIZE): they share its cores, so
    #: each starts usable_cores // local_world_size - 1 decode workers by default.
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 syncs the index, creates model groups, holds the locks and prints the summary."""
        return self.rank == 0

    def owns(self, chunk: int) -> bool:
        """Whether this rank computes and writes ``chunk``."""
        return chunk % self.world_size == self.rank

    def device(self, requested: str, *, cuda_available: bool) -> str:
        """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is requested or auto-selected."""
        if requested in ("cuda", "auto") and cuda_available:
            return f"cuda:{self.local_rank}"
        if requested.startswith("cuda:"):
            raise BuildError(
                f"--device {requested} names one GPU, but under torchrun every rank uses its own "
                "(cuda:LOCAL_RANK); pass --device cuda"
            )
        return requested if requested != "auto" else "cpu"


def context_from_env(env: Mapping[str, str] | None = None) -> DistributedContext | None:
    """The context torchrun describes in ``env`` (default ``os.environ``); ``None`` for a single process."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))  # torchrun sets it; other launchers may not
    except ValueError:
        raise BuildError(
            f"cannot read the torchrun environment: WORLD_SIZE={env.get('WORLD_SIZE')!r}, "
            f"RANK={env.get('RANK')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}, "
            f"LOCAL_WORLD_SIZE={env.get('LOCAL_WORLD_SIZE')!r} must be integers"
        ) from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise BuildError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}; start the build with torchrun")
    return DistributedContext(rank=rank, world_size=world, local_rank=local_rank,
                              local_world_size=max(1, min(local_world, world)))


class ProcessGroup:
    """The torch.distributed group of a build; a context manager that tears it down on exit."""

    def __init__(self, ctx: DistributedContext, *, device: str, timeout_s: float = 1800.0) -> None:
        self.ctx = ctx
        self.device = device
        self.backend = "nccl" if device.startswith("cuda") else "gloo"
        self.timeout = timedelta(seconds=timeout_s)
        self._owned = False

    def __enter__(self) -> ProcessGroup:
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            raise BuildError("this torch build has no torch.distributed; run the build in one process")
        if self.backend == "nccl":
            torch.cuda.set_device(int(self.device.split(":")[1]))
        if not dist.is_initialized():
            for var in ("MASTER_ADDR", "MASTER_PORT"):
                if var not in os.environ:
                    raise BuildError(f"{var} is not set: start distributed builds with torchrun "
                                     "(torchrun --nproc-per-node N -m facestore build ...)")
            dist.init_process_group(backend=self.backend, rank=self.ctx.rank, world_size=self.ctx.world_size,
                                    timeout=self.timeout)
            self._owned = True
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        if self._owned and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[int(self.device.split(":")[1])])
        else:
            dist.barrier()

    def broadcast_from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (also a barrier)."""
        import torch.distributed as dist

        box = [obj if self.ctx.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (also a barrier)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(out, obj)
        return out

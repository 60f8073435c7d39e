"""torch.distributed plumbing for landscapes: ranks from torchrun's environment, gloo on CPU, nccl on GPU.

Ranks compute their own points independently; results travel to rank 0, the one writer, in chunks
(one all_gather per chunk of points, never one collective per point).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from awp.config import resolve_device
from awp.errors import UserError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among `world` processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> DistContext:
    """A single-process context, or, under torchrun, join the process group: nccl when the rank has
    a GPU, gloo otherwise. Each rank on a shared CPU gets its share of the cores."""
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        # nccl needs one GPU per rank; more ranks than GPUs share them and talk over gloo.
        backend = "nccl" if torch.cuda.device_count() >= local_world else "gloo"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return DistContext(rank, world, local_rank, dev)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def gather_rows(ctx: DistContext, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's [C, K] float64 block stacked on every rank as [world * C, K] (rank-major).
    All ranks must pass the same C (pad with rows whose index column is -1)."""
    if not ctx.distributed:
        return rows
    comm_dev = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    local = rows.to(comm_dev)
    parts = [torch.empty_like(local) for _ in range(ctx.world)]
    dist.all_gather(parts, local)
    return torch.cat(parts).cpu()


def broadcast_flag(ctx: DistContext, flag: bool) -> bool:
    """Rank 0's boolean on every rank (e.g. 'the results file was refused')."""
    if not ctx.distributed:
        return flag
    comm_dev = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], device=comm_dev)
    dist.broadcast(t, src=0)
    return bool(t.item())


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def launch(workers: int, argv: list[str]) -> int:
    """Run `landscape <argv>` under torchrun with `workers` processes on this machine; returns its status.
    For several machines, call torchrun yourself (see README)."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
           "-m", "cli", *argv]
    return subprocess.call(cmd)

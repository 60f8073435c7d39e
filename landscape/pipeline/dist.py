"""torch.distributed plumbing for landscapes: ranks from torchrun's environment, gloo on CPU, nccl on GPU.

Ranks compute their own points independently; results travel to rank 0, the one writer, in chunks
(one all_gather per chunk of points, never one collective per point).
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from awp.config import resolve_device
from awp.errors import ERROR_FILE_ENV, UserError


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


def any_flag(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when any rank's flag is set (e.g. Ctrl-C reached one of them)."""
    if not ctx.distributed:
        return flag
    comm_dev = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], device=comm_dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int, device: str, oversubscribe: bool = False, offer: bool = True) -> None:
    """--workers within what this machine runs well: at most one per CPU core, and with nccl at most
    one per GPU, unless `oversubscribe` (which the message suggests if the command has it: `offer`)."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if oversubscribe:
        return
    cpus = usable_cpus()
    if workers > cpus:
        raise UserError(f"--workers {workers} is more than the {cpus} CPU core(s) this process may use"
                        + ("; pass --oversubscribe to run them anyway" if offer else ""))
    if resolve_device(device).type == "cuda" and workers > torch.cuda.device_count():
        raise UserError(f"--workers {workers} is more than the {torch.cuda.device_count()} GPU(s) here"
                        + (" (nccl needs one per worker); pass --oversubscribe to share GPUs over gloo" if offer else ""))


def launch(workers: int, argv: list[str]) -> int:
    """Run `landscape <argv>` in `workers` processes on this machine with torch's elastic launcher
    (torchrun's engine), after the caller validated everything. A user error in a worker ends the
    whole command with rank 0's one line; returns the exit status. For several machines, call
    torchrun yourself (see README)."""
    import logging
    import tempfile
    import uuid
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from awp.errors import Interrupted

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its failure banner would repeat ours
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="landscape-launch-") as tmp:
        err = Path(tmp) / "error"
        os.environ[ERROR_FILE_ENV] = str(err)
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
        try:
            elastic_launch(config, sys.executable)("-m", "cli", *argv)
        except ChildFailedError as e:
            text = err.read_text().strip() if err.exists() else ""
            codes = {f.exitcode for f in e.failures.values()}
            if text.startswith("interrupted:"):
                raise Interrupted(text.removeprefix("interrupted:").split("; resume with:")[0].strip()) from None
            if text:
                raise UserError(text.removeprefix("error:").strip()) from None
            rank, first = min(e.failures.items())
            print(f"error: worker rank {rank} failed with exit code {first.exitcode} (its output is above)",
                  file=sys.stderr)
            return 1 if codes != {130} else 130
        except SignalException:
            raise Interrupted("the workers were stopped; every finished chunk is kept") from None
        finally:
            os.environ.pop(ERROR_FILE_ENV, None)
    return 0

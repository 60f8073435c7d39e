"""torch.distributed plumbing shared by the trainer and the landscapes: ranks from torchrun's environment,
gloo on CPU, nccl on GPU; small collectives (flags, sums, weighted gradient means); `--workers N` on
this machine through torch's elastic launcher.

`awp` never imports `landscape`; `landscape.pipeline.dist` adds what only landscapes need.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from awp.config import resolve_device
from awp.errors import ERROR_FILE_ENV, UserError

T = TypeVar("T")


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


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0: the one process that prints and writes (readable before
    the process group exists, from torchrun's environment)."""
    return os.environ.get("RANK", "0") == "0"


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


def comm_device(ctx: DistContext) -> torch.device:
    """Where collective tensors live: the rank's GPU under nccl, the CPU under gloo."""
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_flag(ctx: DistContext, flag: bool) -> bool:
    """Rank 0's boolean on every rank (e.g. 'the results file was refused')."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=comm_device(ctx))
    dist.broadcast(t, src=0)
    return bool(t.item())


def any_flag(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when any rank's flag is set (e.g. Ctrl-C reached one of them)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_sum(ctx: DistContext, values: Sequence[float]) -> list[float]:
    """The element-wise sum over ranks of a few float64 numbers (counts and sums add exactly), on every rank."""
    if not ctx.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=comm_device(ctx))
    dist.all_reduce(t)
    return t.tolist()


def weighted_sum(ctx: DistContext, tensors: Sequence[Tensor], weight: float) -> list[Tensor]:
    """sum over ranks of weight_r * t, for every tensor, in one collective (flattened). With weight_r =
    n_r / n, each rank's share of a batch of n examples, it turns per-rank mean-loss gradients into the
    gradient of the whole batch's mean loss."""
    if not ctx.distributed or not tensors:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(comm_device(ctx)) * weight
    dist.all_reduce(flat)
    flat = flat.to(tensors[0].device)
    out, pos = [], 0
    for t in tensors:
        out.append(flat[pos : pos + t.numel()].view_as(t).to(t.dtype))
        pos += t.numel()
    return out


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T | None:
    """`fn()` on rank 0 only (what writes files); a UserError it raises is raised on every rank, so no
    rank is left waiting in a collective for one that has gone. Returns fn's result on rank 0."""
    if not ctx.distributed:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except UserError as e:
            error = e
    if broadcast_flag(ctx, error is not None):
        raise error if error is not None else UserError("stopped: rank 0 met an error (it says which)")
    return result


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check_shards(n: int, batch_size: int, world: int) -> None:
    """Every global batch of an epoch over `n` examples in batches of `batch_size` gives each of `world`
    ranks at least one example (DDP needs every rank in every step); else one line saying what to change."""
    smallest = n % batch_size or batch_size  # the last batch
    if world > 1 and smallest < world:
        raise UserError(f"{world} workers need at least {world} examples in every training batch, but the last batch "
                        f"of {n} examples in batches of {batch_size} holds {smallest}; change --batch-size or --train-size")


def rank_seed(seed: int, rank: int) -> int:
    """A seed for `rank`'s own random stream derived from a shared `seed` (random starts of its shard)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# Data-parallel training: the gradient of the global batch's mean loss from shards of it
# ---------------------------------------------------------------------------------------------


class ShardWeight:
    """This rank's share n_r / n of the current global batch, read by the DDP communication hook and by
    the AWP ascent's gradient reduction; set before every step (the last batch may split unevenly)."""

    def __init__(self, world: int) -> None:
        self.value = 1.0 / world


def _weighted_allreduce_hook(state: ShardWeight, bucket):
    """DDP communication hook: sum over ranks of n_r / n * grad_r, the gradient of the global batch's
    mean loss (DDP's default divides by the world size, which is that only for equal shards)."""
    buf = bucket.buffer()
    buf.mul_(state.value)
    return dist.all_reduce(buf, async_op=True).get_future().then(lambda fut: fut.value()[0])


@dataclass
class DataParallel:
    """A model trained on `ctx.world` ranks: `fit` is its DistributedDataParallel wrapper (the training
    loss's forward and backward go through it), `weight` this rank's share of the current global batch."""

    ctx: DistContext
    fit: nn.Module
    weight: ShardWeight

    def shard(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's examples of a global batch, every world-th from its rank on; sets `weight`."""
        xs, ys = x[self.ctx.rank :: self.ctx.world], y[self.ctx.rank :: self.ctx.world]
        self.weight.value = len(ys) / len(y)
        return xs, ys

    def reduce_grads(self, grads: list[Tensor]) -> list[Tensor]:
        """Gradients of this shard's mean loss -> those of the global batch's mean loss, on every rank."""
        return weighted_sum(self.ctx, grads, self.weight.value)


def data_parallel(model: nn.Module, ctx: DistContext) -> DataParallel:
    """`model` wrapped in DistributedDataParallel, its backward summing n_r / n-weighted gradients over
    ranks. Buffers are not broadcast at every forward (DDP's default): BatchNorm running statistics are
    only read in eval mode after an epoch, and `average_batchnorm_stats` makes them agree then."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    kwargs = {}
    if "forward_sync_buffers" in inspect.signature(DDP).parameters:  # newer torch renamed broadcast_buffers
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    weight = ShardWeight(ctx.world)
    ddp = DDP(model, device_ids=ids, **kwargs)
    ddp.register_comm_hook(weight, _weighted_allreduce_hook)
    return DataParallel(ctx, ddp, weight)


def average_batchnorm_stats(ctx: DistContext, model: nn.Module) -> None:
    """Every BatchNorm running mean and variance replaced by its mean over ranks (each rank's tracked
    its own shards; for equal shards the mean of the running means is exactly the running mean of the
    global batch means, and the mean of the running variances an unbiased estimate of the global one)."""
    if not ctx.distributed:
        return
    stats = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             for b in (m.running_mean, m.running_var) if b is not None]
    if stats:
        with torch.no_grad():
            torch._foreach_copy_(stats, weighted_sum(ctx, stats, 1.0 / ctx.world))


GradReduction = Callable[[list[Tensor]], list[Tensor]]  # this rank's gradients -> the global batch's


# ---------------------------------------------------------------------------------------------
# --workers N on this machine
# ---------------------------------------------------------------------------------------------


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


def launch(workers: int, argv: list[str], kept: str = "every finished chunk is kept") -> int:
    """Run `landscape <argv>` in `workers` processes on this machine with torch's elastic launcher
    (torchrun's engine), after the caller validated everything. A user error in a worker ends the
    whole command with rank 0's one line; returns the exit status. `kept` says what a stop keeps. For
    several machines, call torchrun yourself (see README)."""
    import logging
    import tempfile
    import uuid
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from awp.errors import Interrupted

    # Its failure banner would repeat our one line, its "death signal" warning the Ctrl-C message; each
    # of its modules' loggers has a level of its own, so the parents' is not enough.
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.startswith(("torch.distributed.elastic", "torch.distributed.launcher"))]
    for name in ["torch.distributed.elastic", "torch.distributed.launcher", *names]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="landscape-launch-") as tmp:
        err = Path(tmp) / "error"
        os.environ[ERROR_FILE_ENV] = str(err)

        def stopped_by_worker() -> str | None:
            text = err.read_text().strip() if err.exists() else ""
            return text.removeprefix("interrupted:").split("; resume with:")[0].strip() if text.startswith("interrupted:") else None

        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
        try:
            elastic_launch(config, sys.executable)("-m", "cli", *argv)
        except ChildFailedError as e:
            text = err.read_text().strip() if err.exists() else ""
            codes = {f.exitcode for f in e.failures.values()}
            if text.startswith("interrupted:"):
                raise Interrupted(stopped_by_worker()) from None
            if text:
                raise UserError(text.removeprefix("error:").strip()) from None
            rank, first = min(e.failures.items())
            print(f"error: worker rank {rank} failed with exit code {first.exitcode} (its output is above)",
                  file=sys.stderr)
            return 1 if codes != {130} else 130
        except SignalException:
            # The launcher was signalled and stopped its workers; rank 0 may have said what it kept.
            raise Interrupted(stopped_by_worker() or f"the workers were stopped; {kept}") from None
        finally:
            os.environ.pop(ERROR_FILE_ENV, None)
    return 0

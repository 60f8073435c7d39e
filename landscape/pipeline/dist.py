"""torch.distributed for landscapes: ranks compute their own points independently; results travel to
rank 0, the one writer, in chunks (one all_gather per chunk of points, never one collective per point).

The generic plumbing (contexts, flags, `--workers` launching) is `awp.distributed`; the pipeline's
`dist.` names are re-exported here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from awp.distributed import DistContext, any_flag, broadcast_flag, comm_device, init, shutdown  # noqa: F401 (the pipeline's `dist.` names)


def gather_rows(ctx: DistContext, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's [C, K] float64 block stacked on every rank as [world * C, K] (rank-major).
    All ranks must pass the same C (pad with rows whose index column is -1)."""
    if not ctx.distributed:
        return rows
    local = rows.to(comm_device(ctx))
    parts = [torch.empty_like(local) for _ in range(ctx.world)]
    dist.all_gather(parts, local)
    return torch.cat(parts).cpu()

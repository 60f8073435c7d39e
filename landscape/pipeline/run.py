"""One pipeline for every landscape command and the Python API: open the results file or resume it,
compute what is pending (this rank's share under torchrun), flush after every chunk, render on rank 0.
`probe` and `plot2d` differ only in the `Plan` they hand it: coordinates, directions, figures, table."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from awp import __version__
from awp.errors import Interrupted, UserError
from awp.safeio import exclusive, signed
from awp.stopping import graceful_stop
from landscape.pipeline import dist
from landscape.pipeline.compute import Job, compute
from landscape.storage.results import Landscape, refuse_if_stale, weights_differ


@dataclass
class Plan:
    """A landscape command resolved before anything is computed: the results file and a fresh results
    object for it, the config keys a resume may change (they only change the view), how to build the
    job (data and models, only when points are pending), and how to render and summarize."""

    out: Path | None
    results: Landscape
    job: Callable[[Landscape, torch.device], Job]
    tag: str = ""
    view_keys: tuple[str, ...] = ()
    render: Callable[[Landscape, Path], list[Path]] = lambda results, out: []
    summary: Callable[[Landscape, Path, list[Path], Console], None] = lambda results, out, figures, console: None


@dataclass
class Outcome:
    results_path: Path | None
    results: Landscape
    points: int  # points computed by this call
    seconds: float
    figures: list[Path] = field(default_factory=list)


def open_or_resume(out: Path | None, fresh: Landscape, overwrite: bool = False, view_keys: tuple[str, ...] = ()) -> Landscape:
    """`fresh`, or the file's results when it exists and was made with the same settings and weights
    (`StaleResults` naming what differs otherwise)."""
    if out is None or not out.exists() or overwrite:
        return fresh
    try:
        old = Landscape.load(out)
    except UserError:
        raise UserError(f"{str(out)!r} exists and is not a landscape results file; choose another -o or pass --overwrite") from None
    old.check_resumable(out)
    refuse_if_stale(out, old.config, fresh.config, weights_differ(old.checkpoints, fresh.checkpoints), view_keys)
    old.config = fresh.config  # a new view key (e.g. --radius) only changes how the numbers are shown
    return old


def execute(plan_fn: Callable[[], Plan], *, device: str = "auto", overwrite: bool = False, progress: bool = True,
            console: Console | None = None) -> Outcome | None:
    """Run a plan end to end. Under torchrun rank 0 validates, takes the results file and writes it
    first; every other rank then builds the same plan and reads the same done mask. Ctrl-C stops
    after the current chunk, keeping every finished point. Returns the outcome on rank 0, else None."""
    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    ctx = dist.init(device)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(graceful_stop())
            refused: UserError | None = None
            plan = results = None
            if ctx.is_main:
                try:
                    plan = plan_fn()
                    if plan.out is not None:
                        stack.enter_context(exclusive(plan.out))
                    results = open_or_resume(plan.out, plan.results, overwrite, plan.view_keys)
                    results.runtime = {**results.runtime, "device": str(ctx.device), "world": ctx.world,
                                       "awp": __version__, "torch": torch.__version__}
                    if plan.out is not None:
                        results.save(plan.out)
                except UserError as e:
                    refused = e
            if dist.broadcast_flag(ctx, refused is not None):
                if refused is not None:
                    raise refused
                return None
            if not ctx.is_main:
                plan = plan_fn()
                results = Landscape.load(plan.out)  # rank 0 has written it: resumed, never replaced
            points, stopped = 0, False
            if results.pending():  # this file's points (its shard's under --shard) not yet done
                job = plan.job(results, ctx.device)
                flush = (lambda: results.save(plan.out)) if plan.out is not None else (lambda: None)
                points, stopped = compute(results, job, ctx, flush=flush, progress=progress)
            elif ctx.is_main:
                console.print(f"{plan.out}: every point is already computed; re-rendering")
            if stopped:
                left = len(results.pending()) if ctx.is_main else 0
                raise Interrupted(f"{str(plan.out)!r} keeps every finished point ({left} left)")
            if not ctx.is_main:
                return None
            figures: list[Path] = []
            if plan.out is not None:
                with signed(plan.tag):
                    figures = plan.render(results, plan.out)
                plan.summary(results, plan.out, figures, console)
            return Outcome(plan.out, results, points, time.perf_counter() - t_start, figures)
    finally:
        dist.shutdown(ctx)

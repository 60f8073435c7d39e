"""Shards of a grid and the launchers that run them as a job array on a cluster scheduler.

A shard K/N is a fixed share of a landscape's points (`Landscape.points`, round-robin over the whole
grid), so shards can run anywhere in any order and `landscape merge` puts them together. Launchers are
a registry of submitit executors: `submitit` (`AutoExecutor`: SLURM where there is one, else local
processes) and `submitit-local` (local processes always: tests, a workstation). submitit is an
optional extra: `pip install 'awp-landscape[slurm]'`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from awp.errors import Interrupted, UserError
from awp.registry import Registry

SHARD_HELP = "K/N with 1 <= K <= N, e.g. 2/8"


def parse_shard(text: str, flag: str = "--shard") -> tuple[int, int]:
    """'2/8' -> (2, 8): shard K of N; anything else a one-line `UserError` naming the value."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise UserError(f"{flag} {text!r} is not K/N; give {SHARD_HELP}")
    return check_shard((int(m.group(1)), int(m.group(2))), flag)


def check_shard(shard: tuple[int, int], flag: str = "--shard") -> tuple[int, int]:
    k, n = shard
    if not (1 <= k <= n) or n > 10**6:
        raise UserError(f"{flag} {k}/{n} is out of range; give {SHARD_HELP} (N at most 1000000)")
    return k, n


def shard_path(out: Path, shard: tuple[int, int]) -> Path:
    """plot2d-run.h5 -> plot2d-run-shard2of8.h5: where shard 2/8 of the results `out` goes."""
    return out.with_name(f"{out.stem}-shard{shard[0]}of{shard[1]}{out.suffix}")


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher needs submitit, which is not installed: pip install 'awp-landscape[slurm]'") from None
    return submitit


LAUNCHERS: Registry[Callable[[Path], Any]] = Registry("--launcher", {
    # SLURM where `srun` is found, else local processes (submitit's own choice)
    "submitit": lambda folder: _submitit().AutoExecutor(folder=folder),
    # local processes always, whatever the machine has: tests, a workstation without a scheduler
    "submitit-local": lambda folder: _submitit().LocalExecutor(folder=folder),
})


def check_launcher(name: str) -> Callable[[Path], Any]:
    """The launcher `name`, refused in one line when unknown or when submitit is not installed."""
    make = LAUNCHERS.lookup(name)
    _submitit()
    return make


@dataclass
class JobOutcome:
    """What one job of an array returned, or why it failed (its log says more)."""

    index: int
    job_id: str
    value: Any = None
    error: str | None = None
    log: str = ""


def executor_for(launcher: str, folder: Path, params: dict[str, Any] | None = None) -> Any:
    """The submitit executor of `launcher`, its logs and pickles in `folder`, with `params`
    (`update_parameters`: timeout_min, gpus_per_node, slurm_partition, ...)."""
    executor = check_launcher(launcher)(folder)
    try:
        executor.update_parameters(**{"name": "landscape", **(params or {})})
    except (TypeError, ValueError, NameError) as e:  # submitit's reactions to an unknown or bad parameter
        raise UserError(f"--launcher-params {params!r} refused by {type(executor).__name__}: "
                        f"{' '.join(str(e).split())[:300]}") from None
    return executor


def _reason(e: Exception) -> str:
    """One line for why a job failed: the last line of the traceback submitit quotes between its two
    dashed rules (the exception itself), else its first line (e.g. a time limit's state)."""
    parts = str(e).split("-" * 22)
    text = parts[1] if len(parts) >= 3 else parts[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if len(parts) >= 3 else lines[0])[:300] if lines else type(e).__name__


def run_array(fn: Callable[[Any], Any], args: Sequence[Any], launcher: str, folder: Path,
              params: dict[str, Any] | None = None, console: Console | None = None) -> list[JobOutcome]:
    """Run fn(a) for every a of `args` as one job array (`executor.map_array`) and wait for all of
    them. A failed job is an outcome with its error; Ctrl-C while waiting leaves the jobs running."""
    console = console or Console(stderr=True)
    executor = executor_for(launcher, folder, params)
    jobs = executor.map_array(fn, list(args))
    limit = (params or {}).get("timeout_min")
    limit = f"time limit {limit} min" if limit is not None else "submitit's default time limit, 5 min: set timeout_min in --launcher-params"
    console.print(f"submitted {len(jobs)} job(s) to {getattr(executor, 'cluster', 'local')} "
                  f"({', '.join(j.job_id for j in jobs[:4])}{', ...' if len(jobs) > 4 else ''}; {limit}; "
                  f"logs in {folder}); waiting")
    outcomes: list[JobOutcome] = []
    try:
        for i, job in enumerate(jobs):
            try:
                outcomes.append(JobOutcome(i, job.job_id, value=job.result(), log=str(job.paths.stderr)))
            except Exception as e:  # noqa: BLE001 - a job that died (time limit, killed, a bug): reported, not raised
                outcomes.append(JobOutcome(i, job.job_id, error=_reason(e), log=str(job.paths.stderr)))
            console.print(f"job {job.job_id}: {'failed' if outcomes[-1].error else 'done'}")
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting; the {len(jobs) - len(outcomes)} job(s) not yet seen keep running "
                          f"({', '.join(j.job_id for j in jobs[len(outcomes):][:4])}), their finished points kept") from None
    return outcomes

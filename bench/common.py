"""What every benchmark returns, and the timing helpers they share.

One line of `bench/run_all.py`'s table is a `Row`: the time of our side ("ours"), of what it is compared
with ("baseline"), their ratio stated the way the row's name reads, the `Target` that ratio is judged
against and the device. A benchmark module exposes

    def run(smoke: bool, device: str) -> list[Row]

- `smoke`: True runs the smallest settings (seconds), so that `run_all.py --smoke` and
  tests/test_bench.py keep every benchmark working; its numbers mean nothing. False runs the
  settings whose ratios the table reports (the whole table fits 15 minutes on 2 CPU cores).
- `device`: "cpu" or "cuda" (run_all resolves "auto" first); on the CPU run_all has already set torch's
  thread count (`torch.set_num_threads`), so a benchmark leaves it alone.
- ratio: "A / B" rows give A's time over B's (an overhead: lower is better, `Target.at_most`); "A vs B"
  and "faster" rows give a speed-up, the slower side's time over the faster's (`Target.at_least`).
- `target`: leave it None and run_all applies the target of the benchmark's registry entry; set it
  when one module's rows have different targets.
- A row that could not be measured because a peer library is not installed: `Row.skip(name, why)`;
  run_all prints "skipped (why)" and the test accepts it. Every other row must have finite numbers.

For example (the shape of bench/multipoint.py):

    from bench.common import Row, interleaved, median

    def run(smoke: bool, device: str) -> list[Row]:
        times = interleaved({"multi": lambda: ..., "single": lambda: ...}, reps=2 if smoke else 7, device=device)
        multi, single = median(times["multi"]), median(times["single"])
        return [Row("multi-point engine: P points per pass vs one by one", multi, single, single / multi,
                    per="grid", device=device)]
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Target:
    """A goal for a ratio: `op` "<=" (an overhead, lower is better) or ">=" (a speed-up)."""

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"target op must be '<=' or '>=', got {self.op!r}")

    @classmethod
    def at_most(cls, value: float) -> "Target":
        return cls("<=", value)

    @classmethod
    def at_least(cls, value: float) -> "Target":
        return cls(">=", value)

    def met(self, ratio: float) -> bool:
        return ratio <= self.value if self.op == "<=" else ratio >= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Row:
    """One measured comparison. `ours` and `baseline` are seconds per `per` (an epoch, a step, a call,
    a grid); `ratio` is as the name states it (see the module docstring); `note` is printed beside it
    (a second ratio, a floor, what differs); `skipped` says why nothing was measured (then every
    number is NaN); `error` is set by run_all when the benchmark raised."""

    benchmark: str
    ours: float
    baseline: float
    ratio: float
    per: str = "run"
    device: str = "cpu"
    note: str = ""
    target: Target | None = None
    skipped: str | None = None
    error: str | None = None

    @classmethod
    def skip(cls, benchmark: str, why: str, device: str = "cpu", target: Target | None = None) -> "Row":
        nan = math.nan
        return cls(benchmark, nan, nan, nan, device=device, target=target, skipped=why)

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) and v > 0 for v in (self.ours, self.baseline, self.ratio))

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return f"failed ({self.error})"
        if self.skipped is not None:
            return f"skipped ({self.skipped})"
        if self.target is None or not self.finite:
            return "n/a"
        return "meets" if self.target.met(self.ratio) else "misses"

    def to_json(self) -> dict[str, Any]:
        """Plain values for `run_all.py --json` (NaN as null, the target as its text)."""
        d = asdict(self)
        for k in ("ours", "baseline", "ratio"):
            d[k] = d[k] if math.isfinite(d[k]) else None
        d["target"] = None if self.target is None else str(self.target)
        d["verdict"] = self.verdict
        return d


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so a timer reads the work itself (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device | str) -> Callable[[], float]:
    """The timer for work on `device`: on a CPU with torch at one thread, this process's CPU seconds
    (`time.process_time`): the work itself, which other tenants of a shared machine delay but do not
    add to (their load still slows it through caches and memory, less so); otherwise wall-clock
    seconds, queued CUDA work included (see `timed`)."""
    if torch.device(device).type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


def clock_name(device: torch.device | str) -> str:
    return "process CPU time" if clock(device) is time.process_time else "wall-clock time"


def timed(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Seconds of one call of `fn` by `clock(device)`, queued device work included."""
    now = clock(device)
    sync(device)
    t0 = now()
    fn()
    sync(device)
    return now() - t0


def interleaved(fns: Mapping[str, Callable[[], Any]], reps: int, device: torch.device | str,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time every function `reps` times, interleaved in ABBA order (A B, B A, A B, ...), after `warmup`
    untimed calls of each: load that drifts on a shared machine then hits every side alike, and no
    side always runs first (right after another side's allocations). Returns the seconds per name."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            times[name].append(timed(fns[name], device))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_seconds(seconds: float) -> str:
    """Seconds as a short human number: 412 us, 23.1 ms, 4.07 s."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def device_name(device: torch.device | str) -> str:
    """The device in words: the GPU's name, or the CPU with torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'' if n == 1 else 's'})"

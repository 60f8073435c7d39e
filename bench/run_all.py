"""Every benchmark in one run and one table: ours, the baseline, their ratio, the target and the verdict.

    make bench                                          # in .venv-bench, where the peers (torchattacks, ART) live
    .venv-bench/bin/python bench/run_all.py             # the same; about 7 minutes on 2 CPU cores
    .venv/bin/python bench/run_all.py --smoke           # every benchmark at its smallest settings (seconds each)
    .venv/bin/python bench/run_all.py --only awp,probe --json bench.json
    .venv/bin/python bench/run_all.py --list            # the registry: names, targets, smoke settings

Each benchmark is a module of `bench/` with `run(smoke, device) -> list[Row]` (`bench.common` says what a
row holds); `REGISTRY` lists them with the target their rows are judged against. Every ratio is measured
in this one run, both sides interleaved, medians of several repetitions; a missed target says
"misses". A benchmark whose peer library is not installed gives a row "skipped (pip install ... in
.venv-bench)". On the CPU, torch runs at `--threads` (1 by default: the stable setting on 2 shared cores,
and what the digits defaults train with), and times are process CPU seconds (`bench.common.clock`);
plot2d's are wall-clock by nature (its ranks are other processes). `--device auto` takes CUDA when
there is one. The table is Markdown, printed as is into the README's Performance section.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.common import Row, Target, clock_name, device_name, fmt_seconds  # noqa: E402


@dataclass(frozen=True)
class Benchmark:
    """One entry of the table: `name` (for --only), the `module` of bench/ whose `run(smoke, device)` it
    calls, the `target` its rows are judged against (unless a row sets its own), what the full and the
    smoke settings run, and whether the module may be missing (`optional`: a slot for work in progress)."""

    name: str
    module: str
    target: Target
    full: str
    smoke: str
    optional: bool = False
    placeholder_row: str = ""  # the row's name while an optional module is missing

    def runner(self) -> Callable[[bool, str], list[Row]] | None:
        if self.optional and not (BENCH / f"{self.module}.py").exists():
            return None
        return importlib.import_module(f"bench.{self.module}").run


REGISTRY: list[Benchmark] = [
    Benchmark("awp", "awp_overhead", Target.at_most(1.10),
              "smallcnn on 300 digits, 80 interleaved epoch pairs", "2 epochs of 60 digits, PGD-2"),
    Benchmark("art", "awp_peers", Target.at_least(1.2),
              "smallcnn on 300 digits, 100 interleaved steps per side", "2 steps of PGD-2"),
    Benchmark("probe", "probe_overhead", Target.at_most(1.05),
              "smallcnn, 512 digits, 11 points, PGD-10, 9 interleaved repeats", "64 digits, 3 points, PGD-1"),
    Benchmark("plot2d", "plot2d_scaling", Target.at_least(1.8),
              "11x11 grid, 300 digits, PGD-10, 3 runs of each, alternating", "3x3 grid, 20 digits, PGD-1"),
    Benchmark("attacks", "attack_peers", Target.at_least(1.0),
              "PGD-10 and PGD-20 on 500 digits, 9 interleaved calls each", "PGD-2 on 64 digits"),
    # ---- Slot: the multi-point engine benchmark (bench/multipoint.py, written alongside this suite): it
    # exposes `run(smoke: bool, device: str) -> list[Row]` (bench.common.Row) and sets its rows' targets
    # (smallcnn >= 1.5, PreAct ResNet-18 >= 1.0); should the file be missing, its row says so.
    Benchmark("multipoint", "multipoint", Target.at_least(1.5),
              "smallcnn and PreAct ResNet-18, P points per pass vs one by one", "P = 1, 2 on a few examples",
              optional=True, placeholder_row="multi-point: P points per pass vs one by one"),
]


def select(only: str | None) -> list[Benchmark]:
    """The registry's entries named in the comma list `only` (all when None), in registry order."""
    if not only:
        return list(REGISTRY)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = [b.name for b in REGISTRY]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--only: unknown {', '.join(unknown)}; the benchmarks are {', '.join(known)}")
    return [b for b in REGISTRY if b.name in names]


def run_benchmark(b: Benchmark, smoke: bool, device: str) -> list[Row]:
    """The rows of one benchmark, each with the registry's target unless it set its own. A benchmark that
    raises gives one row saying so (the traceback goes to stderr), so one failure keeps the others."""
    try:
        fn = b.runner()
        if fn is None:
            return [Row.skip(b.placeholder_row or b.name, f"bench/{b.module}.py not there yet", device, b.target)]
        rows = fn(smoke, device)
    except Exception as e:  # noqa: BLE001 - reported in the table and by the exit status
        traceback.print_exc()
        return [Row(b.name, math.nan, math.nan, math.nan, device=device, target=b.target,
                    error=f"{type(e).__name__}: {e}".splitlines()[0])]
    return [r if r.target is not None else replace(r, target=b.target) for r in rows]


def markdown(rows: list[Row]) -> str:
    """The table as Markdown (what the README shows)."""
    lines = ["| benchmark | ours | baseline | ratio | target | verdict | device | notes |",
             "| --- | ---: | ---: | ---: | --- | --- | --- | --- |"]
    for r in rows:
        per = f"/{r.per}" if r.finite else ""
        ours = fmt_seconds(r.ours) + per if r.finite else "-"
        base = fmt_seconds(r.baseline) + per if r.finite else "-"
        ratio = f"{r.ratio:.3f}" if r.finite else "-"
        cells = [r.benchmark, ours, base, ratio, str(r.target or "-"), r.verdict, r.device, r.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # a "|" in a cell would split it
    return "\n".join(lines)


def command_line(argv: list[str] | None) -> str:
    """How this run was started: the interpreter (relative to the working directory when inside it), the
    script and its arguments (`argv` when called in-process, else the process's)."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([str(exe), str(Path(__file__).relative_to(BENCH.parent)), *args])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="each benchmark at its smallest settings (seconds each); "
                    "checks that all of them run, its numbers mean nothing")
    ap.add_argument("--only", help="comma list of benchmark names (see --list)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", type=Path, help="also write the table (and the run's environment) here")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    a = ap.parse_args(argv)
    if a.list:
        for b in REGISTRY:
            extra = " (optional: joins when its file exists)" if b.optional else ""
            print(f"{b.name:<11} bench/{b.module}.py  target {b.target}{extra}\n{'':<11} full: {b.full}\n"
                  f"{'':<11} smoke: {b.smoke}")
        return 0
    try:
        benchmarks = select(a.only)
        if a.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {a.device!r}")
        if a.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA device")
        if a.json is not None and not a.json.parent.is_dir():  # found out now, not after the run
            raise ValueError(f"--json: {str(a.json.parent)!r} is not a directory")
    except ValueError as e:  # a user mistake: one line, exit status 2, as the project's CLI
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = a.device if a.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if a.threads:
        torch.set_num_threads(a.threads)

    command = command_line(argv)
    t0 = time.perf_counter()
    keyed: list[tuple[str, Row]] = []  # (registry name, row)
    for b in benchmarks:
        t = time.perf_counter()
        print(f"[{b.name}] bench/{b.module}.py ({'smoke' if a.smoke else b.full}) ...", file=sys.stderr, flush=True)
        keyed += [(b.name, r) for r in run_benchmark(b, a.smoke, device)]
        print(f"[{b.name}] {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    rows = [r for _, r in keyed]

    env = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_name(device),
        "clock": clock_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "smoke": a.smoke,
        "seconds": round(seconds, 1),
    }
    print(f"{'SMOKE (numbers mean nothing): ' if a.smoke else ''}{command}")
    print(f"{env['date']}; device {env['device']}, {env['clock']}; torch {env['torch']}, python {env['python']}; "
          f"{env['machine']}; {seconds / 60:.1f} minutes")
    print()
    print(markdown(rows))
    if a.json is not None:
        a.json.write_text(json.dumps({**env, "rows": [{"key": k, **r.to_json()} for k, r in keyed]}, indent=2) + "\n")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

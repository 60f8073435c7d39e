"""Speed-up of `landscape plot2d` from 1 to 2 torchrun ranks on the same grid, measured in one run.

    .venv/bin/python bench/plot2d_scaling.py [--grid 15x15] [--samples 300] [--pgd 10] [--repeats 1]

Prints wall time (process start to finish) and compute time (what the results file records: rank 0's
seconds inside the compute loop, the slowest rank's share included) for: one process with the
default threads, one process with 1 thread, and 2 gloo ranks with 1 thread each. The ratio that
matters is (1 process, 1 thread) / (2 ranks): how well points split across ranks; on a machine whose
two cores also serve other work it is bounded by what those cores have left. The model is a smallcnn
trained for one epoch here (timing does not depend on how well it is trained). With `--repeats`, the
variants alternate (ABBA) and medians are printed. `run` is the row of `bench/run_all.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import Row  # noqa: E402

ROW = "plot2d 2 ranks vs 1 process"
DEFAULT_THREADS, ONE_THREAD, TWO_RANKS = "1 process, default threads", "1 process, 1 thread", "2 ranks, 1 thread each"
VARIANTS = {  # label: (extra plot2d options, extra environment)
    DEFAULT_THREADS: (["--workers", "1"], {}),
    ONE_THREAD: (["--workers", "1"], {"OMP_NUM_THREADS": "1"}),
    # torchrun gives each rank OMP_NUM_THREADS=1; on a 1-core machine the run still works (and says little)
    TWO_RANKS: (["--workers", "2"] + (["--oversubscribe"] if (os.cpu_count() or 1) < 2 else []), {}),
}


@dataclass(frozen=True)
class Settings:
    grid: str = "15x15"
    samples: int = 300
    pgd: int = 10
    repeats: int = 1
    variants: tuple[str, ...] = (DEFAULT_THREADS, ONE_THREAD, TWO_RANKS)
    train_size: int = 300  # digits images of the one training epoch
    device: str = "cpu"


FULL = Settings(grid="11x11", repeats=3, variants=(ONE_THREAD, TWO_RANKS))  # run_all's row: about 2.5 minutes
SMOKE = Settings(grid="3x3", samples=20, pgd=1, variants=(ONE_THREAD, TWO_RANKS), train_size=60)


def cli(args: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one `python -m cli ...` (this interpreter), from process start to exit."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def compute_seconds(path: Path) -> float:
    with h5py.File(path) as f:
        return float(json.loads(f.attrs["runtime"])["compute_seconds"])


def train_run(out: Path, train_size: int) -> None:
    """A digits smallcnn run file: one epoch of PGD AT, in this process (no extra interpreter start)."""
    from awp.train import train
    from awp.trainconfig import resolve_config

    small = min(train_size, 100)
    cfg = resolve_config({"dataset": "digits", "method": "at", "epochs": 1, "train_size": train_size,
                          "train_eval_size": small, "test_size": small, "eval_steps": 1, "device": "cpu"})
    train(cfg, out)


def measure(s: Settings, work: Path) -> dict[str, list[tuple[float, float]]]:
    """(wall, compute) seconds per variant and repetition, variants alternating ABBA."""
    run = work / "run.h5"
    train_run(run, s.train_size)
    common = ["plot2d", str(run), "--grid", s.grid, "--samples", str(s.samples), "--pgd", str(s.pgd),
              "--device", s.device, "-q"]
    out: dict[str, list[tuple[float, float]]] = {v: [] for v in s.variants}
    for rep in range(s.repeats):
        for label in s.variants if rep % 2 == 0 else reversed(s.variants):
            extra, env = VARIANTS[label]
            res = work / f"rep{rep}-variant{s.variants.index(label)}.h5"  # a fresh file each: never a resume
            wall = cli(common + ["-o", str(res), *extra], env)
            out[label].append((wall, compute_seconds(res)))
    return out


def medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)


def run(smoke: bool, device: str) -> list[Row]:
    """The run_all row: compute-time speed-up (1 process, 1 thread) / (2 ranks); wall-clock in the note.
    On CUDA the ranks need a GPU each: with fewer than 2 GPUs the row runs on the CPU (and says so)."""
    import torch

    dev = device if device == "cpu" or torch.cuda.device_count() >= 2 else "cpu"
    s = replace(SMOKE if smoke else FULL, device=dev)
    with tempfile.TemporaryDirectory() as d:
        t = measure(s, Path(d))
    (w1, c1), (w2, c2) = medians(t[ONE_THREAD]), medians(t[TWO_RANKS])
    note = (f"compute time; wall-clock {w1 / w2:.2f}x ({w1:.1f} s vs {w2:.1f} s, process starts included); "
            f"{s.grid} grid, {s.samples} examples, PGD-{s.pgd}, {s.repeats} repeats, {os.cpu_count()} cores"
            + ("" if dev == device else "; on the CPU: fewer than 2 GPUs"))
    return [Row(ROW, c2, c1, c1 / c2, per="grid", device=dev, note=note)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=Settings.grid)
    ap.add_argument("--samples", type=int, default=Settings.samples)
    ap.add_argument("--pgd", type=int, default=Settings.pgd)
    ap.add_argument("--repeats", type=int, default=Settings.repeats, help="runs of each variant, alternating")
    a = ap.parse_args()
    s = Settings(a.grid, a.samples, a.pgd, a.repeats)
    with tempfile.TemporaryDirectory() as d:
        t = measure(s, Path(d))
    print(f"plot2d {a.grid} grid, {a.samples} examples, PGD-{a.pgd}, {os.cpu_count()} CPU cores, "
          f"{a.repeats} run(s) each (medians)")
    m = {label: medians(v) for label, v in t.items()}
    for label, (wall, comp) in m.items():
        print(f"  {label:28s} wall {wall:7.1f} s   compute {comp:7.1f} s")
    two = m[TWO_RANKS]
    for label, base in ((ONE_THREAD, "1 thread"), (DEFAULT_THREADS, "default threads")):
        print(f"speed-up 2 ranks vs 1 process ({base}): compute {m[label][1] / two[1]:.2f}x, wall {m[label][0] / two[0]:.2f}x")


if __name__ == "__main__":
    main()

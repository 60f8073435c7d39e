"""Speed-up of `landscape plot2d` from 1 to 2 torchrun ranks on the same grid, measured in one run.

    .venv/bin/python bench/plot2d_scaling.py [--grid 15x15] [--samples 300] [--pgd 10]

Prints wall time (process start to finish) and compute time (what the results file records) for:
one process with the default threads, one process with 1 thread, and 2 gloo ranks with 1 thread each.
The ratio that matters is (1 process, 1 thread) / (2 ranks): how well points split across ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, check=True, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def compute_seconds(path: Path) -> float:
    with h5py.File(path) as f:
        return float(json.loads(f.attrs["runtime"])["compute_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="15x15")
    ap.add_argument("--samples", default="300")
    ap.add_argument("--pgd", default="10")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run.h5"
        cli(["train-awp", "--dataset", "digits", "--method", "at", "--epochs", "3", "--out", str(run), "--quiet"])
        common = ["plot2d", str(run), "--grid", a.grid, "--samples", a.samples, "--pgd", a.pgd, "--device", "cpu", "-q"]
        rows = []
        for label, extra, env in [
            ("1 process, default threads", ["--workers", "1"], {}),
            ("1 process, 1 thread", ["--workers", "1"], {"OMP_NUM_THREADS": "1"}),
            ("2 ranks, 1 thread each", ["--workers", "2"], {}),
        ]:
            out = Path(d) / f"{len(rows)}.h5"
            wall = cli(common + ["-o", str(out)] + extra, env)
            rows.append((label, wall, compute_seconds(out)))
        print(f"plot2d {a.grid} grid, {a.samples} examples, PGD-{a.pgd}, {os.cpu_count()} CPU cores")
        for label, wall, comp in rows:
            print(f"  {label:28s} wall {wall:7.1f} s   compute {comp:7.1f} s")
        base = rows[1]
        print(f"speed-up 2 ranks vs 1 process (1 thread): compute {base[2] / rows[2][2]:.2f}x, wall {base[1] / rows[2][1]:.2f}x")
        print(f"speed-up 2 ranks vs 1 process (default threads): compute {rows[0][2] / rows[2][2]:.2f}x, "
              f"wall {rows[0][1] / rows[2][1]:.2f}x")


if __name__ == "__main__":
    main()

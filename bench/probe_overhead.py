"""Overhead of the landscape engine over bare PGD, measured in one run.

Bare cost of one landscape point (Alg. 1 lines 9-15, nothing else): for every fixed batch, PGD-K from
the batch's fixed start against the model, then one forward pass for the cross-entropy. The engine
does the same passes plus what a probe needs: weights set to w + alpha d in place and restored,
the natural loss and both accuracies in the same forward pass, sums kept on the device.
Both run on the same model, data and starts, interleaved (ABBA), `--repeats` times; the ratio of the
best times is printed (`run`, the row of `bench/run_all.py`, takes the ratio of the medians). `--full`
also times `run_probe` end to end (checkpoint load and hash, HDF5 flushes).

    .venv/bin/python bench/probe_overhead.py                 # digits smallcnn, CPU
    .venv/bin/python bench/probe_overhead.py --device cuda --arch preactresnet18 --samples 2048
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awp.attacks import AttackConfig, cross_entropy, pgd  # noqa: E402
from awp.config import resolve_device  # noqa: E402
from awp.data import class_stratified_subset, load_dataset  # noqa: E402
from awp.models import create_model  # noqa: E402
from landscape.core import engine  # noqa: E402
from landscape.core.directions import random_specs  # noqa: E402
from landscape.core.engine import model_device  # noqa: E402
from landscape.pipeline.compute import Job, compute  # noqa: E402
from awp.distributed import DistContext  # noqa: E402
from landscape.storage.results import CheckpointId, Grid, Landscape  # noqa: E402
from bench.common import Row, interleaved, timed  # noqa: E402

ROW = "probe engine / bare PGD loop"


def bare_points(model, batches, attack, n_points: int, natural: bool) -> float:
    """The network passes of `n_points` landscape points at the unperturbed weights, nothing else:
    PGD-K from the fixed start (Alg. 1 lines 9-14), then one forward pass for the loss (line 15);
    with `natural`, that forward also takes the clean batch, as the engine's does."""
    total = 0.0
    for _ in range(n_points):
        for b in batches:
            x_adv = pgd(model, b.x, b.y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                        norm=attack.norm, delta0=b.delta0)
            with torch.no_grad():
                inputs = torch.cat([b.x, x_adv]) if natural else x_adv
                logits = model(inputs)[-len(b.y):]
                total += cross_entropy(logits, b.y).sum().item()
    return total


def engine_points(model, alphas, batches, attack) -> float:
    """The pipeline's compute loop on one direction of these alphas (alpha = 0 is the origin, once)."""
    res = Landscape(Grid.curves(alphas, 1), random_specs(1, seed=0), [CheckpointId("<bench>", None, "", "bench")])
    compute(res, Job([lambda device: model], batches, attack, chunk=len(alphas)), DistContext(device=model_device(model)))
    return float(np.nansum(res.values["adv_loss"]))


@dataclass(frozen=True)
class Settings:
    """One measurement: `points` landscape points on `samples` examples, PGD-`pgd`, `repeats` interleaved
    timings of each variant after one warm-up; `alg1_only` adds the bare loop without the natural loss."""

    arch: str = "smallcnn"
    dataset: str = "digits"
    samples: int = 1024
    batch_size: int = 256
    pgd: int = 10
    points: int = 11
    repeats: int = 5
    device: str = "cpu"
    alg1_only: bool = True


# run_all's row: more, shorter runs than the CLI's default (medians steadier on a shared machine), about a minute
FULL = Settings(samples=512, repeats=9, alg1_only=False)
SMOKE = Settings(samples=64, batch_size=32, pgd=1, points=3, repeats=1, alg1_only=False)

ALG1 = "bare: PGD + loss pass (Alg. 1 only)"
SAME = "bare: the engine's passes"
ENGINE = "engine"


@dataclass
class Result:
    settings: Settings
    times: dict[str, list[float]]  # seconds per run of all points, per variant
    examples: int
    device: torch.device
    model: torch.nn.Module
    eps: float


def measure(s: Settings) -> Result:
    """The engine and the bare loop(s) on the same model, data and starts, interleaved ABBA."""
    device = resolve_device(s.device)
    splits = load_dataset(s.dataset)
    info = splits.info
    torch.manual_seed(0)
    model = create_model(s.arch, info.num_classes, info.in_channels, info.mean, info.std).to(device).eval()
    eps = 8 / 255 if info.image_size >= 32 else 0.2
    attack = AttackConfig("linf", eps, eps / 4, s.pgd)
    data = class_stratified_subset(splits.train_eval, s.samples, seed=0)
    batches = engine.fixed_batches(data, s.batch_size, attack, seed=0, device=device)
    alphas = np.linspace(-1, 1, s.points)
    runs = {
        SAME: lambda: bare_points(model, batches, attack, len(alphas), True),
        ENGINE: lambda: engine_points(model, alphas, batches, attack),
    }
    if s.alg1_only:
        runs = {ALG1: lambda: bare_points(model, batches, attack, len(alphas), False), **runs}
    with engine.frozen(model):  # as run_probe does: every variant sees the same model
        bare_points(model, batches[:1], attack, 1, True)  # warm-up (allocator, kernels)
        engine_points(model, np.array([-1.0, 0.0, 1.0]), batches[:1], attack)
        times = interleaved(runs, s.repeats, device, warmup=0)  # drifting machine load hits all alike
    return Result(s, times, len(data), device, model, eps)


def run(smoke: bool, device: str) -> list[Row]:
    """The run_all row: median engine time over the median bare loop of the same passes."""
    r = measure(replace(SMOKE if smoke else FULL, device=device))
    eng, bare = statistics.median(r.times[ENGINE]), statistics.median(r.times[SAME])
    s = r.settings
    note = (f"ratio of minima {min(r.times[ENGINE]) / min(r.times[SAME]):.3f}; {s.arch} on {r.examples} {s.dataset}, "
            f"PGD-{s.pgd}, {s.points} points, {s.repeats} repeats")
    return [Row(ROW, eng, bare, eng / bare, per=f"{s.points} points", device=device, note=note)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=Settings.arch)
    ap.add_argument("--dataset", default=Settings.dataset)
    ap.add_argument("--samples", type=int, default=Settings.samples)
    ap.add_argument("--batch-size", type=int, default=Settings.batch_size)
    ap.add_argument("--pgd", type=int, default=Settings.pgd)
    ap.add_argument("--points", type=int, default=Settings.points)
    ap.add_argument("--repeats", type=int, default=Settings.repeats)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--full", action="store_true", help="also time run_probe end to end")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    r = measure(Settings(a.arch, a.dataset, a.samples, a.batch_size, a.pgd, a.points, a.repeats, a.device))
    device, times = r.device, r.times
    # The minimum: other load on the machine only ever adds time (as `timeit` does); medians printed too.
    med = {k: min(v) for k, v in times.items()}
    print(f"{a.arch} on {a.dataset}, {device}, {torch.get_num_threads()} threads: {r.examples} examples, batch {a.batch_size}, "
          f"PGD-{a.pgd}, {a.points} points, {a.repeats} repeats (best of; median; all runs)")
    for name, t in med.items():
        print(f"  {name:<38} {t:8.3f} s  {t / a.points * 1e3:8.1f} ms/point;  median "
              f"{statistics.median(times[name]):.3f} s;  " + ", ".join(f"{x:.3f}" for x in times[name]))
    eng, same, alg = med[ENGINE], med[SAME], med[ALG1]
    print(f"engine / bare (same passes)  = {eng / same:.3f}  (overhead {100 * (eng / same - 1):+.1f}%; target <= +5%)")
    print(f"engine / bare (Alg. 1 only)  = {eng / alg:.3f}  (includes the natural loss: one more clean forward)")
    mb = same

    if a.full:
        from rich.console import Console

        from landscape.commands.probe import ProbeConfig, run_probe

        with tempfile.TemporaryDirectory() as tmp:
            pt = Path(tmp) / "model.pt"
            torch.save(r.model.state_dict(), pt)
            cfg = ProbeConfig(str(pt), arch=a.arch, dataset=a.dataset, eps=r.eps, step_size=r.eps / 4, steps=a.pgd,
                              alphas=f"-1:1:{a.points}", dirs=1, samples=a.samples, batch_size=a.batch_size,
                              device=str(device), out=str(Path(tmp) / "p.h5"), progress=False)
            t_full = timed(lambda: run_probe(cfg, console=Console(file=io.StringIO())), device)
        print(f"run_probe end to end : {t_full:8.3f} s for the same points (data, checkpoint, HDF5, PNG included); "
              f"/ bare = {t_full / mb:.3f}")


if __name__ == "__main__":
    main()

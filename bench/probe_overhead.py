"""Overhead of the landscape engine over bare PGD, measured in one run.

Bare cost of one landscape point (Alg. 1 lines 9-15, nothing else): for every fixed batch, PGD-K from
the batch's fixed start against the model, then one forward pass for the cross-entropy. The engine
does the same passes plus what a probe needs: weights set to w + alpha d in place and restored,
the natural loss and both accuracies in the same forward pass, sums kept on the device.
Both run on the same model, data and starts, interleaved, `--repeats` times; the ratio of the
best times is printed. `--full` also times `run_probe` end to end (checkpoint load and hash, HDF5 flushes).

    .venv/bin/python bench/probe_overhead.py                 # digits smallcnn, CPU
    .venv/bin/python bench/probe_overhead.py --device cuda --arch preactresnet18 --samples 2048
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="smallcnn")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--pgd", type=int, default=10)
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--full", action="store_true", help="also time run_probe end to end")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    splits = load_dataset(a.dataset)
    info = splits.info
    torch.manual_seed(0)
    model = create_model(a.arch, info.num_classes, info.in_channels, info.mean, info.std).to(device).eval()
    eps = 8 / 255 if info.image_size >= 32 else 0.2
    attack = AttackConfig("linf", eps, eps / 4, a.pgd)
    data = class_stratified_subset(splits.train_eval, a.samples, seed=0)
    batches = engine.fixed_batches(data, a.batch_size, attack, seed=0, device=device)
    alphas = np.linspace(-1, 1, a.points)

    runs = {
        "bare: PGD + loss pass (Alg. 1 only)": lambda: bare_points(model, batches, attack, len(alphas), False),
        "bare: the engine's passes": lambda: bare_points(model, batches, attack, len(alphas), True),
        "engine": lambda: engine_points(model, alphas, batches, attack),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with engine.frozen(model):  # as run_probe does: every variant sees the same model
        bare_points(model, batches[:1], attack, 1, True)  # warm-up (allocator, kernels)
        engine_points(model, np.array([-1.0, 0.0, 1.0]), batches[:1], attack)
        for _ in range(a.repeats):  # interleaved, so drifting machine load hits all alike
            for name, fn in runs.items():
                times[name].append(timed(fn, device))
    # The minimum: other load on the machine only ever adds time (as `timeit` does); medians printed too.
    med = {k: min(v) for k, v in times.items()}
    n = len(data)
    print(f"{a.arch} on {a.dataset}, {device}, {torch.get_num_threads()} threads: {n} examples, batch {a.batch_size}, "
          f"PGD-{a.pgd}, {len(alphas)} points, {a.repeats} repeats (best of; median; all runs)")
    for name, t in med.items():
        print(f"  {name:<38} {t:8.3f} s  {t / len(alphas) * 1e3:8.1f} ms/point;  median "
              f"{statistics.median(times[name]):.3f} s;  " + ", ".join(f"{x:.3f}" for x in times[name]))
    eng, same, alg = med["engine"], med["bare: the engine's passes"], med["bare: PGD + loss pass (Alg. 1 only)"]
    print(f"engine / bare (same passes)  = {eng / same:.3f}  (overhead {100 * (eng / same - 1):+.1f}%; target <= +5%)")
    print(f"engine / bare (Alg. 1 only)  = {eng / alg:.3f}  (includes the natural loss: one more clean forward)")
    mb = same

    if a.full:
        from rich.console import Console

        from landscape.commands.probe import ProbeConfig, run_probe

        with tempfile.TemporaryDirectory() as tmp:
            pt = Path(tmp) / "model.pt"
            torch.save(model.state_dict(), pt)
            cfg = ProbeConfig(str(pt), arch=a.arch, dataset=a.dataset, eps=eps, step_size=eps / 4, steps=a.pgd,
                              alphas=f"-1:1:{a.points}", dirs=1, samples=a.samples, batch_size=a.batch_size,
                              device=str(device), out=str(Path(tmp) / "p.h5"), progress=False)
            t_full = timed(lambda: run_probe(cfg, console=Console(file=io.StringIO())), device)
        print(f"run_probe end to end : {t_full:8.3f} s for the same points (data, checkpoint, HDF5, PNG included); "
              f"/ bare = {t_full / mb:.3f}")


if __name__ == "__main__":
    main()

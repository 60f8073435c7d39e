"""Time AT and AT-AWP epochs (K1 = 10, K2 = 1) in one process and print the cost ratio.

AWP adds one forward and backward per step (the gradient for v, Eq. 10) to AT's K1 + 1. If every
pass cost the same, the floor would be 1 + 1/(K1 + 1) ~ 1.09; but the extra pass takes gradients
with respect to the weights, which costs more than an attack step's input gradient, so the script
also times that pass alone and prints the floor it implies: the implementation's own overhead is the
distance between the measured ratio and that floor. Epochs of the two methods alternate in ABBA
order, so a machine whose load drifts slows both alike; medians and minima (the least disturbed
epochs) are printed. `run` is the row of `bench/run_all.py`.

    .venv/bin/python bench/awp_overhead.py                      # digits defaults, smallcnn 16-32-32
    .venv/bin/python bench/awp_overhead.py --widths 64,128,128  # a bigger model

On glibc, activations above the malloc mmap threshold are mapped and unmapped every step, and the
page faults land unevenly on the two methods (wider models: +10% on AT-AWP's PGD alone). Pinning
the allocator removes that noise (and speeds both up):
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 .venv/bin/python bench/awp_overhead.py ...
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awp.methods import get_method  # noqa: E402
from awp.perturb import perturbable_params  # noqa: E402
from awp.rundata import run_data  # noqa: E402
from awp.train import build_model, make_optimizer, train_epoch  # noqa: E402
from awp.trainconfig import resolve_config  # noqa: E402
from bench.common import Row, interleaved, timed  # noqa: E402

ROW = "AWP epoch / AT epoch (K1=10, K2=1)"


@dataclass(frozen=True)
class Settings:
    """What one measurement trains: smallcnn `widths` on `train_size` digits, `epochs` timed epochs per
    method after one warm-up each."""

    epochs: int = 15
    widths: tuple[int, int, int] = (16, 32, 32)
    train_size: int = 300
    batch_size: int = 30
    train_steps: int = 10  # K1
    device: str = "cpu"


FULL = Settings(epochs=80)  # run_all's row: 80 interleaved epoch pairs, about 40 s on one busy core
SMOKE = Settings(epochs=2, train_size=60, train_steps=2)


@dataclass
class Result:
    settings: Settings
    times: dict[str, list[float]]  # seconds per epoch, "at" and "at-awp"
    extra: float  # seconds per epoch of the extra pass alone (steps x one forward + weight backward)
    images: int

    def stat(self, fn, method: str) -> float:
        return fn(self.times[method])

    def floor(self, fn=statistics.median) -> float:
        at = fn(self.times["at"])
        return (at + self.extra) / at


def extra_pass_seconds(model, x, y, device, repeats: int = 30) -> float:
    """One forward + backward to the perturbed weights in train mode: the pass AWP adds (Eq. 10)."""
    params = list(perturbable_params(model).values())
    loss_fn = get_method("at").loss
    model.train()
    times = [timed(lambda: torch.autograd.grad(loss_fn(model, x, x, y).loss, params), device)
             for _ in range(repeats + 3)]
    return statistics.median(times[3:])


def measure(s: Settings) -> Result:
    """AT and AT-AWP (awp_warmup 0) from the same initial weights, epochs interleaved ABBA."""
    common = {
        "arch_kwargs": {"widths": list(s.widths)}, "train_size": s.train_size, "batch_size": s.batch_size,
        "train_steps": s.train_steps, "awp_warmup": 0, "device": s.device, "epochs": 1000,
    }
    data = run_data("digits", train_size=s.train_size)
    device = torch.device(s.device)
    runs = {}
    for m in ("at", "at-awp"):
        cfg = resolve_config({**common, "method": m})
        model, _ = build_model(cfg, data)
        model.to(device)
        epochs = itertools.count(1)
        opt = make_optimizer(model, cfg)
        runs[m] = (model, lambda cfg=cfg, model=model, opt=opt, epochs=epochs:
                   train_epoch(model, opt, cfg, data, next(epochs), device))
    times = interleaved({m: fn for m, (_, fn) in runs.items()}, s.epochs, device)  # 1 warm-up epoch each
    x, y = (t[: s.batch_size].to(device) for t in data.train.tensors)
    steps = -(-len(data.train) // s.batch_size)
    extra = extra_pass_seconds(runs["at"][0], x, y, device) * steps
    return Result(s, times, extra, len(data.train))


def run(smoke: bool, device: str) -> list[Row]:
    """The run_all row: median AT-AWP epoch over median AT epoch, the floor beside it."""
    r = measure(replace(SMOKE if smoke else FULL, device=device))
    at, awp = statistics.median(r.times["at"]), statistics.median(r.times["at-awp"])
    ratio_min = min(r.times["at-awp"]) / min(r.times["at"])
    note = (f"floor {r.floor():.3f} (AT + the timed extra pass); ratio of minima {ratio_min:.3f}; "
            f"{r.settings.epochs} epochs each, smallcnn on {r.images} digits")
    return [Row(ROW, awp, at, awp / at, per="epoch", device=device, note=note)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=Settings.epochs, help="timed epochs per method (after one warm-up each)")
    ap.add_argument("--widths", default="16,32,32", help="smallcnn widths")
    ap.add_argument("--train-size", type=int, default=Settings.train_size, help="digits training images (0 = all 1,297)")
    ap.add_argument("--batch-size", type=int, default=Settings.batch_size)
    ap.add_argument("--train-steps", type=int, default=Settings.train_steps, help="K1")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    r = measure(Settings(args.epochs, widths, args.train_size, args.batch_size, args.train_steps, args.device))

    k1 = args.train_steps
    print(f"device {args.device}, threads {torch.get_num_threads()}, smallcnn {list(widths)}, "
          f"{r.images} images, batch {args.batch_size}, K1 = {k1}, K2 = 1, A = 1")
    for name, stat in (("median", statistics.median), ("min", min)):
        at, awp = stat(r.times["at"]), stat(r.times["at-awp"])
        print(f"{name:<6}  AT {at * 1000:7.1f} ms/epoch   AT-AWP {awp * 1000:7.1f} ms/epoch   ratio {awp / at:.3f}"
              f"   floor {r.floor(stat):.3f}")
    steps = -(-r.images // args.batch_size)
    print(f"({len(r.times['at'])} epochs each; floor = AT + the timed extra pass ({r.extra / steps * 1000:.2f} ms/step); "
          f"equal-cost passes would give {1 + 1 / (k1 + 1):.3f})")


if __name__ == "__main__":
    main()

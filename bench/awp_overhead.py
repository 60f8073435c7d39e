"""Time AT and AT-AWP epochs (K1 = 10, K2 = 1) in one process and print the cost ratio.

AWP adds one forward and backward per step (the gradient for v, Eq. 10) to AT's K1 + 1. If every
pass cost the same, the floor would be 1 + 1/(K1 + 1) ~ 1.09; but the extra pass takes gradients
with respect to the weights, which costs more than an attack step's input gradient, so the script
also times that pass alone and prints the floor it implies: the implementation's own overhead is the
distance between the measured ratio and that floor. Epochs of the two methods alternate, so a machine
whose load drifts slows both alike; medians and minima (the least disturbed epochs) are printed.

    .venv/bin/python bench/awp_overhead.py                      # digits defaults, smallcnn 16-32-32
    .venv/bin/python bench/awp_overhead.py --widths 64,128,128  # a bigger model

On glibc, activations above the malloc mmap threshold are mapped and unmapped every step, and the
page faults land unevenly on the two methods (wider models: +10% on AT-AWP's PGD alone). Pinning
the allocator removes that noise (and speeds both up):
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 .venv/bin/python bench/awp_overhead.py ...
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from awp.methods import get_method
from awp.perturb import perturbable_params
from awp.rundata import run_data
from awp.train import build_model, make_optimizer, train_epoch
from awp.trainconfig import resolve_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def extra_pass_seconds(model, x, y, device, repeats: int = 30) -> float:
    """One forward + backward to the perturbed weights in train mode: the pass AWP adds (Eq. 10)."""
    params = list(perturbable_params(model).values())
    loss_fn = get_method("at").loss
    model.train()
    times = []
    for _ in range(repeats + 3):
        _sync(device)
        t0 = time.perf_counter()
        torch.autograd.grad(loss_fn(model, x, x, y).loss, params)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15, help="timed epochs per method (after one warm-up each)")
    ap.add_argument("--widths", default="16,32,32", help="smallcnn widths")
    ap.add_argument("--train-size", type=int, default=300, help="digits training images (0 = all 1,297)")
    ap.add_argument("--batch-size", type=int, default=30)
    ap.add_argument("--train-steps", type=int, default=10, help="K1")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    widths = [int(w) for w in args.widths.split(",")]
    common = {
        "arch_kwargs": {"widths": widths}, "train_size": args.train_size, "batch_size": args.batch_size,
        "train_steps": args.train_steps, "awp_warmup": 0, "device": args.device, "epochs": 1000,
    }
    cfgs = {m: resolve_config({**common, "method": m}) for m in ("at", "at-awp")}
    data = run_data("digits", train_size=args.train_size)
    device = torch.device(args.device)
    runs = {}
    for m, cfg in cfgs.items():
        model, _ = build_model(cfg, data)
        model.to(device)
        runs[m] = (cfg, model, make_optimizer(model, cfg))
    times: dict[str, list[float]] = {m: [] for m in runs}
    for epoch in range(1, args.epochs + 2):
        for m, (cfg, model, opt) in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            train_epoch(model, opt, cfg, data, epoch, device)
            _sync(device)
            if epoch > 1:  # the first epoch of each warms up allocators and kernels
                times[m].append(time.perf_counter() - t0)
    x, y = (t[: args.batch_size].to(device) for t in data.train.tensors)
    steps = -(-len(data.train) // args.batch_size)
    extra = extra_pass_seconds(runs["at"][1], x, y, device) * steps

    k1 = args.train_steps
    print(f"device {args.device}, threads {torch.get_num_threads()}, smallcnn {widths}, "
          f"{len(data.train)} images, batch {args.batch_size}, K1 = {k1}, K2 = 1, A = 1")
    for name, stat in (("median", statistics.median), ("min", min)):
        at, awp = stat(times["at"]), stat(times["at-awp"])
        print(f"{name:<6}  AT {at * 1000:7.1f} ms/epoch   AT-AWP {awp * 1000:7.1f} ms/epoch   ratio {awp / at:.3f}"
              f"   floor {(at + extra) / at:.3f}")
    print(f"({len(times['at'])} epochs each; floor = AT + the timed extra pass ({extra / steps * 1000:.2f} ms/step); "
          f"equal-cost passes would give {1 + 1 / (k1 + 1):.3f})")


if __name__ == "__main__":
    main()

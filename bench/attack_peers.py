"""Our PGD (`awp.attacks.pgd`, what `landscape eval` runs) against torchattacks' PGD on the same model,
inputs and settings, interleaved in one run: median seconds per call, the ratio, and robust accuracy.

torchattacks lives only in the benchmark's own environment, never in the project's dependencies:

    make bench-attacks                                  # creates .venv-bench (with torchattacks), runs this
    .venv-bench/bin/python bench/attack_peers.py --steps 20 --reps 7 --device cpu

Targets: ours at least as fast (theirs/ours >= 1.0) and never weaker (our robust accuracy <= theirs
+ 0.5 points). Both attacks: L-inf, uniform random start in the eps-ball, sign steps of eps/4, projection
onto the ball and [0, 1], eval mode. They differ in the loss reduction (torchattacks: batch mean;
ours: sum, so per-example gradients do not shrink with the batch): for sign steps this changes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def trained_smallcnn(device: torch.device, epochs: int):
    """A smallcnn adversarially trained on digits for a few epochs: robust accuracy neither 0 nor 100%."""
    from awp.attacks import pgd
    from awp.data import batches, load_dataset
    from awp.models import create_model

    data = load_dataset("digits")
    info = data.info
    torch.manual_seed(0)
    model = create_model("smallcnn", info.num_classes, info.in_channels, info.mean, info.std).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for x, y in batches(data.train, 64, shuffle=True, generator=gen, device=device):
            x_adv = pgd(model, x, y, eps=0.2, step_size=0.05, steps=5, generator=gen)
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), data.test.tensors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions (medians)")
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=4, help="training epochs of the model under attack")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 reps, 64 examples, 1 epoch")
    args = ap.parse_args()
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed here; run `make bench-attacks` (it lives in .venv-bench only)", file=sys.stderr)
        return 2
    if args.smoke:
        args.reps, args.examples, args.epochs, args.steps = 2, 64, 1, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    from awp.attacks import AttackConfig, pgd
    from awp.robustness.attacks import correct

    device = torch.device(args.device)
    model, (x_all, y_all) = trained_smallcnn(device, args.epochs)
    x, y = x_all[: args.examples].to(device), y_all[: args.examples].to(device)
    step = args.eps / 4
    cfg = AttackConfig(eps=args.eps, step_size=step, steps=args.steps)
    theirs_attack = torchattacks.PGD(model, eps=args.eps, alpha=step, steps=args.steps, random_start=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours(seed: int) -> torch.Tensor:
        return pgd(model, x, y, cfg, generator=torch.Generator().manual_seed(seed))

    def theirs(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return theirs_attack(x, y)

    times: dict[str, list[float]] = {"ours": [], "torchattacks": []}
    acc: dict[str, list[float]] = {"ours": [], "torchattacks": []}
    for fn in (ours, theirs):  # warm-up
        fn(0)
    for rep in range(args.reps):
        for name, fn in (("ours", ours), ("torchattacks", theirs)) if rep % 2 == 0 else (("torchattacks", theirs), ("ours", ours)):
            sync()
            t0 = time.perf_counter()
            x_adv = fn(rep + 1)
            sync()
            times[name].append(time.perf_counter() - t0)
            with torch.no_grad():
                acc[name].append(float(correct(model(x_adv), y).double().mean()))
            assert (x_adv - x).abs().max() <= args.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["torchattacks"])
    a_ours, a_theirs = 100 * statistics.mean(acc["ours"]), 100 * statistics.mean(acc["torchattacks"])
    ratio = t_theirs / t_ours
    print(f"# PGD-{args.steps}, L-inf eps {args.eps:g}, step {step:g}, {len(y)} digits examples, smallcnn; "
          f"device {device}, {torch.get_num_threads()} threads; torch {torch.__version__}, torchattacks {torchattacks.__version__}; "
          f"{args.reps} interleaved reps (medians)")
    print(f"{'':14}{'s / call':>10}{'robust acc %':>15}")
    print(f"{'ours':14}{t_ours:>10.4f}{a_ours:>15.2f}")
    print(f"{'torchattacks':14}{t_theirs:>10.4f}{a_theirs:>15.2f}")
    print(f"speed: torchattacks / ours = {ratio:.3f} (target >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'})")
    print(f"strength: ours - theirs = {a_ours - a_theirs:+.2f} points (target <= +0.5: {'met' if a_ours - a_theirs <= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Our PGD (`awp.attacks.pgd`) against torchattacks' `torchattacks.PGD`, same model, inputs and settings, one run.

What it measures, per (model, PGD steps) row: the median wall-clock seconds of one attack call on the
whole batch for each side, the ratio theirs / ours (> 1: ours is faster), and the robust accuracy each
attack leaves (the mean over `--reps` calls with different random starts). Settings are identical on
both sides: L-inf, eps = the model's training eps (digits: 0.25), step eps / 4, random start on, model in
eval mode, the same inputs in [0, 1] (the model owns normalization, as torchattacks expects). Calls are
interleaved (ours, theirs, theirs, ours, ...: drifting machine load hits both alike) after one warm-up
call of each. Both sides get the same seed in each repetition; since both draw the start as U(-eps, eps)
per pixel from a fresh stream, they start from the same point, and the printout says whether their
adversarial examples then came out identical. Targets: speed theirs / ours >= 1.0; strength our robust
accuracy <= theirs + 0.5 points.

The model under attack is a smallcnn adversarially trained here on the embedded digits data (plain PGD
AT with our pgd, 15 epochs of PGD-5, about 20 s on one CPU thread), so robust accuracy is neither 0 nor
100%. `--model smallcnn,preactresnet18` adds timing-only rows for an untrained PreAct ResNet-18 on random
3x32x32 inputs (eps 8/255); on a CPU that is slow (about 0.6 s per image per PGD-10 call on one thread),
so it is not in the default run. The default run takes about a minute on a 2-core machine (make
bench-attacks creating .venv-bench first: about 2.5 minutes more).

`run` gives the rows of `bench/run_all.py` (PGD-10 and PGD-20 on the smallcnn; a row saying "skipped"
where torchattacks is not installed). On a CPU at 1 thread the times are process CPU seconds
(`bench.common.clock`). torchattacks is installed only in the benchmark's own environment, never as a
project dependency:

    make bench-attacks                                      # creates .venv-bench, runs this with its defaults
    .venv-bench/bin/python bench/attack_peers.py --steps 10,20 --reps 5 --device cpu
    .venv-bench/bin/python bench/attack_peers.py --device cuda --model smallcnn,preactresnet18 --random-examples 512
    .venv-bench/bin/python bench/attack_peers.py --smoke     # a tiny version, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awp.attacks import AttackConfig, pgd  # noqa: E402
from awp.config import resolve_device  # noqa: E402
from awp.data import batches, class_stratified_subset, dataset_info, load_dataset  # noqa: E402
from awp.models import create_model  # noqa: E402
from awp.robustness.attacks import correct  # noqa: E402
from awp.trainconfig import THREAT_DEFAULTS  # noqa: E402
from bench.common import Row, clock_name, timed  # noqa: E402

MISSING = ("torchattacks is not installed in this environment; `make bench-attacks` creates .venv-bench "
           "with it and runs this")

# What differs between the two implementations (read from torchattacks 3.5.1's attacks/pgd.py and attack.py).
SEMANTICS = [
    "loss: torchattacks takes the batch-mean cross-entropy, ours the per-example sum; the gradient differs by 1/B "
    "only, so sign steps agree except where rounding makes a near-zero gradient entry change sign",
    "random start: both x + U(-eps, eps) per pixel, then clamped to [0, 1]; ours draws from an explicit "
    "torch.Generator, torchattacks from the global RNG (seeded here with torch.manual_seed)",
    "step and projection: the same, x' + alpha sign(g), delta clamped to [-eps, eps], then x clamped to [0, 1]",
    "mode: torchattacks switches the model to eval() for every call (and back to train() if it was training); "
    "ours keeps the caller's mode (train_mode=None), eval here",
    "copies: torchattacks clones inputs and labels on every call; ours only detaches",
]


def trained_smallcnn(device: torch.device, eps: float, epochs: int, train_size: int, train_steps: int):
    """A smallcnn adversarially trained on digits (plain PGD AT, our pgd, eps as given, Madry's step
    2.5 eps / K); returns the model in eval mode, the test split, the training-set size and the seconds spent."""
    t0 = time.perf_counter()
    data = load_dataset("digits")
    info = data.info
    train = class_stratified_subset(data.train, train_size, seed=0) if 0 < train_size < len(data.train) else data.train
    torch.manual_seed(0)
    model = create_model("smallcnn", info.num_classes, info.in_channels, info.mean, info.std).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    attack = AttackConfig("linf", eps, 2.5 * eps / train_steps, train_steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for x, y in batches(train, 64, shuffle=True, generator=gen, device=device):
            x_adv = pgd(model, x, y, attack, generator=gen)  # attacked in train mode, as the reference AT code
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval(), data.test, len(train), time.perf_counter() - t0


@dataclass
class Measured:
    model: str
    steps: int
    n: int
    eps: float
    timing_only: bool
    clean: float
    t: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "theirs": []})
    acc: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "theirs": []})
    max_diff: float = 0.0
    differ: float = 0.0  # fraction of examples whose adversarial inputs differ, worst repetition


def bench_row(torchattacks, name, model, x, y, eps, steps, reps, device, timing_only) -> Measured:
    cfg = AttackConfig("linf", eps, eps / 4, steps, random_start=True)
    theirs_attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    gen = torch.Generator(device=device)  # on the model's device, as torchattacks' global RNG draw

    def ours(seed: int) -> torch.Tensor:
        return pgd(model, x, y, cfg, generator=gen.manual_seed(seed))

    def theirs(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return theirs_attack(x, y)

    with torch.no_grad():
        clean = float(correct(model(x), y).float().mean())
    row = Measured(name, steps, len(y), eps, timing_only, clean)
    ours(10_000), theirs(10_000)  # warm-up: allocator, kernels, cudnn autotuning
    for rep in range(reps):
        order = (("ours", ours), ("theirs", theirs)) if rep % 2 == 0 else (("theirs", theirs), ("ours", ours))
        adv = {}
        for side, fn in order:
            row.t[side].append(timed(lambda: adv.__setitem__(side, fn(rep)), device))  # the same seed for both sides
        with torch.no_grad():
            for side, xa in adv.items():
                assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1, side
                row.acc[side].append(float(correct(model(xa), y).float().mean()))
            d = (adv["ours"] - adv["theirs"]).abs().flatten(1).amax(1)
            row.max_diff = max(row.max_diff, float(d.max()))
            row.differ = max(row.differ, float((d > 0).float().mean()))
    return row


@dataclass(frozen=True)
class Settings:
    """One measurement (see the module docstring and `main`'s options for each field)."""

    models: tuple[str, ...] = ("smallcnn",)
    steps: tuple[int, ...] = (10, 20)
    reps: int = 5
    eps: float | None = None
    examples: int = 500
    random_examples: int = 8
    epochs: int = 15
    train_size: int = 0
    train_steps: int = 5
    device: str = "cpu"


FULL = Settings(reps=9)  # run_all's rows: about half a minute on one busy core
SMOKE = Settings(steps=(2,), reps=2, examples=64, random_examples=2, epochs=1, train_size=100)


def row_name(steps: int) -> str:
    return f"attacks: torchattacks PGD / ours (PGD-{steps})"


def measure(torchattacks, s: Settings) -> tuple[list[Measured], list[str]]:
    """One `Measured` per (model, steps), and a line per model saying what was attacked."""
    device = resolve_device(s.device)
    rows: list[Measured] = []
    notes: list[str] = []
    for name in s.models:
        if name == "smallcnn":
            eps = s.eps if s.eps is not None else THREAT_DEFAULTS[("digits", "linf")][0]
            model, test, n_train, t_train = trained_smallcnn(device, eps, s.epochs, s.train_size, s.train_steps)
            x, y = test.tensors
            n = s.examples if 0 < s.examples < len(y) else len(y)
            x, y = x[:n].to(device), y[:n].to(device)
            notes.append(f"smallcnn: PGD-{s.train_steps} AT on {n_train} digits, {s.epochs} epochs, eps {eps:g}, "
                         f"in {t_train:.1f} s; attacked: the first {n} digits test images")
            timing_only = False
        else:
            eps = s.eps if s.eps is not None else THREAT_DEFAULTS[("cifar10", "linf")][0]
            info = dataset_info("cifar10")
            torch.manual_seed(0)
            model = create_model("preactresnet18", 10, 3, info.mean, info.std).to(device).eval()
            g = torch.Generator().manual_seed(0)
            x = torch.rand(s.random_examples, 3, 32, 32, generator=g).to(device)
            y = torch.randint(0, 10, (s.random_examples,), generator=g).to(device)
            notes.append(f"preactresnet18: untrained, {s.random_examples} random 3x32x32 inputs and labels, "
                         f"eps {eps:g}: timing only")
            timing_only = True
        for steps in s.steps:
            rows.append(bench_row(torchattacks, name, model, x, y, eps, steps, s.reps, device, timing_only))
    return rows, notes


def run(smoke: bool, device: str) -> list[Row]:
    """The run_all rows, one per PGD step count: median torchattacks call over our median call (> 1:
    ours is faster); skipped where torchattacks is not installed (it lives in .venv-bench only)."""
    s = replace(SMOKE if smoke else FULL, device=device)
    try:
        import torchattacks
    except ImportError:
        return [Row.skip(row_name(k), "pip install torchattacks in .venv-bench", device) for k in s.steps]
    measured, _ = measure(torchattacks, s)
    rows = []
    for m in measured:
        ours, theirs = statistics.median(m.t["ours"]), statistics.median(m.t["theirs"])
        ao, at = 100 * statistics.mean(m.acc["ours"]), 100 * statistics.mean(m.acc["theirs"])
        same = "identical x_adv" if m.max_diff == 0 else f"x_adv differ on {100 * m.differ:.1f}%"
        note = (f"torchattacks {torchattacks.__version__}; {m.model}, {m.n} images, {s.reps} reps; robust acc "
                f"ours {ao:.1f}% vs theirs {at:.1f}%; {same}")
        rows.append(Row(row_name(m.steps), ours, theirs, theirs / ours, per="call", device=device, note=note))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smallcnn", help="comma list of smallcnn (trained on digits) and "
                    "preactresnet18 (untrained, random 3x32x32 inputs, timing only)")
    ap.add_argument("--steps", default="10,20", help="comma list of PGD step counts, one row each")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per side and row (after one warm-up each)")
    ap.add_argument("--eps", type=float, default=None, help="L-inf eps (default: digits' training eps 0.25; "
                    "8/255 for preactresnet18); step size is eps / 4")
    ap.add_argument("--examples", type=int, default=500, help="digits test images attacked per call (0 = all 500)")
    ap.add_argument("--random-examples", type=int, default=8, help="random images per call for preactresnet18")
    ap.add_argument("--epochs", type=int, default=15, help="adversarial-training epochs of the smallcnn")
    ap.add_argument("--train-size", type=int, default=0, help="digits training images (0 = all 1,297)")
    ap.add_argument("--train-steps", type=int, default=5, help="PGD steps of the training attack")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); 1, as the "
                    "digits training default: as fast as 2 for smallcnn, and 2 threads on 2 busy cores ran 10x slower")
    ap.add_argument("--smoke", action="store_true", help="a tiny version in seconds: 2 steps, 2 reps, 64 images, "
                    "1 epoch on 100 images")
    a = ap.parse_args()
    try:
        import torchattacks
    except ImportError:
        print(MISSING, file=sys.stderr)
        return 2
    models = tuple(m.strip() for m in a.model.split(",") if m.strip())
    unknown = set(models) - {"smallcnn", "preactresnet18"}
    if unknown:
        ap.error(f"--model: unknown {', '.join(sorted(unknown))} (smallcnn, preactresnet18)")
    s = Settings(models, tuple(int(k) for k in a.steps.split(",")), a.reps, a.eps, a.examples, a.random_examples,
                 a.epochs, a.train_size, a.train_steps, a.device)
    if a.smoke:
        s = replace(SMOKE, models=models, eps=a.eps, device=a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    wall0 = time.perf_counter()
    rows, notes = measure(torchattacks, s)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"our PGD vs torchattacks.PGD: device {device} ({dev}); torch {torch.__version__}, "
          f"torchattacks {torchattacks.__version__}; python {sys.version.split()[0]}")
    print(f"L-inf, step eps/4, random start, eval mode, same inputs and seeds; {s.reps} interleaved reps per side "
          f"after 1 warm-up; times: median s/call by {clock_name(device)} (ratio of minima too); robust acc: mean over reps")
    for note in notes:
        print(f"  {note}")
    hdr = (f"{'model':<15}{'steps':>5}{'n':>5}{'eps':>8}{'clean%':>8}{'ours s':>9}{'theirs s':>10}"
           f"{'theirs/ours':>12}{'(min)':>7}{'ours rob%':>10}{'theirs rob%':>12}{'diff pts':>9}"
           f"  {'speed':<7} {'strength':<8}  same x_adv")
    print(hdr)
    print("-" * len(hdr))
    speed_ok, strength_ok = True, None
    for r in rows:
        to, tt = statistics.median(r.t["ours"]), statistics.median(r.t["theirs"])
        ratio, ratio_min = tt / to, min(r.t["theirs"]) / min(r.t["ours"])
        fast = ratio >= 1.0
        speed_ok &= fast
        if r.timing_only:
            acc_cols, strong_s = f"{'-':>10}{'-':>12}{'-':>9}", "n/a"
        else:
            ao, at = 100 * statistics.mean(r.acc["ours"]), 100 * statistics.mean(r.acc["theirs"])
            strong = ao <= at + 0.5
            strength_ok = strong and strength_ok is not False
            acc_cols, strong_s = f"{ao:>10.2f}{at:>12.2f}{ao - at:>+9.2f}", "met" if strong else "NOT met"
        same = "yes" if r.max_diff == 0 else f"no: {100 * r.differ:.1f}% of examples, max |diff| {r.max_diff:.3g}"
        clean = "-" if r.timing_only else f"{100 * r.clean:.1f}"
        print(f"{r.model:<15}{r.steps:>5}{r.n:>5}{r.eps:>8.4g}{clean:>8}{to:>9.4f}{tt:>10.4f}"
              f"{ratio:>12.3f}{ratio_min:>7.3f}{acc_cols}  {'met' if fast else 'NOT met':<7} {strong_s:<8}  {same}")
    print(f"verdict: speed (ours at least as fast, theirs/ours >= 1.0): {'met' if speed_ok else 'NOT met'}; "
          f"strength (our robust acc <= theirs + 0.5 points): "
          f"{'n/a (timing-only rows)' if strength_ok is None else 'met' if strength_ok else 'NOT met'}")
    print("semantic differences (torchattacks 3.5.1 source):")
    for line in SEMANTICS:
        print(f"  - {line}")
    print(f"({time.perf_counter() - wall0:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""P weight points per pass (`--points-per-batch P`, `landscape.core.points`) against point by point.

For each P, the same `n_points` landscape points (w + alpha_p d + beta_p e, PGD-K on the fly at each,
Alg. 1 lines 9-15) are computed twice: point by point (`engine.evaluate_at`, the model moved in place,
P = 1's path) and in groups of P (`points.evaluate_many`, one vmapped pass per group). The two are
interleaved `--repeats` times on the same model, data and starts; the ratio of medians is printed
with the peak memory of each P, and the largest difference between the two results (they must agree).

Peak memory: on CUDA `torch.cuda.max_memory_allocated`; on the CPU the peak resident set of a forked
child that computes one group (the parent's pages are shared, so compare the rows with each other).

    .venv/bin/python bench/multipoint.py                          # smallcnn on digits + PreAct ResNet-18, CPU
    .venv/bin/python bench/multipoint.py --device cuda --points 1,2,4,8,16
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awp.attacks import AttackConfig  # noqa: E402
from awp.config import resolve_device  # noqa: E402
from awp.data import class_stratified_subset, load_dataset  # noqa: E402
from awp.models import create_model  # noqa: E402
from bench.common import Row, Target, interleaved, median  # noqa: E402
from landscape.core import engine, points  # noqa: E402

TARGET = 1.5  # P points per pass vs point by point, smallcnn on digits (issue 15)


@dataclass(frozen=True)
class Setting:
    """One model and its probe data: `arch` on `examples` inputs of `shape`, PGD-`steps` at radius `eps`."""

    arch: str
    shape: tuple[int, int, int]
    examples: int
    batch_size: int
    steps: int
    eps: float


def settings(device: torch.device, smoke: bool) -> list[Setting]:
    """The two models of the issue: smallcnn on the digits' 8x8 inputs, PreAct ResNet-18 on 3x32x32."""
    gpu = device.type == "cuda"
    if smoke:
        return [Setting("smallcnn", (1, 8, 8), 32, 32, 1, 0.25), Setting("preactresnet18", (3, 32, 32), 2, 2, 1, 8 / 255)]
    return [Setting("smallcnn", (1, 8, 8), 300, 256, 10, 0.25),
            Setting("preactresnet18", (3, 32, 32), 1024 if gpu else 16, 256 if gpu else 16, 10 if gpu else 2, 8 / 255)]


def _problem(s: Setting, device: torch.device, seed: int = 0):
    """Model (eval mode, frozen), fixed batches with starts, two directions, and the attack."""
    torch.manual_seed(seed)
    c, h, w = s.shape
    model = create_model(s.arch, num_classes=10, in_channels=c).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if s.shape == (1, 8, 8):
        data = class_stratified_subset(load_dataset("digits").train, s.examples, seed)
    else:
        data = torch.utils.data.TensorDataset(torch.rand(s.examples, c, h, w), torch.randint(0, 10, (s.examples,)))
    attack = AttackConfig(eps=s.eps, step_size=s.eps / 4, steps=s.steps)
    batches = engine.fixed_batches(data, s.batch_size, attack, seed=seed, device=device)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    dirs = [{n: (0.05 * torch.randn(t.shape, generator=gen)).to(device) for n, t in base.items() if t.dim() > 1}
            for _ in range(2)]
    return model, batches, attack, base, dirs


def _terms(dirs, n: int):
    """n points on a small grid around w (none at w itself, so every point moves every weight)."""
    return [[(dirs[0], 0.1 * (1 + k % 4)), (dirs[1], -0.1 * (1 + k // 4))] for k in range(n)]


def _one_by_one(model, pts, batches, attack, base):
    return [engine.evaluate_at(model, t, batches, attack, base=base).reduce() for t in pts]


def _grouped(model, pts, batches, attack, base, p: int):
    out = []
    for i in range(0, len(pts), p):
        group = pts[i : i + p]
        if len(group) == 1:
            out += _one_by_one(model, group, batches, attack, base)
        else:
            out += [s.reduce() for s in points.evaluate_many(model, group, batches, attack, base=base)]
    return out


def _peak_mb(fn, device: torch.device) -> float:
    """Peak memory of `fn()` in MB: CUDA's allocator peak, or on the CPU a forked child's peak RSS."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: compute, report ru_maxrss (KB on Linux), exit without cleanup
        os.close(r)
        try:
            fn()
            os.write(w, str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).encode())
        finally:
            os._exit(0)
    os.close(w)
    text = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    return float(text) / 1024 if text else float("nan")


def curve(s: Setting, device: torch.device, ps: list[int], n_points: int, repeats: int) -> list[dict]:
    """For each P: medians over `repeats` interleaved (ABBA) runs of both ways, their ratio, peak memory
    and the largest relative difference of the adversarial losses."""
    model, batches, attack, base, dirs = _problem(s, device)
    pts = _terms(dirs, n_points)
    rows = []
    for p in ps:
        got: dict[str, list] = {}
        ways = {"one": lambda: got.__setitem__("one", _one_by_one(model, pts, batches, attack, base)),
                "grouped": lambda: got.__setitem__("grouped", _grouped(model, pts, batches, attack, base, p))}
        times = interleaved(ways, reps=repeats, device=device, warmup=0 if repeats == 1 else 1)
        diff = max(abs(x["adv_loss"] - y["adv_loss"]) / max(abs(x["adv_loss"]), 1e-12)
                   for x, y in zip(got["one"], got["grouped"]))
        peak = _peak_mb(lambda: _grouped(model, pts[:p], batches, attack, base, p), device)
        t_ref, t_ours = median(times["one"]), median(times["grouped"])
        rows.append({"arch": s.arch, "P": p, "points": n_points, "point_by_point_s": t_ref, "grouped_s": t_ours,
                     "ratio": t_ref / t_ours, "peak_mb": peak, "max_rel_diff": diff})
    return rows


def measure(device: str = "auto", smoke: bool = False, ps: list[int] | None = None, repeats: int | None = None) -> list[dict]:
    """Every setting's curve over P (ResNet-18 on a CPU: P <= 4 only, a few points)."""
    dev = resolve_device(device)
    ps = ps or ([1, 2] if smoke else [1, 2, 4, 8, 16])
    out = []
    for s in settings(dev, smoke):
        big = s.arch != "smallcnn" and dev.type != "cuda" and not smoke
        use = [p for p in ps if p <= 4] if big else ps
        out += curve(s, dev, use, n_points=max(use) * (1 if big or smoke else 2), repeats=repeats or (1 if smoke else 3))
    return out


def run(smoke: bool, device: str) -> list[Row]:
    """`bench/run_all.py`'s rows: one per model and P > 1 (P = 1 is the point-by-point path itself),
    the target on smallcnn's rows; seconds per the row's points, peak memory in the note."""
    ps = [1, 2] if smoke else ([1, 2, 4, 8, 16] if torch.device(device).type == "cuda" else [1, 2, 4, 8])
    rows = []
    for r in measure(device, smoke, ps):
        if r["P"] == 1:
            continue
        rows.append(Row(f"multi-point: {r['arch']} P={r['P']} per pass vs one by one", r["grouped_s"],
                        r["point_by_point_s"], r["ratio"], per=f"{r['points']} points", device=device,
                        note=f"peak {r['peak_mb']:.0f} MB; max rel diff {r['max_rel_diff']:.0e}",
                        target=Target.at_least(TARGET) if r["arch"] == "smallcnn" else Target.at_least(1.0)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--points", default="1,2,4,8,16", help="the P values")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on busy cores)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.device, args.smoke, [int(p) for p in args.points.split(",")], args.repeats)
    print(f"device {resolve_device(args.device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'model':>15} {'P':>3} {'points':>6} {'1-by-1 s':>9} {'P-batched s':>11} {'ratio':>6} {'peak MB':>8} {'max rel diff':>12}")
    for r in rows:
        print(f"{r['arch']:>15} {r['P']:>3} {r['points']:>6} {r['point_by_point_s']:>9.3f} {r['grouped_s']:>11.3f} "
              f"{r['ratio']:>6.2f} {r['peak_mb']:>8.0f} {r['max_rel_diff']:>12.1e}")
    best = max((r for r in rows if r["arch"] == "smallcnn"), key=lambda r: r["ratio"])
    verdict = "meets" if best["ratio"] >= TARGET else "misses"
    print(f"smallcnn best P = {best['P']}: {best['ratio']:.2f}x point by point (target >= {TARGET}: {verdict})")


if __name__ == "__main__":
    main()

"""Our AT-AWP training step against the Adversarial Robustness Toolbox's `AdversarialTrainerAWPPyTorch`, one run.

Both sides train the same nn.Module (a smallcnn with the same initial weights; ART wraps its copy in a
`PyTorchClassifier`, as it requires) on the same digits batches, in the same order, with the same
settings: PGD-K1 L-inf with our digits defaults for eps and step (10 steps, random start), AWP with
gamma as given, K2 = 1 (ART's only choice), no warm-up, SGD with our learning rate, momentum and
weight decay. What is timed is one training step on one batch: our `awp.train.train_step` with
tensors, ART's `_batch_process` (the body of its `fit` loop, without the epoch's shuffling and
progress bar) with the numpy arrays ART's API takes. Steps alternate in ABBA order after warm-up
steps; medians; on a CPU at 1 thread the times are process CPU seconds (`bench.common.clock`).

Before timing, both compute the weight perturbation v at the same weights for the same adversarial
batch, and the script prints how far apart they are (cosine and ||v_l|| / ||w_l|| per layer): the
check that the settings match. Then the semantic differences read from ART's source (`SEMANTICS`).
Target: ours at least 1.2x faster (ART's step time / ours >= 1.2).

ART is installed only in the benchmark environment, never as a project dependency:

    make bench                                                # creates .venv-bench with it, runs run_all
    .venv-bench/bin/python bench/awp_peers.py                 # this one: about 15 s
    .venv-bench/bin/python bench/awp_peers.py --steps 100 --device cuda
    .venv-bench/bin/python bench/awp_peers.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awp.config import resolve_device  # noqa: E402
from awp.methods import get_method  # noqa: E402
from awp.perturb import find_perturbation, perturbable_params, perturbed, zeros_like_params  # noqa: E402
from awp.rundata import run_data  # noqa: E402
from awp.train import build_model, make_optimizer, train_step  # noqa: E402
from awp.trainconfig import resolve_config  # noqa: E402
from bench.common import Row, clock_name, interleaved  # noqa: E402

ROW = "our AT-AWP step vs ART's AWP trainer"
MISSING = "pip install adversarial-robustness-toolbox in .venv-bench"

# What differs between the two (read from ART 1.20.1's defences/trainer/adversarial_trainer_awp_pytorch.py
# and attacks/evasion/projected_gradient_descent/projected_gradient_descent_pytorch.py).
SEMANTICS = [
    "ascent: ART copies the whole state dict into a proxy model every step (load_state_dict), takes an SGD "
    "step on the proxy's negated loss and uses proxy - w as the direction; ours takes torch.autograd.grad on the "
    "model itself (no copy, no second optimizer) and leaves the parameters' .grad alone",
    "size: ART rescales each layer's direction to ||w_l|| (denominator + 1e-8) and adds gamma times it, "
    "v_l = gamma ||w_l|| d_l / ||d_l||: exactly the K2 = 1, eta2 = gamma step of Eq. 10, where the projection "
    "Pi_gamma (Eq. 15) changes nothing; ours runs Eq. 10 with eta2 = gamma / (A K2) and the layer-wise Eq. 15 "
    "projection after every step, so K2 > 1 and A > 1 alternations work (ART has neither)",
    "restore: ART steps the optimizer at w + v and then subtracts gamma v (w + v - eta g - v: not bit-exact in "
    "floats, and weight decay and momentum see w + v); ours copies the saved w back bit for bit and steps there "
    "(Eq. 11: w - eta g, g taken at w + v)",
    "attack mode: ART crafts x' in eval mode (BatchNorm running statistics) against w; ours in train mode (batch "
    "statistics, as the reference AT code), so the K1 PGD passes also move BatchNorm's running statistics",
    "BatchNorm in the ascent pass: ART's proxy forward (train mode) moves the proxy's running statistics, thrown "
    "away with the proxy; ours restores them (frozen_batchnorm): the trained model sees the same",
    "data path: ART's PGD takes numpy, builds a DataLoader, returns numpy, and ends with a success-rate forward "
    "pass for a log line; the step converts the batch to tensors again. Ours stays in torch on the device",
    "extra work on our side: our step also measures the natural accuracy (a train-mode forward on the clean batch "
    "after the step, bn_clean='reference'), which ART does not",
    "random start: both U(-eps, eps) per pixel, clipped to [0, 1]; ART from numpy's global RNG, ours from a "
    "torch.Generator; ART clips to [0, 1] and then projects onto the eps-ball, ours projects then clips (the same "
    "box for L-inf)",
    "perturbed weights: both take conv and linear weights (dim > 1; ART: state-dict names containing 'weight'); "
    "biases and BatchNorm parameters are left alone (ours perturbs them with include_1d)",
    "warm-up: ART counts epochs from 0 (AWP from epoch index `warmup`), ours runs `awp_warmup` epochs without "
    "AWP; both 0 here (ART's `_apply_wp` set directly, since `_batch_process` is called without `fit`)",
]


@dataclass(frozen=True)
class Settings:
    """What one measurement trains: smallcnn `widths` on `train_size` digits in batches of `batch_size`,
    PGD-`train_steps`, AWP `gamma`; `steps` timed steps per side after `warmup` each."""

    steps: int = 40
    warmup: int = 2
    train_size: int = 300
    batch_size: int = 30
    train_steps: int = 10  # K1
    gamma: float = 0.01
    widths: tuple[int, int, int] = (16, 32, 32)
    device: str = "cpu"


FULL = Settings(steps=100)  # run_all's row: about 10 s on one busy core
SMOKE = Settings(steps=2, warmup=1, train_size=60, train_steps=2)


@dataclass
class Result:
    settings: Settings
    times: dict[str, list[float]]  # seconds per step, "ours" and "ART"
    check: list[tuple[str, float, float, float]]  # per layer: cosine(v_ours, v_ART), ||v||/||w|| ours, ART
    eps: float
    step_size: float
    art_version: str
    losses: dict[str, list[float]]  # mean training loss of every step (warm-up included), per side


class _ArtSide:
    """ART's trainer around a copy of the model, built as ART's own AWP example builds it."""

    def __init__(self, art, model: nn.Module, cfg, device: torch.device, batch_size: int, info):
        from art.attacks.evasion import ProjectedGradientDescent
        from art.defences.trainer import AdversarialTrainerAWPPyTorch
        from art.estimators.classification import PyTorchClassifier

        self.model = copy.deepcopy(model)
        proxy = copy.deepcopy(model)
        shape = (info.in_channels, info.image_size, info.image_size)
        kind = "gpu" if device.type == "cuda" else "cpu"
        opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.classifier = PyTorchClassifier(model=self.model, loss=nn.CrossEntropyLoss(), optimizer=opt,
                                            input_shape=shape, nb_classes=info.num_classes, clip_values=(0.0, 1.0),
                                            device_type=kind)
        # The proxy's learning rate only scales proxy - w, which ART normalizes away; plain SGD, as ART's example.
        proxy_clf = PyTorchClassifier(model=proxy, loss=nn.CrossEntropyLoss(),
                                      optimizer=torch.optim.SGD(proxy.parameters(), lr=0.01), input_shape=shape,
                                      nb_classes=info.num_classes, clip_values=(0.0, 1.0), device_type=kind)
        a = cfg.attack
        self.attack = ProjectedGradientDescent(self.classifier, norm=np.inf, eps=a.eps, eps_step=a.step_size,
                                               max_iter=a.steps, targeted=False, num_random_init=1,
                                               batch_size=batch_size, verbose=False)
        self.trainer = AdversarialTrainerAWPPyTorch(self.classifier, proxy_clf, self.attack, mode="PGD",
                                                    gamma=cfg.awp.gamma, beta=6.0, warmup=0)
        self.trainer._apply_wp = True  # what fit() sets from epoch index `warmup` (0) on
        self.device = device

    def perturbation(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """ART's v at the current weights for this adversarial batch: gamma * w_perturb."""
        self.model.train()
        v = self.trainer._weight_perturbation(x_batch=x, x_batch_pert=x_adv, y_batch=y)
        return {k: self.trainer._gamma * t for k, t in v.items()}


def compare_perturbations(ours_model: nn.Module, art: _ArtSide, cfg, x, y, gen) -> list[tuple[str, float, float, float]]:
    """v from both at the same (initial) weights and the same x' (ours, drawn against w in train mode)."""
    method = get_method("at-awp")
    loss_fn = method.bind({}).loss
    ours_model.train()
    x_adv = method.bind({}).adversary(ours_model, x, y, cfg.attack, gen)
    params = perturbable_params(ours_model)
    with perturbed(params) as w:
        v = find_perturbation(ours_model, params, w, zeros_like_params(params),
                              lambda: loss_fn(ours_model, x, x_adv, y).loss, cfg.awp)
        w = {k: t.clone() for k, t in w.items()}
    v_art = art.perturbation(x, x_adv, y)
    out = []
    for name in v:
        a = v[name].flatten()
        b = v_art[name].flatten().to(a.device)
        cos = float(F.cosine_similarity(a, b, dim=0))
        out.append((name, cos, float(a.norm() / w[name].norm()), float(b.norm() / w[name].norm())))
    return out


def measure(art, s: Settings) -> Result:
    """Both sides from the same initial weights on the same batches, steps interleaved ABBA."""
    device = resolve_device(s.device)
    cfg = resolve_config({"method": "at-awp", "train_size": s.train_size, "batch_size": s.batch_size,
                          "train_steps": s.train_steps, "gamma": s.gamma, "awp_warmup": 0, "awp_steps": 1,
                          "arch_kwargs": {"widths": list(s.widths)}, "device": str(device)})
    data = run_data("digits", train_size=s.train_size)
    model, _ = build_model(cfg, data)
    model.to(device)
    theirs = _ArtSide(art, model, cfg, device, s.batch_size, data.info)  # copies the initial weights
    x_all, y_all = data.train.tensors
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y_all), generator=g)
    batches = [(x_all[i].to(device), y_all[i].to(device)) for i in order.split(s.batch_size)]
    batches_np = [(x.cpu().numpy(), y.cpu().numpy()) for x, y in batches]

    gen = torch.Generator().manual_seed(1)
    check = compare_perturbations(model, theirs, cfg, *batches[0], gen)

    method = get_method("at-awp")
    opt = make_optimizer(model, cfg)
    params = perturbable_params(model, cfg.awp.include_1d)
    model.train()
    np.random.seed(0)  # ART's random starts
    counters = {"ours": 0, "ART": 0}
    losses: dict[str, list[float]] = {"ours": [], "ART": []}  # mean training loss per step

    def ours() -> None:
        x, y = batches[counters["ours"] % len(batches)]
        counters["ours"] += 1
        r = train_step(model, opt, method, x, y, cfg.attack, gen, cfg.awp, params, bn_clean=cfg.bn_clean,
                       method_params=cfg.method_params)
        losses["ours"].append(r.loss_sum / r.n)

    def art_step() -> None:
        x, y = batches_np[counters["ART"] % len(batches_np)]
        counters["ART"] += 1
        loss_sum, _, n = theirs.trainer._batch_process(x, y)
        losses["ART"].append(loss_sum / n)

    times = interleaved({"ours": ours, "ART": art_step}, s.steps, device, warmup=s.warmup)
    return Result(s, times, check, cfg.attack.eps, cfg.attack.step_size, art.__version__, losses)


def _check_note(check: list[tuple[str, float, float, float]]) -> str:
    cos = min(c for _, c, _, _ in check)
    rel = max(max(abs(a - b) for _, _, a, b in check), 0.0)
    return f"v at the same weights and x': cosine >= {cos:.6f}, v/w norm ratios differ by <= {rel:.1e}"


def run(smoke: bool, device: str) -> list[Row]:
    """The run_all row: ART's median step over ours (> 1: ours is faster); skipped without ART."""
    try:
        import art
    except ImportError:
        return [Row.skip(ROW, MISSING, device)]
    r = measure(art, replace(SMOKE if smoke else FULL, device=device))
    ours, theirs = statistics.median(r.times["ours"]), statistics.median(r.times["ART"])
    s = r.settings
    note = (f"ART {r.art_version}; smallcnn on digits, batch {s.batch_size}, PGD-{s.train_steps}, gamma {s.gamma:g}, "
            f"{s.steps} steps each; {_check_note(r.check)}")
    return [Row(ROW, ours, theirs, theirs / ours, per="step", device=device, note=note)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=Settings.steps, help="timed training steps per side")
    ap.add_argument("--train-size", type=int, default=Settings.train_size, help="digits training images")
    ap.add_argument("--batch-size", type=int, default=Settings.batch_size)
    ap.add_argument("--train-steps", type=int, default=Settings.train_steps, help="PGD steps K1")
    ap.add_argument("--gamma", type=float, default=Settings.gamma, help="AWP gamma")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="a tiny version in seconds")
    a = ap.parse_args()
    try:
        import art
    except ImportError:
        print(f"ART is not installed in this environment ({MISSING}; `make bench` creates it)", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    s = Settings(a.steps, Settings.warmup, a.train_size, a.batch_size, a.train_steps, a.gamma, device=a.device)
    if a.smoke:
        s = replace(SMOKE, device=a.device)
    t0 = time.perf_counter()
    r = measure(art, s)
    device = resolve_device(s.device)
    ours, theirs = statistics.median(r.times["ours"]), statistics.median(r.times["ART"])
    print(f"our AT-AWP step vs ART {r.art_version} AdversarialTrainerAWPPyTorch: device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"smallcnn {list(s.widths)} on {s.train_size} digits, batch {s.batch_size}, PGD-{s.train_steps} L-inf eps "
          f"{r.eps:g} step {r.step_size:g} random start, AWP gamma {s.gamma:g}, K2 = 1; {s.steps} interleaved steps "
          f"per side after {s.warmup} warm-up; {clock_name(device)}")
    print("weight perturbation at the same weights and x' (settings check):")
    for name, cos, ro, ra in r.check:
        print(f"  {name:<10} cosine {cos:.6f}   ||v||/||w|| ours {ro:.6f}  ART {ra:.6f}")
    for side in ("ours", "ART"):
        t = r.times[side]
        print(f"  {side:<5} median {statistics.median(t) * 1e3:8.2f} ms/step   min {min(t) * 1e3:8.2f}")
    for side, ls in r.losses.items():
        print(f"  {side:<5} training loss, first and last 5 steps: " + " ".join(f"{v:.3f}" for v in ls[:5])
              + " ... " + " ".join(f"{v:.3f}" for v in ls[-5:]))
    ratio = theirs / ours
    print(f"ART / ours = {ratio:.3f} (min {min(r.times['ART']) / min(r.times['ours']):.3f}); target >= 1.2: "
          f"{'meets' if ratio >= 1.2 else 'misses'}")
    print(f"semantic differences (ART {r.art_version} source):")
    for line in SEMANTICS:
        print(f"  - {line}")
    print(f"({time.perf_counter() - t0:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

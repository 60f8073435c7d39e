"""Eq. 5 at points of weight space: rho(w + sum_i c_i d_i) with adversarial examples generated on the fly.

The model is moved in place (`awp.weights.offset`) and put back bitwise from one saved copy of its
parameters; it is never deep-copied. Each point runs Alg. 1 lines 9-15 on fixed batches with a
fixed random start per example (common random numbers), so two points differ only by their
weights. Results are sums and counts (`PointSums`: `awp.evaluate.EvalSums` plus sums of squared
per-example losses, for standard errors over examples): exact across batches and shards.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from awp.attacks import AttackConfig, model_mode, pgd, random_start
from awp.data import batches as iter_batches
from awp.errors import UserError
from awp.evaluate import EvalSums, batch_sum_row, exact_count
from awp.registry import Registry
from awp.weights import offset

Params = dict[str, Tensor]  # parameter name -> tensor


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters without `requires_grad` while probing: PGD needs input gradients only, so autograd
    keeps no weight-gradient bookkeeping; the flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def grads_on(params: Sequence[Tensor]) -> Iterator[None]:
    """`requires_grad` on for these parameters inside the block (`frozen` turned it off: a measure or a
    direction that needs weight gradients, e.g. AWP's ascent), restored afterwards."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


# ---------------------------------------------------------------------------------------------
# Fixed batches with common random numbers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeBatch:
    """One fixed batch: inputs x [B, C, H, W] in [0, 1], labels y [B], and the random start
    delta0 [B, C, H, W] (Alg. 1 line 10) reused at every point: common random numbers."""

    x: Tensor
    y: Tensor
    delta0: Tensor


def attack_active(attack: AttackConfig) -> bool:
    """PGD with no steps or a zero radius is the natural loss (`--pgd 0`): no random start either."""
    return attack.steps > 0 and attack.eps > 0


Data = Any  # a Dataset of (x, y), a DataLoader, or any iterable of (x [B, C, H, W], y [B]) batches


def _iterate(data: Data, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(x float, y long) batches of `data` on the CPU, in its order, inputs checked to lie in [0, 1]."""
    for i, (x, y) in enumerate(_raw(data, batch_size)):
        x = x.float()
        _check_pixels(x, i)
        yield x, y


def _raw(data: Data, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """A map-style Dataset batched here; a DataLoader or any other iterable taken batch by batch as it comes."""
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        yield from iter_batches(data, batch_size)
        return
    if not isinstance(data, Iterable):
        raise UserError(f"data must be a Dataset, a DataLoader or an iterable of (x, y) batches; got {type(data).__name__}")
    for i, item in enumerate(data):
        if not (isinstance(item, (tuple, list)) and len(item) >= 2 and all(isinstance(t, Tensor) for t in item[:2])):
            raise UserError(f"data batch {i} is a {type(item).__name__}, not an (x, y) pair of tensors")
        x, y = item[0], item[1]
        if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
            raise UserError(f"data batch {i} has x {tuple(x.shape)} and y {tuple(y.shape)}; expected x [B, C, H, W] "
                            f"and y [B] with the same B")
        yield x.cpu(), y.cpu().long()


def _check_pixels(x: Tensor, i: int) -> None:
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise UserError(f"data batch {i} has inputs in [{lo:.3g}, {hi:.3g}]; inputs must be in [0, 1] (the eps-ball "
                        f"and clamp of PGD are in pixel units; put normalization inside the model)")


def fixed_batches(
    data: Data, batch_size: int, attack: AttackConfig, seed: int, device: torch.device | str = "cpu"
) -> list[ProbeBatch]:
    """Materialize `data` once, in order, as batches, each with its random start drawn from a CPU
    generator seeded with `seed` (so starts do not depend on the device). The batches live on `device`
    when they fit in half its free memory, else on the CPU, moved to the device batch by batch."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for x, y in _iterate(data, batch_size):
        if attack_active(attack) and attack.random_start:
            delta0 = random_start(x, attack.eps, attack.norm, gen, l2_start=attack.l2_start)  # Alg. 1 line 10
        else:
            delta0 = torch.zeros_like(x)
        out.append(ProbeBatch(x, y, delta0))
    if not out:
        raise UserError("the probe data set is empty")
    return place(out, device)


def clean_inputs(data: Data, batch_size: int, device: torch.device | str = "cpu") -> list[Tensor]:
    """The inputs of `data` in fixed batches, no labels or starts: what BN recalibration runs over."""
    xs = [x for x, _ in _iterate(data, batch_size)]
    if not xs:
        raise UserError("the BN recalibration data set is empty")
    device = torch.device(device)
    return [x.to(device) for x in xs] if _fits(sum(x.nbytes for x in xs), device) else [x.pin_memory() for x in xs]


def _fits(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` may live on `device`: at most half its free memory on CUDA, always elsewhere."""
    return device.type != "cuda" or nbytes <= torch.cuda.mem_get_info(device)[0] / 2


def place(batches: list[ProbeBatch], device: torch.device | str) -> list[ProbeBatch]:
    """The batches on `device` if they fit (`_fits`), else pinned on the CPU, moved batch by batch."""
    device = torch.device(device)
    if _fits(sum(b.x.nbytes + b.y.nbytes + b.delta0.nbytes for b in batches), device):
        return [ProbeBatch(b.x.to(device), b.y.to(device), b.delta0.to(device)) for b in batches]
    return [ProbeBatch(b.x.pin_memory(), b.y.pin_memory(), b.delta0.pin_memory()) for b in batches]


def _on(b: ProbeBatch, device: torch.device) -> ProbeBatch:
    """The batch on the model's device (a no-op when it already lives there)."""
    if b.x.device == device:
        return b
    return ProbeBatch(b.x.to(device, non_blocking=True), b.y.to(device, non_blocking=True),
                      b.delta0.to(device, non_blocking=True))


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# One point: Alg. 1 lines 9-15
# ---------------------------------------------------------------------------------------------


def adversarial_examples(model: nn.Module, batches: Sequence[ProbeBatch], attack: AttackConfig) -> list[Tensor]:
    """PGD examples against the model as it is now (eval mode), from each batch's fixed start:
    Alg. 1 lines 9-14. `--fixed-adv` takes them once at w and reuses them at every point."""
    device = model_device(model)
    with model_mode(model, train=False):
        if not attack_active(attack):
            return [b.x for b in batches]
        out = []
        for b in batches:
            d = _on(b, device)
            out.append(pgd(model, d.x, d.y, attack, delta0=d.delta0).to(b.x.device))
        return out


def mean_se(total: float, total_sq: float, n: int) -> float:
    """Standard error of a mean over n examples from the sum and the sum of squares of their values:
    the sample standard deviation (ddof 1) over sqrt(n). NaN for n < 2 (no spread is measurable from
    one example) and wherever the sums are not finite. For 0/1 values (accuracies) total_sq = total,
    and this is sqrt(p (1 - p) / (n - 1))."""
    if n < 2 or not (math.isfinite(total) and math.isfinite(total_sq)):
        return float("nan")
    var = max(0.0, (total_sq - total * total / n) / (n - 1))  # rounding can leave -1e-17 for equal values
    return math.sqrt(var / n)


@dataclass
class PointSums(EvalSums):
    """`EvalSums` of one point plus the sums of squared per-example cross-entropies, so that `reduce()`
    also gives the standard error over examples of each mean (`*_se`). Still plain sums: they add
    exactly across batches and ranks. Correct counts need no square: 0/1 squared is itself."""

    nat_loss_sq: float = 0.0
    adv_loss_sq: float = 0.0

    def astuple(self) -> tuple:
        return (*super().astuple(), self.nat_loss_sq, self.adv_loss_sq)

    @classmethod
    def from_row(cls, row: Sequence[float]) -> "PointSums":
        """From one `awp.evaluate.SUM_ROW` row of floats (counts back to exact ints)."""
        n, nat_loss, nat_correct, adv_loss, adv_correct, nat_sq, adv_sq = row
        return cls(int(n), nat_loss, exact_count(nat_correct), adv_loss, exact_count(adv_correct), nat_sq, adv_sq)

    def add(self, other: "PointSums") -> "PointSums":
        return PointSums(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def reduce(self) -> dict[str, float]:
        out = super().reduce()
        out.update(
            nat_loss_se=mean_se(self.nat_loss, self.nat_loss_sq, self.n),
            nat_acc_se=mean_se(self.nat_correct, self.nat_correct, self.n),
            adv_loss_se=mean_se(self.adv_loss, self.adv_loss_sq, self.n),
            adv_acc_se=mean_se(self.adv_correct, self.adv_correct, self.n),
        )
        return out


def evaluate_point(
    model: nn.Module,
    batches: Sequence[ProbeBatch],
    attack: AttackConfig,
    fixed_adv: Sequence[Tensor] | None = None,
) -> PointSums:
    """Sums for rho at the model's current weights, in eval mode: PGD on the fly against these
    weights (or the given `fixed_adv` examples), then `awp.evaluate.batch_sum_row` gives the natural
    and adversarial cross-entropy (Alg. 1 line 15) summed and summed squared (for the standard error
    over examples), and both accuracies. One host sync per point."""
    active = attack_active(attack)
    device = model_device(model)
    acc = None
    with model_mode(model, train=False):
        for i, b in enumerate(batches):
            d = _on(b, device)
            if fixed_adv is not None:
                x_adv = fixed_adv[i].to(device, non_blocking=True)
            elif active:
                x_adv = pgd(model, d.x, d.y, attack, delta0=d.delta0)
            else:
                x_adv = d.x
            row = batch_sum_row(model, d.x, d.y, x_adv)
            acc = row if acc is None else acc + row
    return PointSums.from_row(acc.tolist())


# ---------------------------------------------------------------------------------------------
# BatchNorm at a perturbed point: keep w's statistics, or re-estimate them there
# ---------------------------------------------------------------------------------------------


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def buffers_preserved(model: nn.Module) -> Iterator[None]:
    """Copy every buffer (BN running mean/var/count) and put it back bitwise on exit."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])


def recalibrate_bn(model: nn.Module, inputs: Sequence[Tensor]) -> None:
    """Re-estimate BN running statistics at the current weights: reset, then a cumulative average
    (momentum None) over clean `inputs` with only the BN layers in train mode, no gradients."""
    layers = bn_layers(model)
    momenta = [m.momentum for m in layers]
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x in inputs:
                model(x.to(model_device(model), non_blocking=True))
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
            m.eval()


def _bn_eval(model: nn.Module, inputs: Sequence[Tensor]) -> ContextManager[None]:
    """Keep the statistics w was trained with (what Alg. 1 does implicitly)."""
    return contextlib.nullcontext()


@contextlib.contextmanager
def _bn_recalibrate(model: nn.Module, inputs: Sequence[Tensor]) -> Iterator[None]:
    """Statistics of the perturbed network itself, restored to w's afterwards."""
    with buffers_preserved(model):
        recalibrate_bn(model, inputs)
        yield


# A BN mode is entered after the weights are set and before the point is evaluated.
BNMode = Callable[[nn.Module, Sequence[Tensor]], ContextManager[None]]
BN_MODES: Registry[BNMode] = Registry("--bn mode", {"eval": _bn_eval, "recalibrate": _bn_recalibrate})


def bn_mode(name: str) -> BNMode:
    return BN_MODES.lookup(name)


# ---------------------------------------------------------------------------------------------
# Points and sweeps
# ---------------------------------------------------------------------------------------------


def evaluate_at(
    model: nn.Module,
    terms: Sequence[tuple[Mapping[str, Tensor], float]],
    batches: Sequence[ProbeBatch],
    attack: AttackConfig,
    *,
    base: Mapping[str, Tensor] | None = None,
    bn: str = "eval",
    bn_inputs: Sequence[Tensor] = (),
    fixed_adv: Sequence[Tensor] | None = None,
) -> PointSums:
    """rho and friends at w + sum_i c_i d_i for terms [(d_i, c_i)] (Eq. 5): set weights, apply the BN
    mode, evaluate, restore weights (bitwise, from `base` = w when given) and buffers."""
    params = dict(model.named_parameters())
    with offset(params, terms, base), bn_mode(bn)(model, bn_inputs):
        return evaluate_point(model, batches, attack, fixed_adv)

"""Eq. 5 at points of weight space: rho(w + sum_i c_i d_i) with adversarial examples generated on the fly.

The model is moved in place (`perturbed`) and put back bitwise from one saved copy of its
parameters; it is never deep-copied. Each point runs Alg. 1 lines 9-15 on fixed batches with a
fixed random start per example (common random numbers), so two points differ only by their
weights. Results are sums and counts (`PointSums`: `awp.evaluate.EvalSums` plus sums of squared
per-example losses, for standard errors over examples): exact across batches and shards.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from awp.attacks import AttackConfig, cross_entropy, model_mode, pgd, random_start
from awp.data import batches as iter_batches
from awp.errors import UserError
from awp.registry import Registry
from awp.evaluate import EvalSums, correct_sum, exact_count

Params = dict[str, Tensor]  # parameter name -> tensor


# ---------------------------------------------------------------------------------------------
# Weights: w + sum_i c_i d_i, in place, restored bitwise
# ---------------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> Params:
    """A detached copy of every parameter: the unperturbed w, the only copy a probe keeps."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@contextlib.contextmanager
def perturbed(
    model: nn.Module,
    directions: Sequence[Mapping[str, Tensor]],
    coefs: Sequence[float],
    base: Mapping[str, Tensor] | None = None,
) -> Iterator[nn.Module]:
    """Set the parameters to w + sum_i coefs[i] * directions[i] in place (Eq. 5: w + alpha d; the
    2-D plot's w + alpha d + beta e), then copy w back bitwise on exit, also after an exception.

    `base` is w from `snapshot(model)` (taken here when None); pass it to avoid one copy per point.
    Directions are keyed by parameter name and moved to each parameter's device and dtype.
    """
    if len(directions) != len(coefs):
        raise ValueError(f"{len(directions)} directions but {len(coefs)} coefficients")
    params = dict(model.named_parameters())
    if base is None:
        base = snapshot(model)
    for d in directions:
        if d.keys() != params.keys():
            missing, extra = sorted(params.keys() - d.keys()), sorted(d.keys() - params.keys())
            raise ValueError(f"direction does not match the model: missing {missing[:3]}, extra {extra[:3]}")
    try:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(base[name])
                for d, c in zip(directions, coefs):
                    if c != 0.0:  # alpha = 0 is w itself, bit for bit
                        p.add_(d[name].to(p.device, p.dtype, non_blocking=True), alpha=float(c))
        yield model
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(base[name])


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


def fixed_batches(
    ds: Dataset, batch_size: int, attack: AttackConfig, seed: int, device: torch.device | str = "cpu"
) -> list[ProbeBatch]:
    """Materialize `ds` once, in order, as batches on `device`, each with its random start drawn
    from a CPU generator seeded with `seed` (so starts do not depend on the device)."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for x, y in iter_batches(ds, batch_size):
        if attack_active(attack) and attack.random_start:
            delta0 = random_start(x, attack.eps, attack.norm, gen, l2_start=attack.l2_start)  # Alg. 1 line 10
        else:
            delta0 = torch.zeros_like(x)
        out.append(ProbeBatch(x.to(device), y.to(device), delta0.to(device)))
    if not out:
        raise UserError("the probe data set is empty")
    return out


# ---------------------------------------------------------------------------------------------
# One point: Alg. 1 lines 9-15
# ---------------------------------------------------------------------------------------------


def adversarial_examples(model: nn.Module, batches: Sequence[ProbeBatch], attack: AttackConfig) -> list[Tensor]:
    """PGD examples against the model as it is now (eval mode), from each batch's fixed start:
    Alg. 1 lines 9-14. `--fixed-adv` takes them once at w and reuses them at every point."""
    with model_mode(model, train=False):
        if not attack_active(attack):
            return [b.x for b in batches]
        return [
            pgd(model, b.x, b.y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                norm=attack.norm, delta0=b.delta0)
            for b in batches
        ]


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
    weights (or the given `fixed_adv` examples), then one forward pass over [x; x_adv] gives the
    natural and adversarial cross-entropy per example (Alg. 1 line 15), summed and summed squared
    (for the standard error over examples), and both accuracies."""
    active = attack_active(attack)
    acc = None  # the 6 sums below, on the device: one sync per point
    n = 0
    with model_mode(model, train=False):
        for i, b in enumerate(batches):
            if fixed_adv is not None:
                x_adv = fixed_adv[i]
            elif active:
                x_adv = pgd(model, b.x, b.y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                            norm=attack.norm, delta0=b.delta0)
            else:
                x_adv = b.x
            with torch.no_grad():
                if x_adv is b.x:  # no attack: the adversarial loss is the natural loss, exactly
                    logits_nat = logits_adv = model(b.x)
                else:  # eval mode: each example's logits do not depend on the rest of the batch
                    logits_nat, logits_adv = model(torch.cat([b.x, x_adv])).split(len(b.y))
                ce_nat = cross_entropy(logits_nat, b.y).double()  # [B] per example
                ce_adv = ce_nat if logits_adv is logits_nat else cross_entropy(logits_adv, b.y).double()
                row = torch.stack([  # correct counts are NaN if any logit is NaN/inf (argmax would say class 0)
                    ce_nat.sum(),
                    correct_sum(logits_nat, b.y),
                    ce_adv.sum(),  # Eq. 5 / Alg. 1 line 15 (summed)
                    correct_sum(logits_adv, b.y),
                    ce_nat.square().sum(),
                    ce_adv.square().sum(),
                ])
            acc = row if acc is None else acc + row
            n += len(b.y)
    nat_loss, nat_correct, adv_loss, adv_correct, nat_sq, adv_sq = acc.tolist()
    return PointSums(n, nat_loss, exact_count(nat_correct), adv_loss, exact_count(adv_correct), nat_sq, adv_sq)


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
                model(x)
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
    directions: Sequence[Mapping[str, Tensor]],
    coefs: Sequence[float],
    batches: Sequence[ProbeBatch],
    attack: AttackConfig,
    *,
    base: Mapping[str, Tensor] | None = None,
    bn: str = "eval",
    bn_inputs: Sequence[Tensor] = (),
    fixed_adv: Sequence[Tensor] | None = None,
) -> PointSums:
    """rho and friends at w + sum_i coefs[i] d_i (Eq. 5): set weights, apply the BN mode, evaluate,
    restore weights and buffers."""
    with perturbed(model, directions, coefs, base), bn_mode(bn)(model, bn_inputs):
        return evaluate_point(model, batches, attack, fixed_adv)


def sweep(
    model: nn.Module,
    directions: Sequence[Mapping[str, Tensor]],
    coords: np.ndarray,
    batches: Sequence[ProbeBatch],
    attack: AttackConfig,
    *,
    base: Mapping[str, Tensor] | None = None,
    bn: str = "eval",
    bn_inputs: Sequence[Tensor] = (),
    fixed_adv: Sequence[Tensor] | None = None,
) -> Iterator[tuple[int, PointSums]]:
    """Evaluate the points coords[i] (a row of coefficients, one per direction: [P, len(directions)])
    in order, yielding (i, sums) as each finishes, so callers can show progress and flush."""
    coords = np.asarray(coords, dtype=np.float64).reshape(len(coords), -1)
    if coords.shape[1] != len(directions):
        raise ValueError(f"coords have {coords.shape[1]} columns for {len(directions)} directions")
    if base is None:
        base = snapshot(model)
    directions = [{n: t.to(base[n].device, base[n].dtype) for n, t in d.items()} for d in directions]
    for i, row in enumerate(coords):
        yield i, evaluate_at(model, directions, row.tolist(), batches, attack, base=base, bn=bn,
                             bn_inputs=bn_inputs, fixed_adv=fixed_adv)

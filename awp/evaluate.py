"""Natural and PGD-robust loss/accuracy of a model over a dataset, as sums and counts (exact across batches)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from awp.attacks import AttackConfig, cross_entropy, model_mode, pgd
from awp.data import batches


@dataclass
class EvalSums:
    """Sums over examples; `reduce()` divides by `n`. Sums add exactly across batches and ranks."""

    n: int = 0
    nat_loss: float = 0.0
    nat_correct: int | float = 0  # an exact count, or NaN when some example's logits were NaN/inf
    adv_loss: float = 0.0
    adv_correct: int | float = 0

    def add(self, other: "EvalSums") -> "EvalSums":
        return EvalSums(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple:
        return (self.n, self.nat_loss, self.nat_correct, self.adv_loss, self.adv_correct)

    def reduce(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {
            "nat_loss": self.nat_loss / n,
            "nat_acc": self.nat_correct / n,
            "adv_loss": self.adv_loss / n,
            "adv_acc": self.adv_correct / n,
        }


def attacked_batches(
    model: nn.Module, ds: Dataset, attack: AttackConfig, *, batch_size: int, device: torch.device | str, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, x_adv) over `ds` in order, PGD run in eval mode with every random start drawn from one
    generator seeded with `seed`; the model's mode is restored when the iteration ends."""
    gen = torch.Generator().manual_seed(seed)
    with model_mode(model, train=False):
        for x, y in batches(ds, batch_size, device=device):
            x_adv = pgd(model, x, y, attack, generator=gen)
            yield x, y, x_adv


def correct_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1.0 where argmax(logits) == y, 0.0 where not, NaN where any logit of the example is NaN or inf:
    argmax of NaN logits is class 0, which is no prediction and must not count class-0 examples as correct."""
    hit = (logits.argmax(1) == y).double()
    return torch.where(torch.isfinite(logits).all(1), hit, torch.full_like(hit, float("nan")))


def exact_count(v: float) -> int | float:
    """A summed 0/1 count back to an exact int; NaN (some example had non-finite logits) stays NaN."""
    return int(round(v)) if math.isfinite(v) else float("nan")


SUM_ROW = ("n", "nat_loss", "nat_correct", "adv_loss", "adv_correct", "nat_loss_sq", "adv_loss_sq")


def sum_rows(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, points: int = 1) -> torch.Tensor:
    """`SUM_ROW` sums of each of `points` groups of examples as a float64 [points, 7] tensor on the device:
    logits [points * B, K] hold the groups one after the other, each over the same labels y [B] (the
    landscape engine's P weight points). `logits_adv is logits_nat` means no attack: the adversarial
    loss is then the natural loss, exactly. Correct counts are NaN where logits are not finite."""
    ys = y.repeat(points)
    ce_nat = cross_entropy(logits_nat, ys).double().view(points, -1)  # [P, B] per example
    ce_adv = ce_nat if logits_adv is logits_nat else cross_entropy(logits_adv, ys).double().view(points, -1)
    ok_nat = correct_per_example(logits_nat, ys).view(points, -1)
    ok_adv = ok_nat if logits_adv is logits_nat else correct_per_example(logits_adv, ys).view(points, -1)
    n = torch.full((points,), float(len(y)), dtype=torch.float64, device=ce_nat.device)
    return torch.stack([n, ce_nat.sum(1), ok_nat.sum(1), ce_adv.sum(1), ok_adv.sum(1),  # Eq. 5 / Alg. 1 line 15
                        ce_nat.square().sum(1), ce_adv.square().sum(1)], dim=1)


@torch.no_grad()
def batch_sum_row(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """One batch's sums as a float64 row on the device (`SUM_ROW`: count, natural and adversarial
    cross-entropy sums and correct counts, and the sums of squared cross-entropies for standard errors):
    one forward pass over [x; x_adv] (each example's logits do not depend on the batch in eval mode),
    no host sync."""
    if x_adv is x:  # no attack: the adversarial loss is the natural loss, exactly
        logits_nat = logits_adv = model(x)
    else:
        logits_nat, logits_adv = model(torch.cat([x, x_adv])).split(len(y))
    return sum_rows(logits_nat, logits_adv, y)[0]


def batch_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> EvalSums:
    """Natural and adversarial loss/correct sums of one batch (`batch_sum_row` without the squares)."""
    n, nat, nat_c, adv, adv_c, _, _ = batch_sum_row(model, x, y, x_adv).tolist()
    return EvalSums(int(n), nat, exact_count(nat_c), adv, exact_count(adv_c))


def evaluate(model: nn.Module, ds: Dataset, attack: AttackConfig, **kw) -> dict[str, float]:
    """Natural and robust loss/accuracy of `model` on `ds` in eval mode (`evaluate_sums`' keywords:
    batch_size, device, seed of the random starts)."""
    return evaluate_sums(model, ds, attack, **kw).reduce()


def evaluate_sums(
    model: nn.Module,
    ds: Dataset,
    attack: AttackConfig,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> EvalSums:
    """`evaluate` before the division: sums and counts, which add exactly across shards of `ds` (ranks)."""
    total = EvalSums()
    for x, y, x_adv in attacked_batches(model, ds, attack, batch_size=batch_size, device=device, seed=seed):
        total = total.add(batch_sums(model, x, y, x_adv))
    return total


def robust_correct(model: nn.Module, ds: Dataset, attack: AttackConfig, *, batch_size: int = 256,
                   device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """Per-example robust correctness [N] (float64 1/0, NaN where the logits are not finite) under the same
    attack and starts as `evaluate`: what a paired bootstrap over test examples needs to compare two models."""
    with torch.no_grad():
        return torch.cat([
            correct_per_example(model(x_adv), y).cpu()
            for _, y, x_adv in attacked_batches(model, ds, attack, batch_size=batch_size, device=device, seed=seed)
        ])

"""Natural and PGD-robust loss/accuracy of a model over a dataset, as sums and counts (exact across batches)."""

from __future__ import annotations

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
    nat_correct: int = 0
    adv_loss: float = 0.0
    adv_correct: int = 0

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
            x_adv = pgd(model, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                        norm=attack.norm, random_start=attack.random_start, generator=gen)
            yield x, y, x_adv


@torch.no_grad()
def batch_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> EvalSums:
    """Natural and adversarial loss/correct sums of one batch."""
    nat, adv = model(x), model(x_adv)
    return EvalSums(len(y), cross_entropy(nat, y).sum().item(), (nat.argmax(1) == y).sum().item(),
                    cross_entropy(adv, y).sum().item(), (adv.argmax(1) == y).sum().item())


def evaluate(
    model: nn.Module,
    ds: Dataset,
    attack: AttackConfig,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Natural and robust loss/accuracy of `model` on `ds` in eval mode; random starts from `seed`."""
    total = EvalSums()
    for x, y, x_adv in attacked_batches(model, ds, attack, batch_size=batch_size, device=device, seed=seed):
        total = total.add(batch_sums(model, x, y, x_adv))
    return total.reduce()


def robust_correct(model: nn.Module, ds: Dataset, attack: AttackConfig, *, batch_size: int = 256,
                   device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """Per-example 0/1 robust correctness [N] under the same attack and starts as `evaluate`: what a
    paired bootstrap over test examples needs to compare two models on the same examples."""
    with torch.no_grad():
        return torch.cat([
            (model(x_adv).argmax(1) == y).cpu()
            for _, y, x_adv in attacked_batches(model, ds, attack, batch_size=batch_size, device=device, seed=seed)
        ])

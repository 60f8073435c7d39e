"""Natural and PGD-robust loss/accuracy of a model over a dataset, as sums and counts (exact across batches)."""

from __future__ import annotations

from dataclasses import dataclass

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


def evaluate_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, generator: torch.Generator | None = None
) -> EvalSums:
    """Sums for one batch: clean pass, then PGD against the model as it is (caller picks the mode)."""
    with torch.no_grad():
        logits = model(x)
        nat_loss = cross_entropy(logits, y).sum().item()
        nat_correct = (logits.argmax(1) == y).sum().item()
    x_adv = pgd(
        model, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps, norm=attack.norm,
        random_start=attack.random_start, generator=generator,
    )
    with torch.no_grad():
        logits = model(x_adv)
        adv_loss = cross_entropy(logits, y).sum().item()
        adv_correct = (logits.argmax(1) == y).sum().item()
    return EvalSums(len(y), nat_loss, nat_correct, adv_loss, adv_correct)


def _eval_batches(ds: Dataset, batch_size: int, device: torch.device | str, seed: int):
    """(x, y, generator) over `ds` in order, one generator seeded with `seed` for all random starts."""
    gen = torch.Generator().manual_seed(seed)
    for x, y in batches(ds, batch_size, device=device):
        yield x, y, gen


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
    with model_mode(model, train=False):
        for x, y, gen in _eval_batches(ds, batch_size, device, seed):
            total = total.add(evaluate_batch(model, x, y, attack, gen))
    return total.reduce()


def robust_correct(
    model: nn.Module,
    ds: Dataset,
    attack: AttackConfig,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> torch.Tensor:
    """Per-example 0/1 robust correctness [N] (eval mode, PGD from starts drawn from `seed`): what a
    paired bootstrap over test examples needs to compare two models on the same examples."""
    out = []
    with model_mode(model, train=False):
        for x, y, gen in _eval_batches(ds, batch_size, device, seed):
            x_adv = pgd(model, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
                        norm=attack.norm, random_start=attack.random_start, generator=gen)
            with torch.no_grad():
                out.append((model(x_adv).argmax(1) == y).cpu())
    return torch.cat(out)

"""Training methods by name: how x' is crafted (Eq. 9 / 16 / 17), which loss trains (Eq. 1 / D.3),
and whether AWP wraps the step (Algorithm 2). The TRADES/MART/RST issue only adds entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from awp.attacks import AttackConfig, cross_entropy, pgd
from awp.registry import Registry
from awp.losses import TrainingLoss, at_loss

# (model, x, y, attack, generator) -> x' [B, C, H, W] in [0, 1]; runs in the model's current mode.
Adversary = Callable[[nn.Module, Tensor, Tensor, AttackConfig, "torch.Generator | None"], Tensor]


def pgd_ce_adversary(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, generator: torch.Generator | None) -> Tensor:
    """Eq. 9 (Algorithm 2 lines 5-10): PGD on the cross-entropy, random start, against the model as it
    is (in train mode during training, like the reference AT code)."""
    return pgd(
        model, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps, norm=attack.norm,
        loss_fn=cross_entropy, random_start=attack.random_start, generator=generator, train_mode=None,
        l2_start=attack.l2_start,
    )


@dataclass(frozen=True)
class Method:
    """One training method: its adversary, its training loss, and whether AWP is applied."""

    name: str
    adversary: Adversary
    loss: TrainingLoss
    uses_awp: bool
    summary: str


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    return METHODS.register(method.name, method)


def get_method(name: str) -> Method:
    """The registered method `name`; an unknown name is a `UserError` listing the known ones."""
    return METHODS.lookup(name)


register_method(Method("at", pgd_ce_adversary, at_loss, uses_awp=False, summary="vanilla PGD adversarial training (Madry et al.)"))
register_method(Method("at-awp", pgd_ce_adversary, at_loss, uses_awp=True, summary="AT with adversarial weight perturbation (Algorithm 2)"))

"""AT (Madry et al.): PGD on the cross-entropy, trained on the cross-entropy of x' (Eq. 1, Eq. 9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awp.attacks import AttackConfig, cross_entropy, pgd
from awp.losses import LossOutput
from awp.methods.base import Method, register_method


def pgd_ce_adversary(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, generator: torch.Generator | None) -> Tensor:
    """Eq. 9 (Algorithm 2 lines 5-10): PGD on the cross-entropy, uniform random start, against the model
    as it is (in train mode during training, like the reference AT code)."""
    return pgd(model, x, y, attack, loss_fn=cross_entropy, generator=generator, train_mode=None)


def at_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
    """Eq. 1: the mean cross-entropy on the adversarial examples, 1/n sum_i CE(f_w(x'_i), y_i)."""
    logits = model(x_adv)  # [B, C]
    return LossOutput(F.cross_entropy(logits, y), logits)


AT = register_method(Method("at", pgd_ce_adversary, at_loss, summary="vanilla PGD adversarial training (Madry et al., Eq. 1)"))

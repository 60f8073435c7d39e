"""Natural (standard) training: the cross-entropy of the clean batch, no attack; the baseline whose small
standard generalization gap the paper contrasts with the robust one (Section 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awp.attacks import AttackConfig
from awp.losses import LossOutput
from awp.methods.base import Method, register_method


def no_adversary(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, generator: torch.Generator | None) -> Tensor:
    """x' = x: natural training attacks nothing (the threat model still sets the per-epoch evaluation)."""
    return x


def natural_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
    """ERM: 1/n sum_i CE(f_w(x_i), y_i); its "adversarial" logits are the clean ones (x' = x)."""
    logits = model(x)
    return LossOutput(F.cross_entropy(logits, y), logits)


NATURAL = register_method(Method("natural", no_adversary, natural_loss, summary="standard training on clean examples (no attack)"))

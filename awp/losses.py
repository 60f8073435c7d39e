"""Method-specific training losses l(f_{w+v}(x'), y) of Eq. 1 / Eq. 7 (AT now; TRADES, MART in D.3 later).

A training loss takes the model (at w or w + v), the natural batch, its adversarial batch and the
labels, and returns the batch-mean loss plus the logits on x' (for the running robust accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LossOutput:
    """`loss`: scalar, the mean over the batch (1/m sum_i of Eq. 10/11); `logits_adv`: [B, C] on x'."""

    loss: Tensor
    logits_adv: Tensor


TrainingLoss = Callable[[nn.Module, Tensor, Tensor, Tensor], LossOutput]


def at_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
    """Vanilla AT (Eq. 1, Madry et al.): mean cross-entropy on the adversarial examples."""
    logits = model(x_adv)  # [B, C]
    return LossOutput(F.cross_entropy(logits, y), logits)

"""The shared pieces of training losses l(f_{w+v}(x'), y) (Eq. 1 / Eq. 7); each method's own loss lives
in its module of `awp.methods`.

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


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-example KL(softmax(logits_p) || softmax(logits_q)) [B], from log-softmaxes on both sides, so it
    stays finite and >= 0 where probabilities underflow to 0 (the TRADES reference's KLDivLoss on a
    softmax target can give NaN there)."""
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = F.log_softmax(logits_q, dim=1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)

"""MART (Wang et al. 2020): x' by PGD on the cross-entropy (Eq. 17), trained on
BCE(f(x'), y) + lambda * KL(f(x) || f(x')) * (1 - f(x)_y) (Eq. 3, Appendix D.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awp.attacks import AttackConfig, cross_entropy, pgd, small_start
from awp.losses import LossOutput, kl_divergence
from awp.methods.base import Method, Param, number, register_method
from awp.methods.trades import AWP_DEFAULTS


def mart_adversary(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, generator: torch.Generator | None) -> Tensor:
    """Eq. 17: PGD on the cross-entropy from x + 0.001 * N(0, I), in eval mode, as the MART reference
    (`mart.py`). `attack.random_start` is not used: the small Gaussian start is part of the method."""
    return pgd(model, x, y, attack, loss_fn=cross_entropy, delta0=small_start(x, generator), train_mode=False)


def boosted_ce(logits_adv: Tensor, y: Tensor) -> Tensor:
    """Eq. 3's BCE per example: -log p'_y - log(1 - max_{k != y} p'_k), with log(1 - p'_k) computed exactly
    as logsumexp_{j != k} z_j - logsumexp_j z_j (the reference's log(1.0001 - p' + 1e-12) is its
    approximation)."""
    log_p = F.log_softmax(logits_adv, dim=1)
    others = log_p.scatter(1, y[:, None], float("-inf"))
    k = others.argmax(dim=1, keepdim=True)  # the most likely wrong class
    log_rest = log_p.scatter(1, k, float("-inf")).logsumexp(dim=1)  # log(1 - p'_k)
    return -log_p.gather(1, y[:, None]).squeeze(1) - log_rest


def mart_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, lambda_: float) -> LossOutput:
    """Eq. 3: 1/n sum_i BCE(f_w(x'_i), y_i) + lambda * KL(f_w(x_i) || f_w(x'_i)) * (1 - [f_w(x_i)]_{y_i})."""
    logits_nat = model(x)
    logits_adv = model(x_adv)
    p_y = F.softmax(logits_nat, dim=1).gather(1, y[:, None]).squeeze(1)
    robust = kl_divergence(logits_nat, logits_adv) * (1 - p_y)
    return LossOutput((boosted_ce(logits_adv, y) + lambda_ * robust).mean(), logits_adv)


LAMBDA = Param("lambda", 6.0, number(), "a finite number >= 0",  # MART paper / reference code: beta = 6 for ResNet-18
               "weight lambda of the misclassification-aware KL term (Eq. 3)")
# MART-AWP: the reference released no training code; Section 5.1 sets gamma = 5e-3 for MART-AWP, and the
# warm-up follows TRADES-AWP's reference (10 epochs).
MART = register_method(Method("mart", mart_adversary, mart_loss, params=(LAMBDA,), defaults=AWP_DEFAULTS,
                              summary="MART: BCE + lambda * KL * (1 - f(x)_y) (Wang et al., Eq. 3)"))

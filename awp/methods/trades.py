"""TRADES (Zhang et al. 2019): x' maximizes KL(f(x) || f(x')) (Eq. 16) and the model is trained on
CE(f(x), y) + beta * KL(f(x) || f(x')) (Eq. 2); with AWP the weight ascent of Eq. 10 climbs this same
objective (Appendix D.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awp.attacks import AttackConfig, kl_from_natural, model_mode, pgd, small_start
from awp.losses import LossOutput, kl_divergence
from awp.methods.base import Method, Param, number, register_method


def trades_adversary(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, generator: torch.Generator | None) -> Tensor:
    """Eq. 16: PGD on KL(f(x) || f(x')) from x + 0.001 * N(0, I), in eval mode, as the TRADES reference
    (`trades.py`, `model.eval()` while x' is crafted). `attack.random_start` is not used: the small
    Gaussian start is part of the method."""
    with model_mode(model, False), torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)  # f(x), fixed while x' moves
    return pgd(model, x, p_nat, attack, loss_fn=kl_from_natural, delta0=small_start(x, generator), train_mode=False)


def trades_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, beta: float) -> LossOutput:
    """Eq. 2: 1/n sum_i CE(f_w(x_i), y_i) + beta * KL(f_w(x_i) || f_w(x'_i)), gradients through both sides."""
    logits_nat = model(x)
    logits_adv = model(x_adv)
    kl = kl_divergence(logits_nat, logits_adv).mean()  # the reference's KLDivLoss(reduction="batchmean")
    return LossOutput(F.cross_entropy(logits_nat, y) + beta * kl, logits_adv)


BETA = Param("beta", 6.0, number(), "a finite number >= 0",  # TRADES paper / reference code: beta = 6 (1/lambda)
             "weight beta of the KL term (Eq. 2)")
# TRADES-AWP as the reference (csdongxian/AWP TRADES_AWP/train_trades_cifar10.py: --awp-gamma 0.005,
# --awp-warmup 10) and Section 5.1 (gamma = 5e-3 for every method but AT on PreAct ResNet-18).
AWP_DEFAULTS = {"gamma": 5e-3, "awp_warmup": 10}
TRADES = register_method(Method("trades", trades_adversary, trades_loss, params=(BETA,), defaults=AWP_DEFAULTS,
                                summary="TRADES: CE + beta * KL(f(x) || f(x')) (Zhang et al., Eq. 2)"))

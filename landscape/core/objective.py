"""The adversarial loss rho around one checkpoint's weights w, as the sharpness measures see it: its
value at w + nu with PGD re-run against w + nu (Eq. 5, Alg. 1 lines 9-15), its gradient in the
weights at w + nu (x' made against w + nu: Danskin's theorem, as Eq. 10 uses it), and its Hessian.

Perturbations nu are keyed by parameter name and cover the measure's scope (`landscape.core.scope`)
only: every other parameter stays at w bit for bit. The model is moved in place and put back bitwise
from one saved copy of w (`awp.weights.offset`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from awp.attacks import AttackConfig, model_mode, pgd
from awp.weights import offset, snapshot
from landscape.core import engine
from landscape.core.curvature import ParamsOperator

Params = dict[str, Tensor]


@dataclass
class Objective:
    """rho around w for the parameters `names` (None: every parameter): the model (eval mode, on its
    device), the fixed probe batches with their random starts (common random numbers at every point),
    the attack, and the BN mode of each point (`--bn`; the measures' gradients and Hessians keep w's
    statistics). What the measures and the directions found from the loss at w (hessian, awp) share."""

    model: nn.Module
    batches: Sequence[engine.ProbeBatch]
    attack: AttackConfig
    names: list[str] | None = None
    bn: str = "eval"
    bn_inputs: Sequence[Tensor] = ()
    autocast: Callable[[], ContextManager[None]] | None = None  # --precision around every value (a fresh context each time)
    params: dict[str, nn.Parameter] = field(init=False)
    w: Params = field(init=False)  # the centre, all parameters, bitwise

    def __post_init__(self) -> None:
        self.params = dict(self.model.named_parameters())
        self.names = list(self.params) if self.names is None else list(self.names)
        self.w = snapshot(self.params)
        self.device = engine.model_device(self.model)
        self.n = sum(len(b.y) for b in self.batches)
        self._rho0: dict[str, float] | None = None  # rho(w), asked for by every measure: computed once
        self._examples: list[tuple[Tensor, Tensor]] | None = None  # x' at w, made once

    @property
    def centre(self) -> Params:
        """w of the scope's parameters."""
        return {n: self.w[n] for n in self.names}

    def zeros(self) -> Params:
        return {n: torch.zeros_like(self.w[n]) for n in self.names}

    def rho(self, nu: Mapping[str, Tensor] | None = None) -> dict[str, float]:
        """Eq. 5 at w + nu: the adversarial loss (and friends, with standard errors over examples) with
        PGD run against w + nu from the fixed starts; w itself for nu None (computed once)."""
        if nu is None and self._rho0 is not None:
            return self._rho0
        terms = [(nu, 1.0)] if nu is not None else []
        ctx = self.autocast() if self.autocast is not None else contextlib.nullcontext()
        with ctx:
            out = engine.evaluate_at(self.model, terms, self.batches, self.attack, base=self.w, bn=self.bn,
                                     bn_inputs=self.bn_inputs).reduce()
        if nu is None:
            self._rho0 = out
        return out

    def bn_mode(self) -> ContextManager[None]:
        """The BN statistics of the current point (`--bn`): w's own, or re-estimated there."""
        return engine.bn_mode(self.bn)(self.model, self.bn_inputs)

    def examples(self, nu: Mapping[str, Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
        """(x', y) per batch with x' by PGD against w + nu (Alg. 1 lines 9-14) under the BN mode, on the
        model's device; at w (nu None) made once."""
        if nu is None and self._examples is not None:
            return self._examples
        with offset(self.params, [(nu, 1.0)] if nu else [], self.w), self.bn_mode():
            adv = engine.adversarial_examples(self.model, self.batches, self.attack)
        out = [(x.to(self.device), b.y.to(self.device)) for x, b in zip(adv, self.batches)]
        if nu is None:
            self._examples = out
        return out

    def grad(self, nu: Mapping[str, Tensor] | None = None) -> Params:
        """The gradient in the scope's weights of the mean adversarial cross-entropy at w + nu, x' made by
        PGD against w + nu and then held fixed (Danskin; Eq. 10's g). BN in eval mode with w's statistics."""
        tensors = [self.params[n] for n in self.names]
        total = [torch.zeros_like(t) for t in tensors]
        with offset(self.params, [(nu, 1.0)] if nu else [], self.w), model_mode(self.model, train=False):
            for b in self.batches:
                x, y = b.x.to(self.device), b.y.to(self.device)
                x_adv = pgd(self.model, x, y, self.attack, delta0=b.delta0.to(self.device)) if engine.attack_active(self.attack) else x
                with engine.grads_on(tensors), torch.enable_grad():
                    loss = F.cross_entropy(self.model(x_adv), y, reduction="sum")
                    g = torch.autograd.grad(loss, tensors, allow_unused=True)
                for acc, gi in zip(total, g):
                    if gi is not None:
                        acc.add_(gi.detach())
        return {n: t / self.n for n, t in zip(self.names, total)}


class ReattackedHessian(ParamsOperator):
    """H v of the robust loss itself, x' re-made at every weight point: central differences of the
    re-attacked gradient, (g(w + t v) - g(w - t v)) / (2 t), t = h ||w|| / ||v|| over the scope. The
    same interface as `landscape.core.curvature.HessianOperator` (a symmetric H only approximately:
    PGD from fixed starts is piecewise smooth in w), for the trace and eigenvalue estimators."""

    def __init__(self, objective: Objective, h: float = 1e-3) -> None:
        self.objective, self.h = objective, h
        self._set_params(list(objective.names), objective.centre)
        self._w_norm = float(torch.sqrt(sum(t.double().square().sum() for t in self.params.values())))

    def loss(self) -> float:
        return self.objective.rho()["adv_loss"]

    def matvec(self, v: Mapping[str, Tensor]) -> Params:
        v_norm = float(torch.sqrt(sum(t.double().square().sum() for t in v.values())))
        if v_norm == 0.0:
            return {n: torch.zeros_like(self.params[n]) for n in self.names}
        t = self.h * self._w_norm / v_norm
        plus = self.objective.grad({n: t * v[n] for n in self.names})
        minus = self.objective.grad({n: -t * v[n] for n in self.names})
        return {n: (plus[n] - minus[n]) / (2 * t) for n in self.names}

"""Training methods by name: how x' is crafted (Eq. 9 / 16 / 17), which loss trains (Eq. 1 / D.3), and
the hyperparameters the method declares. AWP (Algorithm 2) is not a method but a switch of every run
(`TrainConfig.use_awp`); "at-awp" is the label of AT with AWP on. The TRADES/MART/RST issue only adds entries."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from awp.attacks import AttackConfig, cross_entropy, pgd
from awp.errors import UserError
from awp.registry import Registry
from awp.losses import TrainingLoss, at_loss

# (model, x, y, attack, generator) -> x' [B, C, H, W] in [0, 1]; runs in the model's current mode.
Adversary = Callable[[nn.Module, Tensor, Tensor, AttackConfig, "torch.Generator | None"], Tensor]


def pgd_ce_adversary(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, generator: torch.Generator | None) -> Tensor:
    """Eq. 9 (Algorithm 2 lines 5-10): PGD on the cross-entropy, random start, against the model as it
    is (in train mode during training, like the reference AT code)."""
    return pgd(model, x, y, attack, loss_fn=cross_entropy, generator=generator, train_mode=None)


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a method (a key of `method_params`): its default, declared with a comment citing
    its source (e.g. TRADES' beta = 6, Eq. 2), how a TOML/JSON value is read, and what is accepted, for errors."""

    name: str
    default: Any
    parse: Callable[[Any], Any]  # a TOML/JSON value -> the plain JSON value used and stored; ValueError or TypeError if not accepted
    accepts: str  # e.g. "a finite number >= 0"
    help: str


@dataclass(frozen=True)
class Method:
    """One training method: its adversary, its training loss and the parameters it declares, which reach
    the loss as keyword arguments (the weights of the D.3 losses; the adversaries of Eq. 9/16/17 take none)."""

    name: str
    adversary: Adversary
    loss: TrainingLoss  # called as loss(model, x, x_adv, y, **params)
    summary: str
    params: tuple[Param, ...] = ()

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared parameter, `given`'s values parsed and the others at their defaults; an unknown
        name or a value not accepted is a one-line `UserError`."""
        accepted = [p.name for p in self.params]
        for name in given:
            if name not in accepted:
                raise UserError(f"method {self.name!r} has no parameter {name!r}; accepted: {', '.join(accepted) or 'none'}")
        out = {}
        for p in self.params:
            if p.name not in given:
                out[p.name] = p.default
                continue
            try:
                out[p.name] = p.parse(given[p.name])
            except (TypeError, ValueError):
                raise UserError(f"parameter {p.name!r} of method {self.name!r} must be {p.accepts}, got {given[p.name]!r}") from None
        return out

    def bind(self, params: Mapping[str, Any]) -> TrainingLoss:
        """The training loss with a run's parameter values (defaults for those not given) filled in."""
        return functools.partial(self.loss, **self.resolve_params(params))


METHODS: Registry[Method] = Registry("method")

# "NAME-awp" is NAME with AWP on: the label of such runs (file names, legends) and, as before AWP became a
# switch, a --method spelling; run files written then record method = "at-awp".
AWP_SUFFIX = "-awp"


def register_method(method: Method) -> Method:
    """File `method` under its name; a name ending in "-awp" (the AWP label), a parameter name that is not
    a keyword argument or is declared twice, or a default its own parser changes is a programming error (ValueError)."""
    if method.name.endswith(AWP_SUFFIX):
        raise ValueError(f"method name {method.name!r} ends in {AWP_SUFFIX!r}, which labels AWP runs")
    names = [p.name for p in method.params]
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        raise ValueError(f"method {method.name!r}: parameter names must be distinct identifiers, got {names}")
    for p in method.params:
        if p.parse(p.default) != p.default:
            raise ValueError(f"method {method.name!r}: the default of {p.name!r} is not {p.accepts}")
    return METHODS.register(method.name, method)


def method_label(name: str, awp: bool) -> str:
    """What names a run: 'at' for AT, 'at-awp' for AT with AWP on."""
    return name + AWP_SUFFIX if awp else name


def method_labels() -> tuple[str, ...]:
    """Every accepted --method spelling, each method followed by its AWP label: at, at-awp, ..."""
    return tuple(label for name in METHODS for label in (name, method_label(name, True)))


def split_label(label: str) -> tuple[str, bool]:
    """'at-awp' -> ('at', True), 'at' -> ('at', False); anything else is a one-line `UserError` listing
    the accepted spellings."""
    if isinstance(label, str) and label in METHODS:
        return label, False
    if isinstance(label, str) and label.endswith(AWP_SUFFIX) and label[: -len(AWP_SUFFIX)] in METHODS:
        return label[: -len(AWP_SUFFIX)], True
    raise UserError(f"unknown method {label!r}; accepted: {', '.join(method_labels())}")


def get_method(name: str) -> Method:
    """The registered method `name` or, for a label 'NAME-awp', NAME's (AWP is the config's switch); an
    unknown name is a one-line `UserError` listing the accepted spellings."""
    return METHODS[split_label(name)[0]]


register_method(Method("at", pgd_ce_adversary, at_loss, summary="vanilla PGD adversarial training (Madry et al., Eq. 1)"))

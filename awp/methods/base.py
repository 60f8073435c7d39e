"""What a training method is: how x' is crafted (Eq. 9 / 16 / 17), which loss trains (Eq. 1 / 2 / 3 / 4),
the hyperparameters it declares, which epoch it reports and any data it prepares. AWP (Algorithm 2) is
not a method but a switch of every run (`TrainConfig.use_awp`); "at-awp" is the label of AT with AWP on.
Each method lives in its own module of `awp.methods` and registers itself here."""

from __future__ import annotations

import functools
import inspect
import keyword
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from awp.attacks import AttackConfig
from awp.errors import UserError
from awp.losses import TrainingLoss
from awp.registry import Registry

# (model, x, y, attack, generator, **params) -> x' [B, C, H, W] in [0, 1]. It sets the model's mode
# itself if the method's reference code does (TRADES and MART attack in eval mode, AT in train mode).
Adversary = Callable[..., Tensor]
# (cfg, data, device, **params) -> data: work a method does once before training (RST's pseudo-labels).
Prepare = Callable[..., Any]


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a method (a key of `method_params`, flag --METHOD-NAME): its default, declared
    with a comment citing its source (e.g. TRADES' beta = 6, Eq. 2), how a TOML/JSON/flag value is read,
    and what is accepted, for errors."""

    name: str
    default: Any
    parse: Callable[[Any], Any]  # a TOML/JSON/flag value -> the plain JSON value used and stored; ValueError or TypeError if not accepted
    accepts: str  # e.g. "a finite number >= 0"
    help: str

    @property
    def kwarg(self) -> str:
        """The keyword argument it reaches functions as ('lambda' is a keyword: 'lambda_')."""
        return self.name + "_" if keyword.iskeyword(self.name) else self.name


def number(lo: float = 0.0, hi: float = math.inf, *, open_hi: bool = False) -> Callable[[Any], float]:
    """A parser of finite numbers in [lo, hi] ([lo, hi) with `open_hi`), from numbers or flag text."""

    def parse(v: Any) -> float:
        if isinstance(v, bool):
            raise TypeError(v)
        x = float(v)
        if not (math.isfinite(x) and lo <= x and (x < hi if open_hi else x <= hi)):
            raise ValueError(v)
        return x

    return parse


def integer(lo: int = 0) -> Callable[[Any], int]:
    """A parser of integers >= lo, from integers or flag text."""

    def parse(v: Any) -> int:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise TypeError(v)
        x = int(v)
        if x < lo:
            raise ValueError(v)
        return x

    return parse


def choice(*names: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in names:
            raise ValueError(v)
        return v

    return parse


def text(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(v)
    return v


@dataclass(frozen=True)
class Bound:
    """A method with a run's parameter values filled in: what one training step calls."""

    adversary: Callable[[nn.Module, Tensor, Tensor, AttackConfig, "torch.Generator | None"], Tensor]
    loss: TrainingLoss  # loss(model, x, x_adv, y) -> LossOutput


@functools.lru_cache(maxsize=None)
def _accepts(fn: Callable[..., Any] | None) -> frozenset[str]:
    """The keyword-only parameters `fn` declares (cached: `bind` runs at every training step)."""
    if fn is None:
        return set()
    return frozenset(p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY)


def _given(fn: Callable[..., Any], values: Mapping[str, Any]) -> Callable[..., Any]:
    """`fn` with the keyword-only parameters it declares taken from `values`."""
    own = {k: values[k] for k in _accepts(fn) if k in values}
    return (lambda *a: fn(*a, **own)) if own else fn


@dataclass(frozen=True)
class Method:
    """One training method. Its declared `params` reach `adversary`, `loss` and `prepare` as keyword-only
    arguments, each function taking those it names. `selects` is the epoch the run reports as its model:
    "last", or "best_val" (early stopping on the validation split, AT-ES); `defaults` are options the
    method sets unless the user does (AT-ES: a validation split)."""

    name: str
    adversary: Adversary
    loss: TrainingLoss  # called as loss(model, x, x_adv, y, **params)
    summary: str
    params: tuple[Param, ...] = ()
    selects: str = "last"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    prepare: Prepare | None = None  # prepare(cfg, data, device, **params) -> data, before the first epoch
    check: Callable[..., None] | None = None  # check(cfg, info, **params): its inputs, before anything runs

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

    def kwargs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The run's parameter values (defaults for those not given) under their keyword names."""
        values = self.resolve_params(params)
        return {p.kwarg: values[p.name] for p in self.params}

    def bind(self, params: Mapping[str, Any]) -> Bound:
        """The adversary and the training loss with a run's parameter values filled in."""
        kw = self.kwargs(params)
        return Bound(_given(self.adversary, kw), _given(self.loss, kw))

    def checked(self, cfg: Any, info: Any) -> None:
        """The method's own inputs are usable (a one-line `UserError` if not), checked without training."""
        if self.check is not None:
            _given(self.check, self.kwargs(cfg.method_params))(cfg, info)

    def prepared(self, cfg: Any, data: Any, device: torch.device) -> Any:
        """The run's data after the method's `prepare` (unchanged for methods without one)."""
        if self.prepare is None:
            return data
        return _given(self.prepare, self.kwargs(cfg.method_params))(cfg, data, device)


METHODS: Registry[Method] = Registry("method")

# "NAME-awp" is NAME with AWP on: the label of such runs (file names, legends) and, as before AWP became a
# switch, a --method spelling; run files written then record method = "at-awp".
AWP_SUFFIX = "-awp"
SELECTIONS = ("last", "best_val")


def register_method(method: Method) -> Method:
    """File `method` under its name. Programming errors (ValueError): a name ending in "-awp" (the AWP
    label); parameter names not distinct identifiers; a parameter no function takes; a default its own
    parser changes; an unknown `selects`."""
    if method.name.endswith(AWP_SUFFIX):
        raise ValueError(f"method name {method.name!r} ends in {AWP_SUFFIX!r}, which labels AWP runs")
    names = [p.name for p in method.params]
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        raise ValueError(f"method {method.name!r}: parameter names must be distinct identifiers, got {names}")
    taken = _accepts(method.adversary) | _accepts(method.loss) | _accepts(method.prepare) | _accepts(method.check)
    for p in method.params:
        if p.kwarg not in taken:
            raise ValueError(f"method {method.name!r}: no function takes parameter {p.name!r} (as keyword-only {p.kwarg!r})")
        if p.parse(p.default) != p.default:
            raise ValueError(f"method {method.name!r}: the default of {p.name!r} is not {p.accepts}")
    if method.selects not in SELECTIONS:
        raise ValueError(f"method {method.name!r}: selects must be one of {SELECTIONS}, got {method.selects!r}")
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


def param_flag(method: str, param: str) -> str:
    """The command-line spelling of a method's parameter: ('trades', 'beta') -> '--trades-beta'."""
    return f"--{method}-{param}".replace("_", "-")


def method_flag_params() -> dict[str, tuple[str, Param]]:
    """Every method's parameters as command-line options: {python name: (method, param)}, e.g.
    'trades_beta': ('trades', BETA) for --trades-beta; the CLI declares one option per entry."""
    return {param_flag(m, p.name)[2:].replace("-", "_"): (m, p) for m, method in METHODS.items() for p in method.params}


def merge_method_flags(method: str, given: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` (from --method-params / a config file) with the --METHOD-PARAM flags of `given`
    ({method: {param: value}}) over them; a flag of another method is a one-line `UserError`."""
    out = dict(params)
    for owner, values in given.items():
        if not values:
            continue
        if owner != method:
            flags = ", ".join(param_flag(owner, k) for k in values)
            raise UserError(f"{flags} is an option of method {owner!r}, but this run's method is {method!r}; "
                            f"its options: {', '.join(param_flag(method, p.name) for p in METHODS[method].params) or 'none'}")
        out.update(values)
    return out

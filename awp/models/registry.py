"""Model registry: builders file themselves by name; `create_model` adds input normalization.

Every model returned by `create_model` takes pixels in [0, 1]; a registry model's first layer
normalizes, so attacks and weight perturbations never have to know about dataset statistics.
Third-party packages add builders through the entry-point group `awp_landscape.models`
(name = model name, value = a builder like ours); `MODULE:CALLABLE` and `robustbench:NAME`
build models from outside the registry (`awp.models.external`), which normalize themselves.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import Any

import torch
from torch import nn

from awp.config import check_allocation
from awp.errors import UserError
from awp.models.external import (
    EXTERNAL_FORMS, ROBUSTBENCH_PREFIX, build_from_spec, build_robustbench, error_text, is_import_spec,
    options_text,
)
from awp.registry import Registry

ModelBuilder = Callable[..., nn.Module]

ENTRY_POINT_GROUP = "awp_landscape.models"


def _describe(ep: importlib.metadata.EntryPoint) -> str:
    """'entry point NAME = VALUE (group G, from DIST VERSION)', for one-line errors."""
    dist = getattr(ep, "dist", None)
    origin = f", from {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP}{origin})"


class ModelRegistry(Registry[ModelBuilder]):
    """The built-in builders plus those of installed packages' entry points, found when a name is not
    built in and when the names are listed, and imported only when looked up (a broken one fails alone)."""

    def plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The `awp_landscape.models` entry points by name; a name taken twice is a one-line UserError."""
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._entries:
                raise UserError(f"{_describe(ep)} takes the name of a built-in model; the package must rename it")
            if ep.name in found and found[ep.name].value != ep.value:
                raise UserError(f"{_describe(ep)} and {_describe(found[ep.name])} claim one model name")
            found[ep.name] = ep
        return found

    def _load(self, ep: importlib.metadata.EntryPoint) -> ModelBuilder:
        try:
            builder = ep.load()
        except Exception as e:  # a third-party package's import failed, whatever it raised
            raise UserError(f"{_describe(ep)} does not load: {error_text(e)}") from None
        if not callable(builder):
            raise UserError(f"{_describe(ep)} is a {type(builder).__name__}, not a model builder")
        return builder

    def lookup(self, name: str) -> ModelBuilder:
        """The builder `name`, built in or from an entry point; unknown: one line listing the accepted ones."""
        try:
            return self[name]
        except KeyError:
            raise UserError(f"unknown {self.what} {name!r}; accepted: {', '.join(self.names())}, {EXTERNAL_FORMS}") from None

    def names(self) -> tuple[str, ...]:
        return (*self._entries, *sorted(self.plugins()))

    def choices(self, enum_name: str) -> type[Enum]:
        return Enum(enum_name, {n: n for n in self.names()}, type=str)  # type: ignore[return-value]

    def __getitem__(self, name: str) -> ModelBuilder:
        if name in self._entries:
            return self._entries[name]
        plugins = self.plugins()
        if name in plugins:
            return self._load(plugins[name])
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.plugins()  # without importing a plugin

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


MODELS = ModelRegistry("model")


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """File `fn` under its function name (a name taken twice is a ValueError, as in every registry)."""
    return MODELS.register(fn.__name__, fn)


def list_models() -> list[str]:
    """Names of every registered model (entry points included), sorted."""
    return sorted(MODELS)


def reject_unknown_kwargs(arch: str, kwargs: dict[str, Any]) -> None:
    """Fail loudly on options a builder does not take, so a typo is never silently ignored."""
    if kwargs:
        raise UserError(f"model {arch!r} got unknown option(s): {', '.join(sorted(kwargs))}")


def _channel_stats(
    values: Sequence[float] | None, default: float, in_channels: int, what: str
) -> torch.Tensor:
    """Per-channel statistic as a [1, C, 1, 1] tensor; one value is broadcast to every channel."""
    if values is None:
        values = [default] * in_channels
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a list of numbers, got {values!r}") from None
    if len(vals) == 1:
        vals = vals * in_channels
    if len(vals) != in_channels:
        raise UserError(f"{what} has {len(vals)} values but the model has {in_channels} input channel(s)")
    # Always on the CPU, also under `with torch.device("meta")`: the std check below reads the values.
    return torch.tensor(vals, dtype=torch.float32, device="cpu").view(1, in_channels, 1, 1)


class Normalize(nn.Module):
    """Per-channel `(x - mean) / std`; buffers, so they move with `.to()` and live in the state dict."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        if in_channels is None:
            lengths = [len(v) for v in (mean, std) if v is not None]
            in_channels = max(lengths) if lengths else 1
        mean_t = _channel_stats(mean, 0.0, in_channels, "mean")
        std_t = _channel_stats(std, 1.0, in_channels, "std")
        if bool((std_t <= 0).any()):
            raise UserError(f"std must be positive, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Module):
    """`net(normalize(x))`: keeps the state-dict keys as `normalize.*` and `net.*`."""

    def __init__(self, normalize: Normalize, net: nn.Module, arch: str = "") -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build registered model `name` behind a `Normalize(mean, std)` layer; inputs are pixels in [0, 1].
    `MODULE:CALLABLE` is called with `kwargs` only, `robustbench:NAME` loads a zoo model (kwargs dataset,
    threat_model, model_dir): both take pixels in [0, 1] and normalize themselves, so num_classes,
    in_channels, mean and std are not applied (`external.check_model_output` checks a model fits the data)."""
    if isinstance(name, str) and name.startswith(ROBUSTBENCH_PREFIX):
        return build_robustbench(name, kwargs)
    if isinstance(name, str) and is_import_spec(name):
        return build_from_spec(name, kwargs)
    builder = MODELS.lookup(name)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if in_channels < 1:
        raise UserError(f"in_channels must be at least 1, got {in_channels}")
    normalize = Normalize(mean, std, in_channels=in_channels)
    with torch.device("meta"):  # shapes only, no memory and no random numbers drawn: is it too large?
        skeleton = _build(builder, name, num_classes, in_channels, kwargs)
    check_model_size(skeleton, name, kwargs)
    net = _build(builder, name, num_classes, in_channels, kwargs)
    return NormalizedModel(normalize, net, arch=name)


def _build(builder: ModelBuilder, name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    """Call a builder; options of the wrong type or value (a TypeError deep in torch) become one line."""
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except UserError as e:  # the builder's own check: say which option string it came from
        raise UserError(f"--arch-kwargs {options_text(kwargs)}: {e}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"model {name!r} cannot be built with --arch-kwargs {options_text(kwargs)}: {msg}") from None


def check_model_size(model: nn.Module, name: str, kwargs: dict[str, Any], fraction: float = 0.5) -> None:
    """Refuse a model whose parameters and buffers alone take more than `fraction` of physical memory."""
    count = sum(t.numel() for t in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    check_allocation(nbytes, f"model {name} with {options_text(kwargs)} ({count:,} parameters)", fraction)

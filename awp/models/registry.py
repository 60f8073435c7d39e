"""Model registry: builders file themselves by name; `create_model` adds input normalization.

Every model returned by `create_model` takes pixels in [0, 1]; its first layer normalizes,
so attacks and weight perturbations never have to know about dataset statistics.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from awp.config import check_allocation
from awp.errors import UserError
from awp.registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """File `fn` under its function name (a name taken twice is a ValueError, as in every registry)."""
    return MODELS.register(fn.__name__, fn)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
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
    """Build registered model `name` behind a `Normalize(mean, std)` layer; inputs are pixels in [0, 1]."""
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


def _options(kwargs: dict[str, Any]) -> str:
    """The model options as the user wrote them (--arch-kwargs JSON)."""
    try:
        return json.dumps(kwargs, sort_keys=True)
    except (TypeError, ValueError):
        return repr(kwargs)


def _build(builder: ModelBuilder, name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    """Call a builder; options of the wrong type or value (a TypeError deep in torch) become one line."""
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except UserError as e:  # the builder's own check: say which option string it came from
        raise UserError(f"--arch-kwargs {_options(kwargs)}: {e}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"model {name!r} cannot be built with --arch-kwargs {_options(kwargs)}: {msg}") from None


def check_model_size(model: nn.Module, name: str, kwargs: dict[str, Any], fraction: float = 0.5) -> None:
    """Refuse a model whose parameters and buffers alone take more than `fraction` of physical memory."""
    count = sum(t.numel() for t in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    check_allocation(nbytes, f"model {name} with {_options(kwargs)} ({count:,} parameters)", fraction)

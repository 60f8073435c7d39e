"""A tiny CNN that trains on 8x8 digits in seconds on a CPU; the `_nobn` variant is a pure ReLU net."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from awp.errors import UserError
from awp.models.registry import register_model, reject_unknown_kwargs


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    """conv3x3 -> (BN) -> ReLU; the conv keeps its bias only when there is no BN to absorb it."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU())
    return layers


def _small_cnn(
    arch: str, num_classes: int, in_channels: int, widths: Sequence[int], batch_norm: bool
) -> nn.Sequential:
    """Three conv blocks, a 2x2 max-pool after the second, global average pool, one Linear."""
    ok = isinstance(widths, (list, tuple)) and len(widths) == 3 and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    if not ok:  # int() would truncate 1.5 to 1 and read "abc" as three letters
        raise UserError(f"model {arch!r} needs widths of three positive ints like [16, 32, 32], got {widths!r}")
    w1, w2, w3 = widths
    return nn.Sequential(
        *_conv_block(in_channels, w1, batch_norm),
        *_conv_block(w1, w2, batch_norm),
        nn.MaxPool2d(2, ceil_mode=True),
        *_conv_block(w2, w3, batch_norm),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(w3, num_classes),
    )


@register_model
def smallcnn(
    num_classes: int, in_channels: int, widths: Sequence[int] = (16, 32, 32), **kwargs: Any
) -> nn.Module:
    """Small CNN with BatchNorm: the fast model for digits and for tests."""
    reject_unknown_kwargs("smallcnn", kwargs)
    return _small_cnn("smallcnn", num_classes, in_channels, widths, batch_norm=True)


@register_model
def smallcnn_nobn(
    num_classes: int, in_channels: int, widths: Sequence[int] = (16, 32, 32), **kwargs: Any
) -> nn.Module:
    """Same as `smallcnn` without BatchNorm (biased convs): a pure ReLU network for scale-invariance checks."""
    reject_unknown_kwargs("smallcnn_nobn", kwargs)
    return _small_cnn("smallcnn_nobn", num_classes, in_channels, widths, batch_norm=False)

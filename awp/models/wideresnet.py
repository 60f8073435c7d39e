"""WideResNet (Zagoruyko & Komodakis 2016) as in the Madry / TRADES codebases: WRN-34-10 and WRN-28-10."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from awp.errors import UserError
from awp.models.registry import register_model, reject_unknown_kwargs


class WideBlock(nn.Module):
    """Pre-activation basic block; the 1x1 shortcut sees the pre-activated input when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    """Stem conv3x3 (16), three stages of `n` wide blocks, final BN-ReLU, adaptive average pool, Linear."""

    def __init__(
        self, depth: int, widen: int, num_classes: int, in_channels: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        c_in = widths[0]
        stages: list[nn.Module] = []
        for width, stride in zip(widths[1:], (1, 2, 2)):
            blocks: list[nn.Module] = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(WideBlock(c_in, width, s, drop_rate))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convs, unit BN, zero Linear bias: the reference WRN initialisation."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def _wideresnet(
    arch: str,
    depth: int,
    widen: int,
    num_classes: int,
    in_channels: int,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """Shared builder: checks the options, then builds WRN-`depth`-`widen`."""
    reject_unknown_kwargs(arch, kwargs)
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UserError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
    if widen < 1:
        raise UserError(f"WideResNet widen factor must be at least 1, got {widen}")
    if not 0.0 <= drop_rate < 1.0:
        raise UserError(f"drop_rate must be in [0, 1), got {drop_rate}")
    return WideResNet(depth, widen, num_classes, in_channels, drop_rate)


@register_model
def wrn34_10(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """WRN-34-10, dropout 0 by default: the AWP paper's main CIFAR model."""
    return _wideresnet("wrn34_10", 34, 10, num_classes, in_channels, **kwargs)


@register_model
def wrn28_10(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """WRN-28-10, dropout 0 by default."""
    return _wideresnet("wrn28_10", 28, 10, num_classes, in_channels, **kwargs)

"""Pre-activation ResNet-18 (He et al. 2016), the CIFAR backbone of Rice et al. 2020 and the AWP paper."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from awp.models.registry import register_model, reject_unknown_kwargs


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; a 1x1 projection of the pre-activated input when the shape changes."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """Stem conv3x3, four stages of PreActBlocks, final BN-ReLU, adaptive average pool, Linear."""

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        c_in = widths[0]
        stages: list[nn.Module] = []
        for i, (width, n) in enumerate(zip(widths, num_blocks)):
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(c_in, width, s))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))


@register_model
def preactresnet18(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """PreActResNet-18: widths 64-128-256-512, [2, 2, 2, 2] blocks."""
    reject_unknown_kwargs("preactresnet18", kwargs)
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)

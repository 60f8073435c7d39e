"""VGG-19 with BatchNorm, CIFAR style (one Linear on 512 features), safe for inputs as small as 8x8."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from awp.models.registry import register_model, reject_unknown_kwargs

# Output widths of the 16 convs; "M" is a 2x2 max-pool.
_VGG19: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip


class SafeMaxPool2d(nn.MaxPool2d):
    """2x2 max-pool that passes a 1x1 map through (small inputs run out of pixels before VGG runs out of pools)."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == 1 and x.shape[-1] == 1:
            return x
        return super().forward(x)


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stacks with safe pools, adaptive average pool, one Linear classifier."""

    def __init__(self, config: tuple[int | str, ...], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in config:
            if v == "M":
                layers.append(SafeMaxPool2d())
            else:
                c_out = int(v)
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(),
                ]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.features(x))
        return self.classifier(torch.flatten(out, 1))


@register_model
def vgg19_bn(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """VGG-19-BN: 16 conv layers, five pools, a single Linear on 512 features."""
    reject_unknown_kwargs("vgg19_bn", kwargs)
    return VGG(_VGG19, num_classes, in_channels)

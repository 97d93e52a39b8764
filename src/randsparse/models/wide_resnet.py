"""Wide ResNets for CIFAR (Zagoruyko & Komodakis, 2016): WRN-d-k with pre-activation blocks.

Depth d = 6n+4 gives three stages of n blocks with 16k, 32k and 64k channels after a 16-channel
stem. `wrn` is the builder with knobs (`depth`, the widening factor `width` = k, `dropout`); the
named variants `wrn16_8`, `wrn22_2`, `wrn28_10`, `wrn40_2` are fixed architectures, so their
names never lie about what they build. Initialisation follows the WRN of the random-pruning
paper's code (``sparselearning/models.py``, after Zagoruyko & Komodakis' PyTorch port; `WRN` in
`models/init.py`): convs Kaiming-normal fan-out, the classifier weight at nn.Linear's default and
its bias zero, BN 1 and 0.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from randsparse.errors import ConfigError, is_real
from randsparse.models.cifar_resnet import ResidualNet, blocks_per_stage, residual_stages
from randsparse.models.init import WRN, InitMode, init_weights_
from randsparse.models.registry import register_model, register_variant


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus a shortcut.

    Where the block changes shape, the shortcut is a 1x1 conv applied to the pre-activated input
    (as in the WRN reference code); elsewhere it is the identity on the raw input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(ResidualNet):
    """WRN for 32x32 (or 28x28) inputs: stem, three stages of pre-activation blocks, BN-ReLU, pool, Linear."""

    def __init__(
        self,
        blocks_per_stage: int,
        width: float = 1.0,
        dropout: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        init_mode: InitMode = "fan_out",
    ) -> None:
        super().__init__(init_mode)
        planes = self.stage_planes(width)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        stages = residual_stages(16, planes, blocks_per_stage, partial(PreActBlock, dropout=dropout))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(planes[-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[-1], num_classes)
        init_weights_(self, WRN, init_mode)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def neck(self, out: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(out))


@register_model("wrn", family="wide_resnet")
def wrn(
    depth: int = 28,
    width: float = 10.0,
    dropout: float = 0.0,
    num_classes: int = 10,
    in_channels: int = 3,
    init_mode: InitMode = "fan_out",
) -> WideResNet:
    """WRN-`depth`-`width`: any depth 6n+4 (n >= 1), widening factor `width` (k), optional dropout."""
    blocks = blocks_per_stage(depth, 4, "Wide ResNet", "10, 16, 22, 28, 40")
    if not is_real(dropout) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a probability in [0, 1) (e.g. 0.3), got {dropout!r}")
    return WideResNet(blocks, width, float(dropout), num_classes, in_channels, init_mode)


for _depth, _k in ((16, 8), (22, 2), (28, 10), (40, 2)):
    _doc = f"WRN-{_depth}-{_k} ({(_depth - 4) // 6} pre-activation blocks per stage); use `wrn` to vary it."
    register_variant(f"wrn{_depth}_{_k}", wrn, _doc, family="wide_resnet", depth=_depth, width=_k, dropout=0.0)

"""The CIFAR ResNet family of He et al. (2016): depth 6n+2, BasicBlocks, a width multiplier.

Stages have 16w, 32w and 64w channels; where a block changes shape the shortcut is a 1x1 conv and
BN (option B), as in the random-pruning paper's code (VITA-Group/Random_Pruning,
``CIFAR/models/cifar_resnet.py``). Initialisation is that code's too (`PAPER_CIFAR_RESNET` in
`models/init.py`): convs and the classifier Kaiming-normal fan-in, biases at PyTorch's default,
BN 1 and 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from randsparse.errors import ConfigError, is_integer
from randsparse.models.init import PAPER_CIFAR_RESNET, InitMode, check_init_mode, init_weights_
from randsparse.models.registry import register_model, register_variant, scaled_channels


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a ReLU between, plus a shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def residual_stages(
    in_planes: int, planes: list[int], blocks_per_stage: int, block: Callable[[int, int, int], nn.Module]
) -> list[nn.Sequential]:
    """One stage of `blocks_per_stage` blocks per entry of `planes`, each built as ``block(in, out, stride)``.

    The first block of every stage after the first halves the resolution (stride 2), as in the
    CIFAR ResNets and Wide ResNets.
    """
    stages = []
    for index, out_planes in enumerate(planes):
        blocks = []
        for position in range(blocks_per_stage):
            stride = 2 if index > 0 and position == 0 else 1
            blocks.append(block(in_planes, out_planes, stride))
            in_planes = out_planes
        stages.append(nn.Sequential(*blocks))
    return stages


def blocks_per_stage(depth: int, extra: int, what: str, examples: str) -> int:
    """n of a three-stage residual net of depth 6n + `extra` (n >= 1).

    Raises `ConfigError` naming `what` (e.g. ``"CIFAR ResNet"``) and valid `examples` otherwise.
    """
    if not is_integer(depth) or depth < 6 + extra or (depth - extra) % 6:
        raise ConfigError(f"{what} depth must be 6n+{extra} with n >= 1 ({examples}, ...), got {depth!r}")
    return (depth - extra) // 6


class ResidualNet(nn.Module):
    """Stem, three residual stages `layer1`-`layer3`, global average pool, Linear `fc`.

    The skeleton the CIFAR ResNet and the Wide ResNet share: each builds its modules and says what
    runs before the stages (`stem`) and between the last stage and the pool (`neck`).
    """

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    pool: nn.AdaptiveAvgPool2d
    fc: nn.Linear

    def __init__(self, init_mode: InitMode) -> None:
        super().__init__()
        check_init_mode(init_mode)

    @staticmethod
    def stage_planes(width: float) -> list[int]:
        """Channels of the three stages: 16, 32 and 64 times the width multiplier."""
        return [scaled_channels(base, width) for base in (16, 32, 64)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def neck(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(self.neck(out)), 1))


class CifarResNet(ResidualNet):
    """ResNet for 32x32 inputs with three stages of `blocks_per_stage` BasicBlocks each."""

    def __init__(
        self,
        blocks_per_stage: int,
        width: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        init_mode: InitMode = "fan_in",
    ) -> None:
        super().__init__(init_mode)
        planes = self.stage_planes(width)
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.layer1, self.layer2, self.layer3 = residual_stages(planes[0], planes, blocks_per_stage, BasicBlock)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[2], num_classes)
        init_weights_(self, PAPER_CIFAR_RESNET, init_mode)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn1(self.conv1(x)))


@register_model("cifar_resnet", family="resnet")
def cifar_resnet(
    depth: int = 20,
    width: float = 1.0,
    num_classes: int = 10,
    in_channels: int = 3,
    init_mode: InitMode = "fan_in",
) -> CifarResNet:
    """CIFAR ResNet of any depth 6n+2 (n >= 1) and width multiplier."""
    blocks = blocks_per_stage(depth, 2, "CIFAR ResNet", "8, 14, 20")
    return CifarResNet(blocks, width, num_classes, in_channels, init_mode)


for _depth in (20, 32, 44, 56, 110):
    _doc = f"CIFAR ResNet-{_depth} ({(_depth - 2) // 6} BasicBlocks per stage), any width."
    register_variant(f"resnet{_depth}", cifar_resnet, _doc, family="resnet", depth=_depth)

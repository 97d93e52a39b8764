"""BN-VGG 11/13/16/19 for 32x32 and 28x28 inputs, with a width multiplier.

The layout of the random-pruning paper's CIFAR code: 3x3 convs without bias, each followed by BN
and ReLU; four 2x2 max pools (the ImageNet VGG's fifth one is dropped, so a 32x32 input ends at
2x2 and a 28x28 one at 1x1); a global average pool; one linear classifier. No large FC head.
Initialisation is that code's too (`PAPER_VGG` in `models/init.py`): convs Kaiming-normal fan-out,
the classifier N(0, 0.01) with zero bias, BN 1 and 0.
"""

from __future__ import annotations

import torch
from torch import nn

from randsparse.errors import ConfigError, is_integer
from randsparse.models.init import PAPER_VGG, InitMode, InitRecipe, check_init_mode, init_weights_
from randsparse.models.registry import register_model, register_variant, scaled_channels

# Output channels of each conv at width 1; "M" is a 2x2 max pool.
VGG_LAYOUTS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


class VGG(nn.Module):
    """Conv-BN-ReLU stack given by `layout` (ints are widths at 1x, "M" a max pool), then pool and Linear.

    `INIT` is the family's initialisation recipe; `init_mode` (default: the recipe's) is the
    Kaiming mode of the convs.
    """

    INIT: InitRecipe = PAPER_VGG

    def __init__(
        self,
        layout: tuple[int | str, ...],
        width: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        init_mode: InitMode | None = None,
    ) -> None:
        super().__init__()
        check_init_mode(init_mode or self.INIT.default_mode)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(item, int)
            out = scaled_channels(item, width)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights_(self, self.INIT, init_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg", family="vgg")
def vgg(
    depth: int = 16,
    width: float = 1.0,
    num_classes: int = 10,
    in_channels: int = 3,
    init_mode: InitMode = "fan_out",
) -> VGG:
    """BN-VGG of depth 11, 13, 16 or 19 and any width multiplier.

    Depth names the ImageNet VGG whose convs it keeps (depth - 3 convs: the three FC layers become
    one classifier), as the CIFAR literature does.
    """
    if not is_integer(depth) or depth not in VGG_LAYOUTS:
        raise ConfigError(f"VGG depth must be one of {', '.join(map(str, VGG_LAYOUTS))}, got {depth!r}")
    return VGG(VGG_LAYOUTS[depth], width, num_classes, in_channels, init_mode)


for _depth in VGG_LAYOUTS:
    _doc = f"BN-VGG-{_depth} for 32x32 / 28x28 inputs (four max pools, global pool, one Linear), any width."
    register_variant(f"vgg{_depth}", vgg, _doc, family="vgg", depth=_depth)

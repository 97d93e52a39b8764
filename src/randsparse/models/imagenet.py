"""torchvision's ImageNet ResNets, freshly initialised (weights are never downloaded).

They keep torchvision's architecture and initialisation (`TORCHVISION` in `models/init.py`):
convs Kaiming-normal fan-out, BN 1 and 0, the classifier at nn.Linear's default. `in_channels`
replaces the stem conv (initialised like the others), `num_classes` the classifier.
``init_mode="fan_in"`` re-initialises the convs fan-in, as the random-pruning paper's ImageNet
code does when run with ``-c fanin`` (its README's Wide ResNet-50 command; the paper preset
``configs/paper/imagenet-wrn50.yaml`` selects it); the classifier keeps nn.Linear's default either
way. No width multiplier: the Wide ResNets are registered under their own names.
"""

from __future__ import annotations

from torch import nn

from randsparse.models.init import TORCHVISION, InitMode, check_init_mode, init_weights_
from randsparse.models.registry import register_model

# The torchvision builders registered here, by their torchvision names. torchvision is imported
# when one is built, not when randsparse is (it costs about a second of start-up).
_TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


def _register(name: str) -> None:
    def builder(num_classes: int = 1000, in_channels: int = 3, init_mode: InitMode = "fan_out") -> nn.Module:
        from torchvision import models

        check_init_mode(init_mode)
        model = getattr(models, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 7, stride=2, padding=3, bias=False)
        return init_weights_(model, TORCHVISION, init_mode)

    builder.__name__ = name
    builder.__doc__ = f"torchvision {name} for ImageNet-sized inputs, random initialisation."
    register_model(name)(builder)


for _name in _TORCHVISION_RESNETS:
    _register(_name)

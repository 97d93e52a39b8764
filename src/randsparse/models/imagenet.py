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
# Name -> (family, depth, widening factor) each declares.
_TORCHVISION_RESNETS: dict[str, tuple[str, int, float | None]] = {
    "resnet18": ("resnet", 18, None),
    "resnet34": ("resnet", 34, None),
    "resnet50": ("resnet", 50, None),
    "resnet101": ("resnet", 101, None),
    "resnet152": ("resnet", 152, None),
    "wide_resnet50_2": ("wide_resnet", 50, 2.0),
    "wide_resnet101_2": ("wide_resnet", 101, 2.0),
}


def _register(name: str, family: str, depth: int, width: float | None) -> None:
    def builder(num_classes: int = 1000, in_channels: int = 3, init_mode: InitMode = "fan_out") -> nn.Module:
        from torchvision import models

        check_init_mode(init_mode)
        model = getattr(models, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 7, stride=2, padding=3, bias=False)
        return init_weights_(model, TORCHVISION, init_mode)

    builder.__name__ = name
    builder.__doc__ = f"torchvision {name} for ImageNet-sized inputs, random initialisation."
    register_model(name, family=family, depth=depth, width=width)(builder)


for _name, (_family, _depth, _width) in _TORCHVISION_RESNETS.items():
    _register(_name, _family, _depth, _width)

"""torchvision's ImageNet ResNets, freshly initialised (weights are never downloaded).

They keep torchvision's architecture; `in_channels` replaces the stem conv, `num_classes` the
classifier, and every conv and the classifier are re-initialised Kaiming-normal with `init_mode`
(default "fan_out", torchvision's own choice for its convs). No width multiplier: the Wide ResNets
are registered under their own names.
"""

from __future__ import annotations

from torch import nn

from randsparse.models.registry import InitMode, check_init_mode, kaiming_init_, register_model

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
        return kaiming_init_(model, init_mode)

    builder.__name__ = name
    builder.__doc__ = f"torchvision {name} for ImageNet-sized inputs, random initialisation."
    register_model(name)(builder)


for _name in _TORCHVISION_RESNETS:
    _register(_name)

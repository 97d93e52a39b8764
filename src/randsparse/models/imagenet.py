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
        return kaiming_init_(model, init_mode)

    builder.__name__ = name
    builder.__doc__ = f"torchvision {name} for ImageNet-sized inputs, random initialisation."
    register_model(name, family=family, depth=depth, width=width)(builder)


for _name, (_family, _depth, _width) in _TORCHVISION_RESNETS.items():
    _register(_name, _family, _depth, _width)

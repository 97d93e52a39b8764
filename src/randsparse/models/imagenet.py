"""torchvision's ImageNet ResNets, freshly initialised (weights are never downloaded)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models as tv

from randsparse.models.registry import register_model

_TORCHVISION_RESNETS: dict[str, Callable[..., tv.ResNet]] = {
    "resnet18": tv.resnet18,
    "resnet34": tv.resnet34,
    "resnet50": tv.resnet50,
    "resnet101": tv.resnet101,
    "resnet152": tv.resnet152,
    "wide_resnet50_2": tv.wide_resnet50_2,
    "wide_resnet101_2": tv.wide_resnet101_2,
}


def _register(name: str, factory: Callable[..., tv.ResNet]) -> None:
    def builder(num_classes: int = 1000, in_channels: int = 3) -> tv.ResNet:
        model = factory(weights=None, num_classes=num_classes)
        if in_channels != 3:
            stem = nn.Conv2d(in_channels, model.conv1.out_channels, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
            model.conv1 = stem
        return model

    builder.__name__ = name
    builder.__doc__ = f"torchvision {name} for ImageNet-sized inputs, random initialisation."
    register_model(name)(builder)


for _name, _factory in _TORCHVISION_RESNETS.items():
    _register(_name, _factory)

"""Small models for quick CPU studies: a ReLU MLP and a small VGG-style CNN (`small_cnn`)."""

from __future__ import annotations

import torch
from torch import nn

from randsparse.errors import ConfigError, is_integer
from randsparse.models.init import OURS, InitMode, check_init_mode, init_weights_
from randsparse.models.registry import register_model, scaled_channels
from randsparse.models.vgg import VGG


def _check_count(name: str, value: object, minimum: int, example: str) -> int:
    """`value` if it is an integer >= `minimum`; otherwise a ConfigError saying what would work."""
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum} (e.g. {example}), got {value!r}")
    return value


class MLP(nn.Module):
    """Flatten, then `depth` hidden Linear-ReLU layers, then a Linear classifier.

    Initialisation is ours (`OURS` in `models/init.py`): every weight Kaiming-normal with
    `init_mode`, biases at PyTorch's default.
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        num_classes: int = 10,
        init_mode: InitMode = "fan_in",
    ) -> None:
        super().__init__()
        check_init_mode(init_mode)
        self.in_features = in_features
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_features
        for units in hidden:
            layers += [nn.Linear(features, units), nn.ReLU(inplace=True)]
            features = units
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, num_classes)
        init_weights_(self, OURS, init_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:].numel() != self.in_features:
            raise ConfigError(
                f"this MLP takes {self.in_features} input values per example (in_channels x image_size**2),"
                f" got inputs of shape {tuple(x.shape[1:])}; build it with the data's in_channels and image_size"
            )
        return self.classifier(self.features(x))


@register_model("mlp", family="mlp")
def mlp(
    depth: int = 2,
    hidden: int = 1024,
    width: float = 1.0,
    image_size: int = 32,
    num_classes: int = 10,
    in_channels: int = 3,
    init_mode: InitMode = "fan_in",
) -> MLP:
    """ReLU MLP with `depth` hidden layers of `hidden` x `width` units on flattened images.

    Inputs are `in_channels` x `image_size` x `image_size`; e.g. 784-1024-1024-10 is
    ``mlp(depth=2, hidden=1024, image_size=28, in_channels=1)``.
    """
    _check_count("MLP depth (number of hidden layers)", depth, 1, "2")
    _check_count("MLP hidden (units per hidden layer)", hidden, 1, "1024")
    _check_count("image_size (input height = width, in pixels)", image_size, 1, "28")
    units = scaled_channels(hidden, width)
    return MLP(in_channels * image_size**2, [units] * depth, num_classes, init_mode)


class SmallCNN(VGG):
    """Three stages of two conv3x3-BN-ReLU (16w, 32w, 64w channels), a 2x2 max pool after each, pool, Linear.

    A BN-VGG with a short layout, so it shares VGG's layers and forward; its initialisation is ours
    (`OURS` in `models/init.py`: convs and classifier Kaiming-normal fan-in, PyTorch's default bias).
    """

    INIT = OURS

    LAYOUT: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M", 64, 64, "M")

    def __init__(
        self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3, init_mode: InitMode = "fan_in"
    ) -> None:
        super().__init__(self.LAYOUT, width, num_classes, in_channels, init_mode)


@register_model("small_cnn", family="small_cnn")
def small_cnn(
    width: float = 1.0, num_classes: int = 10, in_channels: int = 3, init_mode: InitMode = "fan_in"
) -> SmallCNN:
    """Small VGG-style CNN for 28x28 (or 32x32) inputs; ~73 k parameters at width 1 on one channel."""
    return SmallCNN(width, num_classes, in_channels, init_mode)

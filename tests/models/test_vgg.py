"""BN-VGG 11/13/16/19: layout, width multiplier, parameter counts, input sizes, bad knobs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.errors import ConfigError
from randsparse.models import build
from randsparse.models.vgg import VGG, VGG_LAYOUTS, vgg

DEPTHS = (11, 13, 16, 19)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def expected_params(depth: int, width: float, in_channels: int, num_classes: int) -> int:
    """Count from the architecture's definition: bias-free 3x3 convs, BN (2 per channel), one Linear."""
    total, channels = 0, in_channels
    for item in VGG_LAYOUTS[depth]:
        if item == "M":
            continue
        out = max(1, round(item * width))
        total += channels * out * 9 + 2 * out
        channels = out
    return total + channels * num_classes + num_classes


@pytest.mark.parametrize("depth", DEPTHS)
def test_vgg_has_depth_minus_three_convs_four_max_pools_and_one_linear(depth: int) -> None:
    with torch.device("meta"):
        model = build(f"vgg{depth}")
    assert len(convs(model)) == depth - 3  # named after the ImageNet VGG with its three FC layers
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [nn.Linear]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("width", [1.0, 0.5, 2.0])
def test_vgg_parameter_count_matches_its_definition(depth: int, width: float) -> None:
    with torch.device("meta"):
        model = build(f"vgg{depth}", width=width, num_classes=100, in_channels=1)
    assert n_params(model) == expected_params(depth, width, in_channels=1, num_classes=100)


@pytest.mark.parametrize(("name", "millions"), [("vgg16", 14.7), ("vgg19", 20.0)])
def test_cifar_vgg_parameter_count_matches_the_published_figure(name: str, millions: float) -> None:
    with torch.device("meta"):
        count = n_params(build(name))
    assert abs(count / 1e6 - millions) < 0.05


def test_every_conv_is_bias_free_and_followed_by_batchnorm_and_relu() -> None:
    model = build("vgg11", width=0.25)
    layers = list(model.features)
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert layer.bias is None
            assert layer.kernel_size == (3, 3)
            assert isinstance(layers[index + 1], nn.BatchNorm2d)
            assert isinstance(layers[index + 2], nn.ReLU)


def test_width_multiplier_scales_every_conv_and_the_classifier_input() -> None:
    base, half = build("vgg13"), build("vgg13", width=0.5)
    assert [c.out_channels // 2 for c in convs(base)] == [c.out_channels for c in convs(half)]
    assert half.classifier.in_features == 256


@pytest.mark.parametrize(("size", "final"), [(32, 2), (28, 1)])
def test_four_pools_leave_two_by_two_on_32_and_one_by_one_on_28(size: int, final: int) -> None:
    model = build("vgg11", width=0.25, in_channels=1).eval()
    with torch.no_grad():
        features = model.features(torch.randn(2, 1, size, size))
        logits = model(torch.randn(2, 1, size, size))
    assert features.shape[-2:] == (final, final)
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("depth", DEPTHS)
def test_generic_vgg_builds_the_same_architecture_as_the_named_one(depth: int) -> None:
    with torch.device("meta"):
        generic, named = build("vgg", depth=depth, width=0.5), build(f"vgg{depth}", width=0.5)
    assert isinstance(generic, VGG)
    assert {k: v.shape for k, v in generic.state_dict().items()} == {k: v.shape for k, v in named.state_dict().items()}


@pytest.mark.parametrize("depth", [10, 12, 18, 20, 0, 16.0, True, "16"])
def test_vgg_depth_outside_11_13_16_19_is_a_config_error_listing_them(depth) -> None:
    with pytest.raises(ConfigError, match="11, 13, 16, 19"):
        vgg(depth=depth)


@pytest.mark.parametrize("width", [0, -0.5, float("nan"), float("inf"), "1"])
def test_vgg_non_positive_or_non_numeric_width_is_a_config_error(width) -> None:
    with pytest.raises(ConfigError, match="width"):
        build("vgg16", width=width)


def test_vgg_unknown_init_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="init_mode"):
        build("vgg11", init_mode="normal")

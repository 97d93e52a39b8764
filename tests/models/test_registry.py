"""The model registry: build by name, unknown names and options are user errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.errors import ConfigError, RandsparseError, UnknownNameError
from randsparse.models import available_models, build, model_options, register_model
from randsparse.models.init import kaiming_init_
from randsparse.models.registry import scaled_channels


def test_available_models_lists_cifar_and_torchvision_resnets_sorted() -> None:
    names = available_models()
    assert names == sorted(names)
    for name in ("cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"):
        assert name in names
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2"):
        assert name in names


def test_unknown_model_is_an_unknown_name_error_listing_known_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    assert "resnet20" in message and "resnet50" in message
    assert info.value.known == available_models()
    assert isinstance(info.value, RandsparseError)
    assert not message.startswith(("'", '"'))  # not KeyError's quoted repr


def test_option_the_builder_does_not_take_is_a_config_error_naming_accepted_options() -> None:
    with pytest.raises(ConfigError, match=r"depth.*takes: width") as info:
        build("resnet20", depth=32)
    assert "init_mode" in str(info.value)


def test_cifar_resnet_builder_takes_depth_and_width() -> None:
    model = build("cifar_resnet", depth=14, width=2)
    assert len(model.layer1) == 2
    assert model.conv1.out_channels == 32


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, "10"])
def test_invalid_num_classes_is_a_config_error(num_classes) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build("resnet20", num_classes=num_classes)


@pytest.mark.parametrize("in_channels", [0, -1, 1.0])
def test_invalid_in_channels_is_a_config_error(in_channels) -> None:
    with pytest.raises(ConfigError, match="in_channels"):
        build("resnet20", in_channels=in_channels)


def test_registering_a_taken_name_is_refused() -> None:
    with pytest.raises(ValueError, match="resnet20"):
        register_model("resnet20")(lambda num_classes=10, in_channels=3: None)


def test_model_options_lists_the_builder_options_besides_classes_and_channels_in_order() -> None:
    assert model_options("cifar_resnet") == ["depth", "width", "init_mode"]
    assert model_options("resnet50") == ["init_mode"]
    assert "image_size" in model_options("mlp")


def test_model_options_of_an_unknown_model_is_an_unknown_name_error() -> None:
    with pytest.raises(UnknownNameError, match="resnet9000"):
        model_options("resnet9000")


@pytest.mark.parametrize(("base", "width", "expected"), [(16, 1.0, 16), (16, 0.5, 8), (64, 1.5, 96), (16, 0.01, 1)])
def test_scaled_channels_rounds_and_keeps_at_least_one(base: int, width: float, expected: int) -> None:
    assert scaled_channels(base, width) == expected


@pytest.mark.parametrize("width", [0, -1, float("nan"), float("inf"), True, None, "2"])
def test_scaled_channels_refuses_a_width_that_is_not_a_positive_number(width) -> None:
    with pytest.raises(ConfigError, match="width"):
        scaled_channels(16, width)


def test_kaiming_init_resets_norm_layers_and_refuses_an_unknown_mode() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        model[1].bias.fill_(2.0)
    kaiming_init_(model, "fan_out")
    assert torch.equal(model[1].weight, torch.ones(4)) and torch.equal(model[1].bias, torch.zeros(4))
    with pytest.raises(ConfigError, match="init_mode"):
        kaiming_init_(model, "fan_avg")

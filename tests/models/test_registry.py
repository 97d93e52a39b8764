"""The model registry: build by name, unknown names and options are user errors."""

from __future__ import annotations

import pytest

from randsparse.errors import ConfigError, RandsparseError, UnknownNameError
from randsparse.models import available_models, build, register_model


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

"""CIFAR ResNets (depth 6n+2, width multiplier) and the torchvision ImageNet ResNets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.errors import ConfigError
from randsparse.models import build
from randsparse.models.cifar_resnet import BasicBlock, CifarResNet, cifar_resnet


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("resnet20", 0.26e6, 0.28e6),
        ("resnet56", 0.85e6 * 0.98, 0.85e6 * 1.02),
        ("resnet110", 1.73e6 * 0.98, 1.73e6 * 1.02),
    ],
)
def test_cifar_resnet_parameter_count_matches_the_paper(name: str, low: float, high: float) -> None:
    assert low <= n_params(build(name)) <= high


@pytest.mark.parametrize("depth", [21, 2, 7, 0, -4, 20.0])
def test_cifar_resnet_depth_not_6n_plus_2_is_a_config_error(depth) -> None:
    with pytest.raises(ConfigError, match="6n\\+2"):
        cifar_resnet(depth=depth)


def test_cifar_resnet_depth_26_has_four_blocks_per_stage() -> None:
    model = build("cifar_resnet", depth=26)
    for stage in (model.layer1, model.layer2, model.layer3):
        assert len(stage) == 4
        assert all(isinstance(block, BasicBlock) for block in stage)


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 3), ("resnet32", 5), ("resnet44", 7), ("resnet56", 9)])
def test_fixed_depth_builders_have_n_blocks_per_stage(name: str, blocks: int) -> None:
    model = build(name)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [blocks] * 3


def test_width_two_doubles_channels_and_about_quadruples_params() -> None:
    base, wide = build("resnet20"), build("resnet20", width=2)
    assert wide.conv1.out_channels == 32
    assert wide.layer2[0].conv1.out_channels == 64
    assert wide.layer3[0].conv1.out_channels == 128
    assert wide.fc.in_features == 128
    assert 3.9 <= n_params(wide) / n_params(base) <= 4.05


def test_fractional_width_rounds_channels() -> None:
    model = build("resnet20", width=0.5)
    assert [model.conv1.out_channels, model.layer2[0].conv1.out_channels, model.fc.in_features] == [8, 16, 32]


@pytest.mark.parametrize("width", [0, -1.0])
def test_non_positive_width_is_a_config_error(width: float) -> None:
    with pytest.raises(ConfigError, match="width"):
        build("resnet20", width=width)


def test_unknown_init_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="init_mode"):
        build("resnet20", init_mode="xavier")


def test_in_channels_and_num_classes_are_honoured() -> None:
    model = build("resnet20", num_classes=100, in_channels=1)
    assert model.conv1.in_channels == 1
    assert model.fc.out_features == 100
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_forward_on_a_cifar_batch_gives_one_logit_per_class(num_classes: int) -> None:
    model = build("resnet20", num_classes=num_classes)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_shortcut_is_a_projection_only_where_the_block_changes_shape() -> None:
    model = build("resnet20")
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    for stage in (model.layer2, model.layer3):
        assert isinstance(stage[0].shortcut, nn.Sequential)
        assert isinstance(stage[0].shortcut[0], nn.Conv2d)
        assert stage[0].shortcut[0].kernel_size == (1, 1)
        assert all(isinstance(block.shortcut, nn.Identity) for block in stage[1:])


def test_cifar_resnet_has_no_conv_biases_and_unit_bn() -> None:
    model = build("resnet20")
    assert isinstance(model, CifarResNet)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert module.bias is None
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet18", 11_689_512), ("resnet50", 25_557_032), ("wide_resnet50_2", 68_883_240)],
)
def test_torchvision_resnet_parameter_count_with_1000_classes(name: str, expected: int) -> None:
    with torch.device("meta"):
        model = build(name, num_classes=1000)
    count = n_params(model)
    assert count == expected
    assert abs(count - {"resnet18": 11.7e6, "resnet50": 25.6e6, "wide_resnet50_2": 68.9e6}[name]) < 0.06e6


def test_torchvision_resnet_honours_num_classes() -> None:
    with torch.device("meta"):
        model = build("resnet50", num_classes=7)
    assert model.fc.out_features == 7


def test_torchvision_resnet18_with_one_input_channel_runs_forward() -> None:
    model = build("resnet18", num_classes=10, in_channels=1).eval()
    assert model.conv1.in_channels == 1
    assert model.conv1.out_channels == 64
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 10)
    assert torch.isfinite(out).all()


def test_torchvision_builder_rejects_width_option() -> None:
    with pytest.raises(ConfigError, match=r"resnet50.*width"):
        build("resnet50", width=2)

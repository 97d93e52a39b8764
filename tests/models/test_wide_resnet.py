"""Wide ResNets WRN-d-k: depth 6n+4, widening factor, pre-activation blocks, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse.errors import ConfigError
from randsparse.models import build, model_options
from randsparse.models.wide_resnet import PreActBlock, WideResNet, wrn


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_params(depth: int, k: float, in_channels: int = 3, num_classes: int = 10) -> int:
    """Count from the WRN definition: 16-channel stem, n blocks per stage, 1x1 projections, BN, Linear."""
    n = (depth - 4) // 6
    total, channels = in_channels * 16 * 9, 16
    for stage, base in enumerate((16, 32, 64)):
        out = max(1, round(base * k))
        for block in range(n):
            total += 2 * channels + channels * out * 9 + 2 * out + out * out * 9  # bn1, conv1, bn2, conv2
            strided = stage > 0 and block == 0
            if strided or channels != out:
                total += channels * out  # 1x1 projection
            channels = out
    return total + 2 * channels + channels * num_classes + num_classes  # final BN, classifier


@pytest.mark.parametrize(("depth", "k"), [(10, 1), (16, 8), (22, 2), (28, 10), (40, 2), (16, 1.5)])
def test_wrn_parameter_count_matches_its_definition(depth: int, k: float) -> None:
    with torch.device("meta"):
        model = build("wrn", depth=depth, width=k)
    assert n_params(model) == expected_params(depth, k)


@pytest.mark.parametrize(
    ("name", "millions"),
    [("wrn28_10", 36.5), ("wrn16_8", 11.0), ("wrn40_2", 2.2)],
)
def test_named_wrn_parameter_count_matches_the_wrn_paper(name: str, millions: float) -> None:
    with torch.device("meta"):
        count = n_params(build(name))
    assert abs(count / 1e6 - millions) / millions < 0.02


@pytest.mark.parametrize(("name", "depth", "k"), [("wrn16_8", 16, 8), ("wrn22_2", 22, 2), ("wrn28_10", 28, 10)])
def test_named_wrn_is_the_generic_builder_at_its_depth_and_width(name: str, depth: int, k: int) -> None:
    with torch.device("meta"):
        named, generic = build(name), build("wrn", depth=depth, width=k)
    assert {n: p.shape for n, p in named.state_dict().items()} == {n: p.shape for n, p in generic.state_dict().items()}


def test_named_wrn_takes_no_width_or_depth_knob() -> None:
    assert model_options("wrn28_10") == ["init_mode"]
    with pytest.raises(ConfigError, match=r"width.*takes: init_mode"):
        build("wrn28_10", width=2)


def test_wrn_stages_have_n_blocks_and_16k_32k_64k_channels() -> None:
    model = build("wrn", depth=22, width=2)
    assert model.conv1.out_channels == 16
    for stage, channels in zip((model.layer1, model.layer2, model.layer3), (32, 64, 128), strict=True):
        assert len(stage) == 3
        assert all(isinstance(block, PreActBlock) for block in stage)
        assert all(block.conv2.out_channels == channels for block in stage)
    assert model.fc.in_features == 128


def test_projection_shortcut_only_where_a_block_changes_shape() -> None:
    model = build("wrn", depth=16, width=1)
    assert model.layer1[0].shortcut is None  # 16 -> 16 at k = 1
    assert model.layer2[0].shortcut is not None and model.layer3[0].shortcut is not None
    assert model.layer2[0].shortcut.kernel_size == (1, 1) and model.layer2[0].shortcut.stride == (2, 2)
    assert all(block.shortcut is None for stage in (model.layer1, model.layer2, model.layer3) for block in stage[1:])
    assert build("wrn", depth=16, width=2).layer1[0].shortcut is not None  # 16 -> 32 needs a projection


def test_block_is_pre_activation_with_no_relu_after_the_sum() -> None:
    block = PreActBlock(4, 4, stride=1).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        block.bn1.bias.fill_(-100.0)  # relu(bn1(x)) is all zero, so the residual branch adds nothing
        out = block(x)
    assert torch.equal(out, x)  # negative inputs pass through: no ReLU after the addition


def test_wrn_ends_with_batchnorm_relu_before_pooling() -> None:
    model = build("wrn", depth=10, width=1)
    names = [name for name, _ in model.named_children()]
    assert names[-3:] == ["bn", "pool", "fc"]
    assert model.bn.num_features == model.fc.in_features


def test_dropout_is_active_in_training_only() -> None:
    model = build("wrn", depth=10, width=1, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))
    assert not any(isinstance(m, nn.Dropout) for m in build("wrn", depth=10, width=1).modules())


@pytest.mark.parametrize("size", [28, 32])
def test_wrn_runs_on_28_and_32_pixel_inputs(size: int) -> None:
    model = build("wrn", depth=10, width=0.5, in_channels=1, num_classes=7)
    assert isinstance(model, WideResNet)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


@pytest.mark.parametrize("depth", [28.0, 9, 12, 4, 0, -2, True])
def test_wrn_depth_not_6n_plus_4_is_a_config_error(depth) -> None:
    with pytest.raises(ConfigError, match=r"6n\+4"):
        wrn(depth=depth)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 2, "0.3"])
def test_wrn_dropout_outside_0_1_is_a_config_error(dropout) -> None:
    with pytest.raises(ConfigError, match="dropout"):
        wrn(depth=10, width=1, dropout=dropout)


@pytest.mark.parametrize("width", [0, -1])
def test_wrn_non_positive_width_is_a_config_error(width: float) -> None:
    with pytest.raises(ConfigError, match="width"):
        wrn(depth=10, width=width)

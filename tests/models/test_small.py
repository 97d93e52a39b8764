"""The quick-study models: ReLU MLP (depth, hidden, width, image_size) and small_cnn."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from randsparse.errors import ConfigError
from randsparse.models import build, model_options
from randsparse.models.small import MLP, SmallCNN


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_mlp_784_1024_1024_10_is_depth_2_hidden_1024_on_28_pixel_grey_images() -> None:
    model = build("mlp", depth=2, hidden=1024, image_size=28, in_channels=1, num_classes=10)
    assert [(layer.in_features, layer.out_features) for layer in linears(model)] == [
        (784, 1024),
        (1024, 1024),
        (1024, 10),
    ]
    assert n_params(model) == 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10


@settings(max_examples=25, deadline=None)
@given(
    depth=st.integers(1, 4),
    hidden=st.integers(1, 64),
    width=st.floats(0.1, 3.0),
    image_size=st.integers(1, 12),
    in_channels=st.integers(1, 3),
)
def test_mlp_layer_sizes_follow_its_knobs(depth: int, hidden: int, width: float, image_size: int, in_channels: int):
    with torch.device("meta"):
        model = build("mlp", depth=depth, hidden=hidden, width=width, image_size=image_size, in_channels=in_channels)
    units = max(1, round(hidden * width))
    sizes = [(layer.in_features, layer.out_features) for layer in linears(model)]
    assert sizes == [(in_channels * image_size**2, units)] + [(units, units)] * (depth - 1) + [(units, 10)]


def test_mlp_has_relu_after_every_hidden_layer_and_none_after_the_classifier() -> None:
    model = build("mlp", depth=3, hidden=8, image_size=4)
    assert isinstance(model, MLP)
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    model.eval()
    with torch.no_grad():
        model.classifier.bias.fill_(-1e3)  # a trailing ReLU would clamp these logits to zero
        assert (model(torch.randn(2, 3, 4, 4)) < 0).all()


def test_mlp_advertises_image_size_and_small_cnn_does_not() -> None:
    assert "image_size" in model_options("mlp")
    assert "image_size" not in model_options("small_cnn")


def test_mlp_fed_images_of_the_wrong_size_raises_a_config_error_naming_image_size() -> None:
    model = build("mlp", depth=1, hidden=4, image_size=28, in_channels=1)
    with pytest.raises(ConfigError, match="image_size"):
        model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    ("options", "knob"),
    [
        ({"depth": 0}, "depth"),
        ({"depth": 1.5}, "depth"),
        ({"depth": True}, "depth"),
        ({"hidden": 0}, "hidden"),
        ({"hidden": 256.0}, "hidden"),
        ({"image_size": 0}, "image_size"),
        ({"width": 0}, "width"),
        ({"width": -2.0}, "width"),
        ({"init_mode": "uniform"}, "init_mode"),
    ],
)
def test_mlp_invalid_knob_is_a_config_error_naming_it(options: dict, knob: str) -> None:
    with pytest.raises(ConfigError, match=knob):
        build("mlp", **options)


def test_small_cnn_has_three_stages_of_two_convs_with_16w_32w_64w_channels() -> None:
    model = build("small_cnn", width=2, in_channels=1)
    assert isinstance(model, SmallCNN)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert convs[0].in_channels == 1
    kinds = [type(m) for m in model.features]
    stage = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert kinds == stage * 3
    assert model.classifier.in_features == 128


@pytest.mark.parametrize(("size", "final"), [(28, 3), (32, 4)])
def test_small_cnn_pools_28_to_3_and_32_to_4_before_the_global_pool(size: int, final: int) -> None:
    model = build("small_cnn", in_channels=3, num_classes=5).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, size, size)
        assert model.features(x).shape == (2, 64, final, final)
        assert model(x).shape == (2, 5)


def test_small_cnn_parameter_count_matches_its_definition() -> None:
    w = [16, 32, 64]
    convs = 1 * 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9
    norms = 2 * 2 * sum(w)
    assert n_params(build("small_cnn", in_channels=1)) == convs + norms + 64 * 10 + 10


@pytest.mark.parametrize(("options", "knob"), [({"width": 0}, "width"), ({"init_mode": "fan"}, "init_mode")])
def test_small_cnn_invalid_knob_is_a_config_error(options: dict, knob: str) -> None:
    with pytest.raises(ConfigError, match=knob):
        build("small_cnn", **options)

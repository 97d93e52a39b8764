"""The whole zoo: every model builds, runs forward and backward on 28x28x1 and 32x32x3, and has its stated size."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from randsparse.models import available_models, build, model_options
from randsparse.sparsity.layers import prunable_parameters

ZOO = available_models()
# Positional and class tokens: never prunable (docs/models.md, "Attention layers").
TOKENS = ("cls_token", "pos_embed")
INPUTS = {"28x28x1": (1, 28), "32x32x3": (3, 32)}
WIDTHS = (0.5, 1.0)
# Above this many parameters a model's forward/backward runs on the meta device (shapes and
# autograd only), so the suite stays fast on a 2-core CPU; smaller models run for real.
REAL_RUN_LIMIT = 5_000_000
# Above this many parameters the init statistics are not checked (initialising costs ~1 s).
REAL_INIT_LIMIT = 25_000_000


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def size_of(name: str, width: float | None = None) -> int:
    """Parameter count of `name` at `width` (built on the meta device, so free of init cost)."""
    with torch.device("meta"):
        return n_params(build(name, **options_for(name, 32, width)))


def options_for(name: str, size: int, width: float | None = None) -> dict:
    options: dict = {}
    if "image_size" in model_options(name):
        options["image_size"] = size
    if width is not None:
        options["width"] = width
    return options


def cases() -> list:
    found = []
    for name in ZOO:
        widths = WIDTHS if "width" in model_options(name) else (None,)
        for width in widths:
            for label in INPUTS:
                found.append(pytest.param(name, width, label, id=f"{name}-w{width}-{label}"))
    return found


def test_zoo_registers_every_family_of_the_issue() -> None:
    expected = {"vgg", "vgg11", "vgg13", "vgg16", "vgg19", "wrn", "wrn16_8", "wrn22_2", "wrn28_10", "wrn40_2"}
    expected |= {"mlp", "small_cnn", "cifar_resnet", "resnet20", "resnet56", "resnet110", "resnet50"}
    assert expected <= set(ZOO)


@pytest.mark.parametrize(("name", "width", "label"), cases())
def test_model_runs_forward_and_backward_on_its_canonical_input(name: str, width: float | None, label: str) -> None:
    channels, size = INPUTS[label]
    options = options_for(name, size, width)
    big = size_of(name, width) > REAL_RUN_LIMIT
    device = torch.device("meta" if big else "cpu")
    with torch.device(device):
        model = build(name, num_classes=10, in_channels=channels, **options).train()
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    if not big:
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        classifier = list(prunable_parameters(model).values())[-1]
        assert classifier.grad.abs().sum() > 0


def test_a_torchvision_model_runs_for_real_at_64_pixels() -> None:
    model = build("resnet18", num_classes=10, in_channels=3)
    out = model(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ZOO)
def test_first_prunable_layer_reads_the_input_and_last_is_the_classifier(name: str) -> None:
    options = options_for(name, size=6)
    with torch.device("meta"):
        model = build(name, num_classes=7, in_channels=5, **options)
    layers = list(prunable_parameters(model).items())
    (first_name, first), (last_name, _) = layers[0], layers[-1]
    flattens = isinstance(model.get_submodule(first_name.rsplit(".", 1)[0]), nn.Linear)  # an MLP's first layer
    assert flattens == (name == "mlp")
    assert first.shape[1] == (5 * 6 * 6 if flattens else 5)
    owner = model.get_submodule(last_name.rsplit(".", 1)[0])
    assert isinstance(owner, nn.Linear) and owner.out_features == 7


@pytest.mark.parametrize("name", ZOO)
def test_every_weight_matrix_is_a_prunable_conv_or_linear(name: str) -> None:
    with torch.device("meta"):
        model = build(name, **options_for(name, size=8))
    prunable = {id(p) for p in prunable_parameters(model).values()}
    hidden = [
        n for n, p in model.named_parameters() if p.dim() > 1 and id(p) not in prunable and not n.endswith(TOKENS)
    ]
    assert hidden == []


@pytest.mark.parametrize(
    ("name", "num_classes", "millions"),
    [
        ("resnet20", 10, 0.27),
        ("resnet56", 10, 0.85),
        ("resnet110", 10, 1.73),
        ("wrn28_10", 10, 36.5),
        ("wrn16_8", 10, 11.0),
        ("wrn40_2", 10, 2.2),
        ("vgg16", 10, 14.7),
        ("vgg19", 10, 20.0),
        ("resnet18", 1000, 11.7),
        ("resnet34", 1000, 21.8),
        ("resnet50", 1000, 25.6),
        ("resnet101", 1000, 44.5),
        ("resnet152", 1000, 60.2),
        ("wide_resnet50_2", 1000, 68.9),
        ("wide_resnet101_2", 1000, 126.9),
    ],
)
def test_parameter_count_matches_the_standard_figure(name: str, num_classes: int, millions: float) -> None:
    """Published figures have two or three significant digits; CIFAR ResNets here add 1x1 projections."""
    with torch.device("meta"):
        count = n_params(build(name, num_classes=num_classes))
    assert abs(count / 1e6 - millions) / millions < 0.02


@pytest.mark.parametrize("name", [n for n in ZOO if "width" in model_options(n)])
def test_width_two_multiplies_parameters_by_between_two_and_four(name: str) -> None:
    with torch.device("meta"):
        base = n_params(build(name, **options_for(name, 32, 1.0)))
        double = n_params(build(name, **options_for(name, 32, 2.0)))
    assert 2.0 < double / base < 4.1  # hidden-to-hidden layers quadruple; input and output layers double


def _kaiming_std(weight: torch.Tensor, mode: str) -> float:
    receptive = math.prod(weight.shape[2:])
    fan = weight.shape[1] * receptive if mode == "fan_in" else weight.shape[0] * receptive
    return math.sqrt(2.0 / fan)


@pytest.mark.parametrize("name", [name for name in ZOO if "init_mode" in model_options(name)])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_init_mode_sets_kaiming_normal_std_of_the_weights(name: str, mode: str) -> None:
    width = 0.5 if "width" in model_options(name) else None
    if size_of(name, width) > REAL_INIT_LIMIT:
        pytest.skip(f"{name} is too large to initialise in a unit test; smaller models share its code")
    options = options_for(name, 16, width)
    torch.manual_seed(0)
    model = build(name, init_mode=mode, **options)
    # The largest layer whose fan-in and fan-out differ tells the two modes apart.
    weight = max(
        (p for p in prunable_parameters(model).values() if p.shape[0] != p.shape[1]), key=lambda p: p.numel()
    ).detach()
    assert weight.mean().abs() < 0.05 * _kaiming_std(weight, mode)
    assert weight.std().item() == pytest.approx(_kaiming_std(weight, mode), rel=0.05)

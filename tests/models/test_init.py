"""Every family starts its weights as its source does: per-layer std and bias values against the formulas."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from randsparse.models import available_models, build, model_options
from randsparse.train.config import load_config

ROOT = Path(__file__).resolve().parents[2]

# The recipe each family's source uses, written out here independently of models/init.py:
# (conv fan mode, classifier weight, biases). "default" = nn.Linear's own init, left as built.
PAPER_VGG = ("fan_out", "normal_0.01", "zero")  # VITA-Group/Random_Pruning CIFAR/models/init_utils.py
PAPER_CIFAR_RESNET = ("fan_in", "kaiming", "default")  # the same code's initializers.kaiming_normal
WRN = ("fan_out", "default", "zero")  # the paper code's sparselearning/models.py WideResNet
TORCHVISION = ("fan_out", "default", "default")  # torchvision.models.resnet.ResNet.__init__
OURS = ("fan_in", "kaiming", "default")  # mlp, small_cnn: no outside source

TORCHVISION_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


def family_recipe(name: str) -> tuple[str, str, str]:
    if name in TORCHVISION_NAMES:
        return TORCHVISION
    if name.startswith("vgg"):
        return PAPER_VGG
    if name == "cifar_resnet" or name.startswith("resnet"):
        return PAPER_CIFAR_RESNET
    if name.startswith("wrn"):
        return WRN
    if name in ("mlp", "small_cnn"):
        return OURS
    raise AssertionError(f"model {name!r} has no recipe in this test; add its family")


# Above this many parameters initialising costs too much for a unit test; smaller ones share the code.
LIMIT = 12_000_000


def _small_options(name: str) -> dict:
    options: dict = {}
    if "width" in model_options(name) and not name.startswith("wrn"):
        options["width"] = 0.5
    if name == "wrn":
        options.update(depth=10, width=2)
    if "image_size" in model_options(name):
        options["image_size"] = 16
    return options


def _within(sample: torch.Tensor, expected_std: float) -> bool:
    """The sample std lies within 6 standard errors (plus 3 %) of `expected_std`."""
    n = sample.numel()
    return abs(sample.std().item() - expected_std) <= expected_std * (0.03 + 6 / math.sqrt(2 * n))


def check_layer(module: nn.Module, recipe: tuple[str, str, str], mode: str | None = None) -> None:
    conv_mode, linear, bias = recipe
    mode = mode or conv_mode
    weight = module.weight.detach()
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        fan = module.in_channels // module.groups * kernel if mode == "fan_in" else module.out_channels * kernel
        assert _within(weight, math.sqrt(2 / fan)), (module, weight.std().item(), math.sqrt(2 / fan))
        default_bound = 1 / math.sqrt(module.in_channels // module.groups * kernel)
    else:
        assert isinstance(module, nn.Linear)
        fan_in, fan_out = module.in_features, module.out_features
        if linear == "kaiming":
            assert _within(weight, math.sqrt(2 / (fan_in if mode == "fan_in" else fan_out)))
        elif linear == "normal_0.01":
            assert _within(weight, 0.01)
        else:  # nn.Linear's default: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert weight.abs().max().item() <= 1 / math.sqrt(fan_in)
            assert _within(weight, 1 / math.sqrt(3 * fan_in))
        default_bound = 1 / math.sqrt(fan_in)
    if module.bias is not None:
        values = module.bias.detach()
        if bias == "zero":
            assert torch.equal(values, torch.zeros_like(values)), module
        else:  # PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not all zero
            assert values.abs().max().item() <= default_bound and values.abs().sum() > 0, module


def check_model(model: nn.Module, recipe: tuple[str, str, str], mode: str | None = None) -> None:
    checked = 0
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            check_layer(module, recipe, mode)
            checked += 1
        elif isinstance(module, nn.modules.batchnorm._NormBase) and module.affine:
            assert torch.equal(module.weight.detach(), torch.ones_like(module.weight))
            assert torch.equal(module.bias.detach(), torch.zeros_like(module.bias))
    assert checked


# Families whose recipe is not a Kaiming one: `vit` follows timm (tests/models/test_vit.py checks it).
NOT_KAIMING = ("vit",)


@pytest.mark.parametrize("name", [name for name in available_models() if name not in NOT_KAIMING])
def test_every_layer_starts_as_the_familys_source_initialises_it(name: str) -> None:
    recipe = family_recipe(name)
    options = _small_options(name)
    with torch.device("meta"):
        size = sum(p.numel() for p in build(name, **options).parameters())
    if size > LIMIT:
        pytest.skip(f"{name} is too large to initialise here; a smaller model of its family shares its code")
    torch.manual_seed(0)
    check_model(build(name, **options), recipe)


def test_bn_vgg_first_conv_has_the_papers_fan_out_std() -> None:
    torch.manual_seed(0)
    model = build("vgg16")
    first = model.features[0]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)  # about 0.059, not 0.27
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.equal(model.classifier.bias.detach(), torch.zeros(10))


def test_the_paper_imagenet_preset_selects_the_paper_codes_fan_in_recipe() -> None:
    config = load_config(ROOT / "configs/paper/imagenet-wrn50.yaml")
    assert config.model.options.get("init_mode") == "fan_in"
    torch.manual_seed(0)
    # resnet18 shares wide_resnet50_2's builder and is cheap to initialise for real.
    check_model(build("resnet18", num_classes=10, init_mode="fan_in"), TORCHVISION, mode="fan_in")


def test_a_replaced_stem_is_initialised_like_the_other_convs() -> None:
    torch.manual_seed(0)
    check_model(build("resnet18", num_classes=10, in_channels=1), TORCHVISION)

"""How each model family initialises its weights: one recipe per family, as its source does.

A recipe says how conv weights, linear weights and biases start; normalisation layers always
start at scale 1, shift 0 (every source does that). Conv weights are always Kaiming-normal for
ReLU, ``std = sqrt(2 / fan)`` with `fan` = fan-in (``in / groups * kernel``) or fan-out
(``out / groups * kernel``) as `init_mode` says. The recipes, and the code each one follows:

- ``PAPER_VGG`` (BN-VGG): the random-pruning paper's CIFAR code (VITA-Group/Random_Pruning,
  ``CIFAR/models/init_utils.py``): convs fan-out, the classifier N(0, 0.01), every bias zero.
- ``PAPER_CIFAR_RESNET`` (CIFAR ResNets): the same code's ``initializers.kaiming_normal`` (PyTorch's
  ``kaiming_normal_`` defaults): convs and the classifier fan-in, biases at PyTorch's default.
- ``WRN`` (Wide ResNets): the paper code's ``sparselearning/models.py`` WideResNet (after
  Zagoruyko & Komodakis' PyTorch port): convs fan-out, classifier weight at nn.Linear's default,
  classifier bias zero.
- ``TORCHVISION`` (ImageNet ResNets): torchvision's own ``ResNet.__init__``: convs fan-out, the
  classifier left at nn.Linear's default. The paper's ImageNet run (``-c fanin``) uses fan-in
  convs with the same classifier: ``init_mode="fan_in"``.
- ``OURS`` (``mlp``, ``small_cnn``): ours, no outside source: every conv and linear weight
  Kaiming-normal (fan-in by default), biases at PyTorch's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from randsparse.errors import ConfigError
from randsparse.sparsity.layer_types import CONV_TYPES, NORM_TYPES

InitMode = Literal["fan_in", "fan_out"]
LinearInit = Literal["kaiming", "normal", "default"]


@dataclass(frozen=True)
class InitRecipe:
    """How a family starts its weights.

    `linear`: ``"kaiming"`` (Kaiming-normal with the model's `init_mode`), ``"normal"`` (N(0,
    `linear_std`)) or ``"default"`` (nn.Linear's own initialisation, left as built). `zero_bias`:
    conv and linear biases start at 0 (else at PyTorch's default). `default_mode`: the
    `init_mode` the family's builders default to.
    """

    default_mode: InitMode
    linear: LinearInit
    zero_bias: bool
    linear_std: float = 0.01


PAPER_VGG = InitRecipe(default_mode="fan_out", linear="normal", zero_bias=True)
PAPER_CIFAR_RESNET = InitRecipe(default_mode="fan_in", linear="kaiming", zero_bias=False)
WRN = InitRecipe(default_mode="fan_out", linear="default", zero_bias=True)
TORCHVISION = InitRecipe(default_mode="fan_out", linear="default", zero_bias=False)
OURS = InitRecipe(default_mode="fan_in", linear="kaiming", zero_bias=False)


def check_init_mode(init_mode: str) -> None:
    """Refuse an `init_mode` other than ``"fan_in"`` or ``"fan_out"`` with a `ConfigError`."""
    if init_mode not in ("fan_in", "fan_out"):
        raise ConfigError(f"init_mode must be 'fan_in' or 'fan_out', got {init_mode!r}")


def init_weights_(model: nn.Module, recipe: InitRecipe, init_mode: InitMode | None = None) -> nn.Module:
    """Initialise `model` in place by `recipe` (convs Kaiming-normal with `init_mode`) and return it.

    `init_mode` defaults to the recipe's. Raises `ConfigError` for an unknown `init_mode`.
    """
    mode = recipe.default_mode if init_mode is None else init_mode
    check_init_mode(mode)
    for module in model.modules():
        if isinstance(module, CONV_TYPES):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            if recipe.linear == "kaiming":
                nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            elif recipe.linear == "normal":
                nn.init.normal_(module.weight, 0.0, recipe.linear_std)
        elif isinstance(module, NORM_TYPES) and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if recipe.zero_bias and isinstance(module, (*CONV_TYPES, nn.Linear)) and module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


def kaiming_init_(model: nn.Module, init_mode: InitMode) -> nn.Module:
    """Our recipe (``OURS``) with `init_mode`: every conv and linear weight Kaiming-normal, norms 1 and 0."""
    return init_weights_(model, OURS, init_mode)

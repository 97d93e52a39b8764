"""The model registry (`register_model`, `build`) and what every builder shares: width, Kaiming init."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from randsparse.errors import ConfigError, is_integer, is_real
from randsparse.registry import Registry, check_options
from randsparse.schema import MAX_WIDTH

ModelBuilder = Callable[..., nn.Module]
InitMode = Literal["fan_in", "fan_out"]

# Arguments every builder takes and `build` passes itself; the rest are the builder's options.
_COMMON_ARGUMENTS = ("num_classes", "in_channels")

_BUILDERS: Registry[ModelBuilder] = Registry("model")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a model builder to the registry under `name`."""
    return _BUILDERS.decorator(name)


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    return _BUILDERS.names()


def model_builder(name: str) -> ModelBuilder:
    """The builder registered under `name`; `UnknownNameError` listing the known models otherwise."""
    return _BUILDERS[name]


def model_options(name: str) -> list[str]:
    """Options the builder of model `name` takes besides `num_classes` and `in_channels`, in order.

    Callers pass an option such as `image_size` only to models that list it.
    """
    return [p for p in inspect.signature(_BUILDERS[name]).parameters if p not in _COMMON_ARGUMENTS]


def build(name: str, num_classes: int = 10, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build registered model `name` with freshly initialised weights (never downloaded).

    `options` (e.g. `width`, `depth`) go to the builder; one it does not take is an error naming
    the options it does take.
    """
    accepted = model_options(name)
    if not is_integer(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not is_integer(in_channels) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    check_options(f"model {name!r}", options, accepted)
    return _BUILDERS[name](num_classes=num_classes, in_channels=in_channels, **options)


def scaled_channels(base: int, width: float) -> int:
    """`base` channels (or units) times the width multiplier, rounded, at least 1.

    Raises `ConfigError` when `width` is not a positive number up to `randsparse.schema.MAX_WIDTH`
    (beyond it no layer fits in memory), so every builder refuses it alike.
    """
    if not is_real(width) or not (0 < width <= MAX_WIDTH):
        raise ConfigError(f"width must be a positive number up to {MAX_WIDTH:g} (e.g. 1.0, 0.5, 2), got {width!r}")
    return max(1, round(base * width))


def check_init_mode(init_mode: str) -> None:
    """Refuse an `init_mode` other than ``"fan_in"`` or ``"fan_out"`` with a `ConfigError`."""
    if init_mode not in ("fan_in", "fan_out"):
        raise ConfigError(f"init_mode must be 'fan_in' or 'fan_out', got {init_mode!r}")


def kaiming_init_(model: nn.Module, init_mode: InitMode) -> nn.Module:
    """Initialise `model` in place as in the random-pruning paper and return it.

    Conv and Linear weights are Kaiming-normal for ReLU networks with `init_mode` ("fan_in" keeps
    the forward variance, "fan_out" the backward one); normalisation layers start at scale 1,
    shift 0. Biases keep PyTorch's default.
    """
    check_init_mode(init_mode)
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode=init_mode, nonlinearity="relu")
        elif isinstance(module, nn.modules.batchnorm._NormBase) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model

"""The model registry (`register_model`, `build`) and the width multiplier every builder shares."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from randsparse.errors import ConfigError, is_integer, is_real
from randsparse.registry import Registry, check_options
from randsparse.schema import MAX_WIDTH

ModelBuilder = Callable[..., nn.Module]

# Arguments every builder takes and `build` passes itself; the rest are the builder's options.
_COMMON_ARGUMENTS = ("num_classes", "in_channels")

_BUILDERS: Registry[ModelBuilder] = Registry("model")
# What each registration declares of its architecture: family, and depth/width when fixed by the name.
_METADATA: dict[str, dict[str, Any]] = {}


def register_model(
    name: str, *, family: str | None = None, depth: int | None = None, width: float | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a model builder to the registry under `name`.

    `family` (default: `name`) groups architectures in reports (``resnet``, ``vgg``, ...); `depth`
    and `width` are declared by models whose name fixes them (``resnet56``, ``wrn28_10``), the
    others have them as options. See `randsparse.models.spec.ModelSpec.architecture`.
    """
    declared = {"family": family or name, "depth": depth, "width": width}
    register = _BUILDERS.decorator(name)

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        register(builder)
        _METADATA[name] = {key: value for key, value in declared.items() if value is not None}
        return builder

    return decorate


def register_variant(name: str, base: ModelBuilder, doc: str, *, family: str, **fixed: Any) -> None:
    """Register `name` as builder `base` with the arguments in `fixed` set (``resnet56``, ``wrn28_10``).

    The variant takes `base`'s other options, with their defaults and type hints; a fixed
    ``depth``/``width`` is declared in its metadata (`model_metadata`).
    """

    def builder(**options: Any) -> nn.Module:
        return base(**fixed, **options)

    signature = inspect.signature(base)
    builder.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in fixed]
    )
    builder.__annotations__ = {k: v for k, v in base.__annotations__.items() if k not in fixed}
    builder.__wrapped__ = base  # type: ignore[attr-defined]  # its hints resolve in base's module
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    register_model(name, family=family, depth=fixed.get("depth"), width=fixed.get("width"))(builder)


def model_metadata(name: str) -> dict[str, Any]:
    """What the registration of model `name` declares: ``family``, and ``depth``/``width`` if fixed."""
    _BUILDERS[name]
    return dict(_METADATA.get(name, {"family": name}))


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

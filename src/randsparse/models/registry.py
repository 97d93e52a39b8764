"""The model registry: one decorator to add a builder, one `build` to make any model by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from randsparse.errors import ConfigError, UnknownNameError

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a model builder to the registry under `name`."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorate


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_BUILDERS)


def build(name: str, num_classes: int = 10, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build registered model `name` with freshly initialised weights (never downloaded).

    `options` (e.g. `width`, `depth`) go to the builder; one it does not take is an error naming
    the options it does take.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise UnknownNameError("model", name, list(_BUILDERS)) from None
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("num_classes", "in_channels")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}"
            f" (it takes: {', '.join(accepted) or 'no options'})"
        )
    return builder(num_classes=num_classes, in_channels=in_channels, **options)

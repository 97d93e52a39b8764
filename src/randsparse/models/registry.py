"""The model registry (`register_model`, `build`) and the width multiplier every builder shares.

Besides the registered names, a model name may be (resolved on first use, see `model_builder`):

- an import path ``package.module:builder`` to a builder ``(num_classes, in_channels, **options)``;
- a name an installed package registers under the entry-point group ``randsparse.models``
  (`ENTRY_POINT_GROUP`), whose object is such a builder (or a module registering it itself);
- ``torchvision/<name>`` (`randsparse.models.torchvision_zoo`) or ``timm/<name>``
  (`randsparse.models.timm_zoo`, optional extra ``timm``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from randsparse.errors import ConfigError, PluginError, UnknownNameError, is_integer, is_real
from randsparse.plugins import entry_point_names, is_import_path, load_entry_point, load_import_path
from randsparse.registry import Registry, check_options
from randsparse.schema import MAX_WIDTH

ModelBuilder = Callable[..., nn.Module]

# Arguments every builder takes and `build` passes itself; the rest are the builder's options.
_COMMON_ARGUMENTS = ("num_classes", "in_channels")

# Installed packages register model builders under this entry-point group.
ENTRY_POINT_GROUP = "randsparse.models"
# The forms a model name can take besides a registered one, for messages.
_OTHER_FORMS = ("an import path <package.module:builder>", "torchvision/<name>", "timm/<name>")


def _resolve(name: str) -> ModelBuilder | None:
    """The builder of a name that was never registered (import path, entry point, torchvision/timm)."""
    if is_import_path(name):
        return _checked_builder(name, load_import_path("model", name))
    if name.startswith("torchvision/"):
        from randsparse.models.torchvision_zoo import torchvision_builder

        return torchvision_builder(name.removeprefix("torchvision/"))
    if name.startswith("timm/"):
        from randsparse.models.timm_zoo import timm_builder

        return timm_builder(name.removeprefix("timm/"))
    found = load_entry_point("model", ENTRY_POINT_GROUP, name)
    if found is None:
        error = UnknownNameError("model", name, available_models())
        error.args = (f"{error}; or {', '.join(_OTHER_FORMS)}",)
        raise error
    if name in _BUILDERS:  # the plugin's module registered the name itself when imported
        return _BUILDERS[name]
    return _checked_builder(name, found)


def _checked_builder(name: str, found: object) -> ModelBuilder:
    if not callable(found):
        kind = type(found).__name__
        raise PluginError(f"model plugin {name!r} is a {kind}, not a builder (num_classes, in_channels, **options)")
    try:
        parameters = inspect.signature(found).parameters
    except (TypeError, ValueError):  # a builtin without a signature: taken on trust
        return found  # type: ignore[return-value]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    missing = [arg for arg in _COMMON_ARGUMENTS if arg not in parameters and not takes_any]
    if missing:
        raise PluginError(f"model plugin {name!r} does not take {' and '.join(missing)}; a builder must take both")
    return found  # type: ignore[return-value]


_BUILDERS: Registry[ModelBuilder] = Registry("model", _resolve)
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
    """Names of every registered model and of every model an installed package registers (entry points), sorted.

    Import paths and ``torchvision/<name>`` / ``timm/<name>`` are accepted too but not listed here.
    """
    return sorted({*_BUILDERS.names(), *entry_point_names(ENTRY_POINT_GROUP)})


def model_builder(name: str) -> ModelBuilder:
    """The builder of model `name`: registered, an import path, an entry point, ``torchvision/`` or ``timm/``.

    Raises `UnknownNameError` listing the known models (close matches for torchvision and timm),
    `PluginError` when a plugin cannot be imported, `MissingExtraError` when timm is not installed.
    """
    return _BUILDERS[name]


def model_options(name: str) -> list[str]:
    """Named options the builder of model `name` takes besides `num_classes` and `in_channels`, in order.

    Callers pass an option such as `image_size` only to models that list it; a builder that also
    takes ``**options`` accepts any other (`takes_any_option`).
    """
    parameters = inspect.signature(_BUILDERS[name]).parameters.values()
    return [p.name for p in parameters if p.name not in _COMMON_ARGUMENTS and p.kind not in _VARIADIC]


def takes_any_option(name: str) -> bool:
    """Whether the builder of model `name` takes ``**options`` (torchvision, timm, many plugins)."""
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(_BUILDERS[name]).parameters.values())


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


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
    if not takes_any_option(name):
        check_options(f"model {name!r}", options, accepted)
    model = _BUILDERS[name](num_classes=num_classes, in_channels=in_channels, **options)
    if not isinstance(model, nn.Module):
        raise PluginError(f"model {name!r}: its builder returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def scaled_channels(base: int, width: float) -> int:
    """`base` channels (or units) times the width multiplier, rounded, at least 1.

    Raises `ConfigError` when `width` is not a positive number up to `randsparse.schema.MAX_WIDTH`
    (beyond it no layer fits in memory), so every builder refuses it alike.
    """
    if not is_real(width) or not (0 < width <= MAX_WIDTH):
        raise ConfigError(f"width must be a positive number up to {MAX_WIDTH:g} (e.g. 1.0, 0.5, 2), got {width!r}")
    return max(1, round(base * width))

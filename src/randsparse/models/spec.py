"""`ModelSpec`: everything that rebuilds one architecture (name, classes, channels, builder options), and what it is.

The one place a model is made from a description: training, `load_run`, evaluation, export, the
benchmarks and `randsparse plan` all build through `ModelSpec.build`, and read a model's family,
depth and width through `ModelSpec.architecture` (from what the registry declares of each model,
never from its name). Its JSON form (`to_dict`) is what sparse-model files and run summaries store.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from randsparse.errors import ConfigError
from randsparse.models.registry import build, model_builder, model_metadata, model_options

_KEYS = ("name", "num_classes", "in_channels", "options")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model `name` with `num_classes` outputs on `in_channels`-channel images.

    `options` go to the builder (``width``, ``depth``, ``image_size`` for an MLP, ``init_mode``, ...).
    """

    name: str
    num_classes: int = 10
    in_channels: int = 3
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any, info: Any = None) -> ModelSpec:
        """The spec of a `ModelConfig` (or its JSON form) for data like `info` (a `DatasetInfo`).

        The config's `width` and `depth` join its `options`; `info.image_size` is passed to the
        builders that take an ``image_size`` (an MLP's input size, a ViT's, a torchvision or timm
        model's: see `randsparse.models.torchvision_zoo`) unless the config sets it.
        Without `info` (enough for `architecture`), classes and channels keep their defaults.
        """
        get = config.get if isinstance(config, Mapping) else partial(getattr, config)
        name = get("name", None)
        options = dict(get("options", None) or {})
        options.update({key: value for key in ("width", "depth") if (value := get(key, None)) is not None})
        if info is None:
            return cls(name, options=options)
        if "image_size" in model_options(name) and "image_size" not in options:
            options["image_size"] = info.image_size
        return cls(name, info.num_classes, info.channels, options)

    @classmethod
    def from_dict(cls, spec: Any) -> ModelSpec:
        """The spec of its JSON form ``{"name", "num_classes", "in_channels", "options"}``.

        Raises `ConfigError` for anything else (not a mapping, no name, unknown keys, options that
        are not a mapping). `num_classes` and `in_channels` default to 10 and 3.
        """
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise ConfigError(
                f"model_spec must be a mapping with a 'name' (and num_classes, in_channels, options), got {spec!r}"
            )
        unknown = sorted(set(spec) - set(_KEYS))
        if unknown:
            raise ConfigError(f"model_spec has unknown key(s) {', '.join(unknown)}; it takes {', '.join(_KEYS)}")
        options = spec.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"model_spec 'options' must be a mapping, got {options!r}")
        return cls(spec["name"], spec.get("num_classes", 10), spec.get("in_channels", 3), dict(options))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"name", "num_classes", "in_channels", "options"}``."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "options": dict(self.options),
        }

    def build(self, device: str | torch.device | None = None, seed: int | None = None) -> nn.Module:
        """The model, freshly initialised; on `device` (``"meta"``: shapes only), from `seed` if given.

        With a `seed` the global RNG is left as it was. Raises `ConfigError` for options the
        builder does not take, `UnknownNameError` for an unregistered name.
        """

        def make() -> nn.Module:
            if device is None:
                return build(self.name, self.num_classes, self.in_channels, **self.options)
            with torch.device(device):
                return build(self.name, self.num_classes, self.in_channels, **self.options)

        if seed is None:
            return make()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make()

    def architecture(self) -> dict[str, Any]:
        """``{"family", "depth", "width"}`` of the model: its options, else the registry's declaration.

        Depth and width come from the spec's options, else from what the model's registration
        declares (``resnet56``: depth 56; ``wrn28_10``: width 10), else from the builder's default
        for that option; depth is None for a model without one (e.g. ``small_cnn``), width 1.0.
        """
        declared = model_metadata(self.name)
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(model_builder(self.name)).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }

        def resolve(key: str) -> Any:
            for source in (self.options, declared, defaults):
                if source.get(key) is not None:
                    return source[key]
            return None

        depth, width = resolve("depth"), resolve("width")
        return {
            "family": declared.get("family", self.name),
            "depth": None if depth is None else int(depth),
            "width": 1.0 if width is None else float(width),
        }

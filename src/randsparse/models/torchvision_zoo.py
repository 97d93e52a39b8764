"""``torchvision/<name>``: every torchvision classification builder, freshly initialised (never downloaded).

`torchvision_builder(name)` wraps ``torchvision.models.get_model_builder(name)`` as a randsparse
builder ``(num_classes, in_channels, image_size, input_size, **options)``:

- weights are always ``None`` (torchvision's own random initialisation); asking for ``weights`` is
  an error;
- `num_classes` goes to torchvision; `in_channels` other than 3 replaces the stem conv
  (`randsparse.models.adapt.adapt_stem_`);
- input size: a ViT (``vit_*``) is built for the data's `image_size` rounded up to a multiple of
  its patch (Fashion-MNIST 28 → 32 for ``vit_b_16``: 2 × 2 patches) and resizes its inputs to it;
  any other model takes the data's size as it is unless that is below the smallest input
  torchvision declares for it (its weights' ``min_size``, read without downloading anything:
  ``alexnet`` 63, ``inception_v3`` 75, ``vgg*`` and ``convnext*`` 32, ``swin*`` and ``maxvit_t``
  224), in which case it resizes its inputs to that size; `input_size` sets the resize for any
  model;
- GoogLeNet and Inception v3 are built without auxiliary heads (``aux_logits=False``) unless the
  options say otherwise, so a training step gets plain logits;
- other `options` go to torchvision's builder (e.g. ``dropout``, ``stochastic_depth_prob``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from randsparse.errors import ConfigError
from randsparse.models.adapt import adapt_stem_, check_input_sizes, resize_inputs_
from randsparse.plugins import unknown_name

PREFIX = "torchvision/"

_NO_AUX = ("googlenet", "inception_v3")


def min_input_size(name: str) -> int:
    """The smallest square input torchvision declares for model `name` (its weights' ``min_size``), else 1."""
    from torchvision import models

    try:
        weights = next(iter(models.get_model_weights(name)))
        return int(max(weights.meta.get("min_size", (1, 1))))
    except (ValueError, KeyError, StopIteration, TypeError):
        return 1


def torchvision_names() -> list[str]:
    """Every torchvision classification builder name (``torchvision.models.list_models``), sorted."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def torchvision_builder(name: str) -> Any:
    """The randsparse builder of ``torchvision/<name>``; `UnknownNameError` with close matches otherwise."""
    names = torchvision_names()
    if name not in names:
        listing = "`randsparse models --source torchvision`"
        raise unknown_name("model", PREFIX + name, [PREFIX + n for n in names], listing)

    def builder(
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int | None = None,
        input_size: int | None = None,
        **options: Any,
    ) -> nn.Module:
        from torchvision import models

        what = f"model {PREFIX + name!r}"
        if "weights" in options or "progress" in options:
            raise ConfigError(f"{what} is always built with random weights (never downloaded); drop 'weights'")
        check_input_sizes(what, image_size, input_size)
        kwargs = dict(options)
        if name in _NO_AUX:
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)
        target = input_size
        if name.startswith("vit_"):
            patch = int(re.search(r"_(\d+)$", name).group(1))  # type: ignore[union-attr]
            target = math.ceil((input_size or image_size or 224) / patch) * patch
            kwargs.setdefault("image_size", target)
            target = kwargs["image_size"]
        elif target is None and image_size is not None and image_size < min_input_size(name):
            target = min_input_size(name)
        make = models.get_model_builder(name)
        try:
            try:
                model = make(weights=None, num_classes=num_classes, **kwargs)
            except NotImplementedError:  # an init that reads values (RegNet) cannot run on meta
                device = torch.get_default_device()
                with torch.device("cpu"):
                    model = make(weights=None, num_classes=num_classes, **kwargs).to(device)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"{what} cannot be built with options {kwargs}: {exc}") from None
        adapt_stem_(model, in_channels, what)
        return resize_inputs_(model, target)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"torchvision's {name}, random initialisation (never downloaded)."
    return builder

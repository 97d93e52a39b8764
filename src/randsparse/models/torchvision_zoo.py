"""``torchvision/<name>``: every torchvision classification builder, freshly initialised (never downloaded).

`torchvision_builder(name)` wraps ``torchvision.models.get_model_builder(name)`` as a randsparse
builder ``(num_classes, in_channels, image_size, input_size, **options)``:

- weights are always ``None`` (torchvision's own random initialisation); asking for ``weights`` is
  an error;
- `num_classes` goes to torchvision; `in_channels` other than 3 replaces the stem conv
  (`randsparse.models.adapt.adapt_stem_`);
- input size: a ViT (``vit_*``) is built for the data's `image_size` rounded up to a multiple of
  its patch (Fashion-MNIST 28 → 32 for ``vit_b_16``: 2 × 2 patches) and resizes its inputs to it;
  ``maxvit_t`` is built for 224 and resizes to it; every other model takes the data's size as it
  is, unless `input_size` asks for a resize (e.g. ``alexnet`` needs at least 63 pixels);
- GoogLeNet and Inception v3 are built without auxiliary heads (``aux_logits=False``) unless the
  options say otherwise, so a training step gets plain logits;
- other `options` go to torchvision's builder (e.g. ``dropout``, ``stochastic_depth_prob``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import nn

from randsparse.errors import ConfigError, is_integer
from randsparse.models.adapt import adapt_stem_, resize_inputs_
from randsparse.plugins import unknown_name

PREFIX = "torchvision/"

# Models built for one input size, and that size (ViTs: None, the data's rounded up to the patch).
_FIXED_INPUT = {"maxvit_t": 224}
_NO_AUX = ("googlenet", "inception_v3")


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
        for size, key in ((image_size, "image_size"), (input_size, "input_size")):
            if size is not None and (not is_integer(size) or size < 1):
                raise ConfigError(f"{what}: {key} must be a positive integer (pixels), got {size!r}")
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
        elif name in _FIXED_INPUT:
            target = target or _FIXED_INPUT[name]
        try:
            model = models.get_model_builder(name)(weights=None, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"{what} cannot be built with options {kwargs}: {exc}") from None
        adapt_stem_(model, in_channels, what)
        return resize_inputs_(model, target)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"torchvision's {name}, random initialisation (never downloaded)."
    return builder

"""``timm/<name>``: every timm model, freshly initialised (never downloaded); timm is the optional extra ``timm``.

`timm_builder(name)` wraps ``timm.create_model(name, pretrained=False, ...)`` as a randsparse
builder ``(num_classes, in_channels, image_size, input_size, **options)``:

- `num_classes` and `in_channels` go to timm (``num_classes``, ``in_chans``: timm adapts the stem
  itself); ``pretrained`` is refused;
- input size: a patch model (a ``patch<N>`` in its name, or a ``patch_size`` option) is built for
  the data's `image_size` rounded up to a multiple of the patch (``img_size``; Fashion-MNIST 28 with
  ``patch_size: 4`` → 28, 7 × 7 patches), the small input its own data gives, unless the options
  set ``img_size``. A model whose config says it needs a fixed input (``fixed_input_size``: ViT,
  DeiT, ...) resizes its inputs to the size it was built for (its ``patch_embed.img_size``, else its
  ``pretrained_cfg`` ``input_size``); any other resizes inputs smaller than its total stride (the
  largest ``feature_info`` reduction: 32 for ConvNeXt, whose last 2 × 2 downsampling fails on 28
  pixels) up to that stride; `input_size` forces a resize for any model;
- other `options` go to timm (e.g. ``depth``, ``embed_dim``, ``num_heads``, ``drop_rate``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import nn

from randsparse.errors import ConfigError, is_integer
from randsparse.models.adapt import check_input_sizes, resize_inputs_
from randsparse.plugins import require_extra, unknown_name

PREFIX = "timm/"
_BUILD_ERRORS = (TypeError, ValueError, AssertionError, RuntimeError)


def _total_stride(model: nn.Module) -> int:
    """The largest feature stride timm declares for `model` (``feature_info`` reductions), else 1."""
    info = getattr(model, "feature_info", None) or []
    return max((int(f.get("reduction", 1)) for f in info if isinstance(f, dict)), default=1)


def timm_names() -> list[str]:
    """Every model name timm registers, sorted; `MissingExtraError` when timm is not installed."""
    timm = require_extra("timm", "timm", "timm models")
    return sorted(timm.list_models())


def timm_builder(name: str) -> Any:
    """The randsparse builder of ``timm/<name>``; `UnknownNameError` with close matches otherwise."""
    timm = require_extra("timm", "timm", f"model {PREFIX + name!r}")
    if not timm.is_model(name):
        names = [PREFIX + n for n in timm_names()]
        raise unknown_name("model", PREFIX + name, names, "`randsparse models --source timm`")

    def builder(
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int | None = None,
        input_size: int | None = None,
        **options: Any,
    ) -> nn.Module:
        what = f"model {PREFIX + name!r}"
        if options.get("pretrained") or "pretrained_cfg_overlay" in options:
            raise ConfigError(f"{what} is always built with random weights (never downloaded); drop 'pretrained'")
        options.pop("pretrained", None)
        check_input_sizes(what, image_size, input_size)

        def create(**kwargs: Any) -> nn.Module:
            try:
                return timm.create_model(
                    name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
                )
            except _BUILD_ERRORS as exc:
                raise ConfigError(f"{what} cannot be built with options {kwargs}: {exc}") from None

        patch = options.get("patch_size")
        if patch is None and (found := re.search(r"patch(\d+)", name)):
            patch = int(found.group(1))
        wanted = input_size or image_size
        if is_integer(patch) and wanted is not None and "img_size" not in options:
            try:
                model = create(**options, img_size=math.ceil(wanted / patch) * patch)
            except ConfigError:  # a patch model without an img_size option: its own default
                model = create(**options)
        else:
            model = create(**options)
        target = input_size
        if target is None and getattr(model, "pretrained_cfg", {}).get("fixed_input_size"):
            built = getattr(getattr(model, "patch_embed", None), "img_size", None)
            target = int(built[0]) if built else int(model.pretrained_cfg["input_size"][-1])
        elif target is None and image_size is not None and image_size < (stride := _total_stride(model)):
            target = stride  # ConvNeXt's last 2×2 downsampling needs at least its total stride, 32
        return resize_inputs_(model, target)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"timm's {name}, random initialisation (never downloaded)."
    return builder

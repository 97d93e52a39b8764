"""Fitting a model built elsewhere (torchvision, timm) to the data: its stem's input channels and its input size.

- `adapt_stem_` replaces the first 3-channel conv of a model by one taking `in_channels`, with
  weights derived from the original ones as timm's ``adapt_input_conv`` does: for one channel the
  RGB filters are summed (a grey image then gives what the model gave the same image in RGB), for
  more channels they are tiled and scaled by ``3 / in_channels``, so the stem's output keeps the
  initialisation's scale.
- `check_input_sizes` refuses an ``image_size`` / ``input_size`` option that is not a pixel count.
- `resize_inputs_` makes a model bilinearly resize every input to the size it declares (a ViT
  built for 32×32 patches fed 28×28 Fashion-MNIST), with a forward pre-hook: parameter names and
  the state dict stay the model's own, and the hook travels with copies and pickles.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from randsparse.errors import ConfigError, is_integer


def adapt_stem_(model: nn.Module, in_channels: int, what: str) -> nn.Module:
    """Give `model`'s first 3-input-channel Conv2d (in registration order) `in_channels` inputs, in place.

    Nothing changes for ``in_channels == 3``. Raises `ConfigError` naming `what` when the model has
    no such conv (or it is grouped).
    """
    if in_channels == 3:
        return model
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if found is None:
        raise ConfigError(f"{what} has no 3-channel stem conv to adapt to in_channels={in_channels}")
    name, module = found
    if module.groups != 1:
        raise ConfigError(f"{what}: its stem conv {name!r} is grouped; cannot adapt it to in_channels={in_channels}")
    stem = nn.Conv2d(
        in_channels,
        module.out_channels,
        module.kernel_size,  # type: ignore[arg-type]
        stride=module.stride,  # type: ignore[arg-type]
        padding=module.padding,  # type: ignore[arg-type]
        dilation=module.dilation,  # type: ignore[arg-type]
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    with torch.no_grad():
        weight = module.weight
        if in_channels == 1:
            stem.weight.copy_(weight.sum(dim=1, keepdim=True))
        else:
            tiled = weight.repeat(1, math.ceil(in_channels / 3), 1, 1)[:, :in_channels]
            stem.weight.copy_(tiled * (3 / in_channels))
        if module.bias is not None:
            stem.bias.copy_(module.bias)  # type: ignore[union-attr]
    model.set_submodule(name, stem)
    return model


class InputResize:
    """Forward pre-hook resizing a model's image input (N×C×H×W) to `size` × `size`, bilinearly."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[-2:]) == (self.size, self.size):
            return None
        resized = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (resized, *args[1:])

    def __repr__(self) -> str:
        return f"InputResize({self.size})"


def resize_inputs_(model: nn.Module, size: int | None) -> nn.Module:
    """Make `model` resize every input to `size` × `size` pixels (None: leave it as is); returns `model`.

    Raises `ConfigError` when `size` is not a positive integer.
    """
    if size is None:
        return model
    if not is_integer(size) or size < 1:
        raise ConfigError(f"input_size must be a positive integer (pixels), got {size!r}")
    model.register_forward_pre_hook(InputResize(size))
    return model


def check_input_sizes(what: str, image_size: Any, input_size: Any) -> None:
    """Refuse an ``image_size`` or ``input_size`` builder option (pixels) that is not a positive integer.

    `what` names the model in the one-line `ConfigError` (e.g. ``"model 'timm/vit_tiny_patch16_224'"``).
    """
    for size, key in ((image_size, "image_size"), (input_size, "input_size")):
        if size is not None and (not is_integer(size) or size < 1):
            raise ConfigError(f"{what}: {key} must be a positive integer (pixels), got {size!r}")

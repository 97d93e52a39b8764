"""Layer-type groups (convs, norms, attention, weight layers) and each weight layer's geometry.

The one home of "which module types are convs / norms" and of how a weight's shape reads: a
Conv weight is ``(out, in / groups, *kernel)``, a transposed conv's ``(in, out / groups, *kernel)``
and a Linear's ``(out, in)``. A fused attention projection stacks `blocks` projections along its
first dimension: `nn.MultiheadAttention`'s ``in_proj_weight`` is q, k and v, three ``(E, E)``
projections in one ``(3E, E)`` tensor (`ATTENTION_WEIGHTS`), and so is a Linear named ``qkv`` with
three times as many outputs as inputs (timm's and most ViTs' attention). Anything that needs a
layer's outputs, fan-in or fan-out asks `layer_geometry` (from a module) or `shape_outputs` (from a
shape alone) instead of indexing a shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Every module whose `weight` is a matrix of connections (conv of any kind, or Linear).
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)
# nn.MultiheadAttention's projection weights (the output projection is its Linear ``out_proj``), by
# attribute: q, k, v fused in one (3E, E) tensor, or separate when kdim/vdim differ from E.
ATTENTION_WEIGHTS: dict[str, int] = {"in_proj_weight": 3, "q_proj_weight": 1, "k_proj_weight": 1, "v_proj_weight": 1}
# Embedding tables: lookups, not connections; prunable only when asked (`PrunableSelector.embeddings`).
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
# Modules whose weights are scale/shift vectors, never connections (BatchNorm, InstanceNorm, ...).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class LayerGeometry:
    """Units of a weight layer: `out` and `in_` channels (features), `kernel` elements, `groups`.

    `kernel_size` is the kernel's extent per dimension (empty for a Linear). `fan_in` (inputs per
    output) and `fan_out` (outputs per input) count the connections one unit has. `blocks` > 1 for
    a weight stacking that many projections of ``(out, in)`` along its first dimension (q, k, v in
    an attention's ``in_proj_weight``): `out` and `layout` are one projection's, `outputs` all of them.
    """

    out: int
    in_: int
    kernel: int = 1
    groups: int = 1
    kernel_size: tuple[int, ...] = ()
    blocks: int = 1

    @property
    def outputs(self) -> int:
        """Output units of the whole weight: ``out × blocks``."""
        return self.out * self.blocks

    @property
    def layout(self) -> tuple[int, ...]:
        """The weight's shape in a Conv's layout, ``(out, in / groups, *kernel_size)``, whatever the layer type."""
        return (self.out, self.in_ // self.groups, *self.kernel_size)

    @property
    def fan_in(self) -> int:
        """Weights feeding one output unit: ``in / groups * kernel``."""
        return self.in_ // self.groups * self.kernel

    @property
    def fan_out(self) -> int:
        """Weights leaving one input unit: ``out / groups * kernel``."""
        return self.out // self.groups * self.kernel


class LayerShape(tuple):  # type: ignore[type-arg]
    """A weight's shape (a plain tuple to every rule) that also carries the layer's `geometry`.

    `prunable_shapes` gives these, so a shape-only rule can still read a transposed conv's outputs
    right (`shape_outputs`).
    """

    geometry: LayerGeometry

    def __new__(cls, shape: tuple[int, ...], geometry: LayerGeometry) -> LayerShape:
        obj = super().__new__(cls, shape)
        obj.geometry = geometry
        return obj

    def __reduce__(self) -> tuple[object, ...]:
        return (LayerShape, (tuple(self), self.geometry))


def layer_geometry(module: nn.Module, weight: torch.Tensor | None = None, attr: str = "weight") -> LayerGeometry:
    """(out, in, kernel, groups, blocks) of the weight `attr` of a Linear, Conv, ConvTranspose or MultiheadAttention.

    An attention's ``in_proj_weight`` is three ``(E, E)`` blocks; any other module is read by
    `shape_geometry` from `weight` (or its attribute `attr`). Raises `TypeError` when there is no
    weight to read.
    """
    if isinstance(module, nn.MultiheadAttention) and attr in ATTENTION_WEIGHTS:
        weight = getattr(module, attr)
        blocks = ATTENTION_WEIGHTS[attr]
        return LayerGeometry(weight.shape[0] // blocks, weight.shape[1], blocks=blocks)
    if isinstance(module, nn.modules.conv._ConvNd):
        size = tuple(module.kernel_size)
        return LayerGeometry(module.out_channels, module.in_channels, math.prod(size), module.groups, size)
    if isinstance(module, nn.Linear):
        return LayerGeometry(module.out_features, module.in_features)
    weight = weight if weight is not None else getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight whose geometry could be read")
    return shape_geometry(tuple(weight.shape))


def shape_geometry(shape: tuple[int, ...]) -> LayerGeometry:
    """Geometry of a shape: its own if it is a `LayerShape`, else read as ``(out, in, *kernel)``."""
    if isinstance(shape, LayerShape):
        return shape.geometry
    if not shape:
        return LayerGeometry(1, 1)
    if len(shape) == 1:
        return LayerGeometry(shape[0], 1)
    return LayerGeometry(shape[0], shape[1], math.prod(shape[2:]), 1, tuple(shape[2:]))


def weight_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` in a Conv's layout ``(out, in / groups, *kernel)``: a `LayerShape`'s own, else `shape` as given."""
    return shape.geometry.layout if isinstance(shape, LayerShape) else tuple(shape)


def shape_outputs(shape: tuple[int, ...]) -> int:
    """Output units of the layer owning a weight of `shape` (`shape_geometry(shape).outputs`)."""
    return shape_geometry(shape).outputs

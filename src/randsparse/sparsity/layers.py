"""Which parameters of a model are prunable, in the model's registration order.

By default the weight of every Conv1d/2d/3d (grouped and depthwise included) and Linear module is
prunable, and so are `nn.MultiheadAttention`'s projections: ``in_proj_weight`` (q, k, v as one
``(3E, E)`` tensor; its shape carries three ``(E, E)`` blocks, see `layer_types`) or the separate
``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` when kdim/vdim differ, and
``out_proj.weight`` (a Linear). Normalisation weights, biases, positional and class tokens (plain
parameters of no weight layer) never are, whatever the filters say; embedding tables only when
`PrunableSelector.embeddings` asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from randsparse.errors import ConfigError
from randsparse.sparsity.layer_types import (
    ATTENTION_WEIGHTS,
    CONV_TYPES,
    EMBEDDING_TYPES,
    NORM_TYPES,
    LayerGeometry,
    LayerShape,
    layer_geometry,
)

DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (*CONV_TYPES, nn.Linear, nn.MultiheadAttention)

# Modules whose weights are scale/shift vectors, never connections: excluded even if a user's
# type filter would admit them.
_NEVER_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = NORM_TYPES

Shape = tuple[int, ...]


@dataclass(frozen=True)
class PrunableSelector:
    """Filters deciding which module weights are prunable.

    A weight is prunable when its module is an instance of one of `types` (or an embedding and
    `embeddings` is true) and of none of `exclude_types`, its name (``"<module>.weight"``,
    ``"<attention>.in_proj_weight"``) matches `include` (if given, `re.search`) and does not match
    `exclude` (if given).
    """

    types: tuple[type[nn.Module], ...] = DEFAULT_PRUNABLE_TYPES
    exclude_types: tuple[type[nn.Module], ...] = ()
    include: str | None = None
    exclude: str | None = None
    embeddings: bool = False
    _include_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _exclude_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_include_re", _compile(self.include, "include"))
        object.__setattr__(self, "_exclude_re", _compile(self.exclude, "exclude"))

    def admits(self, module: nn.Module, param_name: str) -> bool:
        """True when `module`'s weight, named `param_name`, is prunable under these filters."""
        if isinstance(module, _NEVER_PRUNABLE_TYPES):
            return False
        admitted = isinstance(module, self.types) or (self.embeddings and isinstance(module, EMBEDDING_TYPES))
        if not admitted or isinstance(module, self.exclude_types):
            return False
        if self._include_re is not None and not self._include_re.search(param_name):
            return False
        return not (self._exclude_re is not None and self._exclude_re.search(param_name))


def _compile(pattern: str | None, what: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"invalid {what} regex {pattern!r}: {exc}") from None


def prunable_parameters(model: nn.Module, selector: PrunableSelector | None = None) -> dict[str, nn.Parameter]:
    """Prunable weights of `model` by qualified name, in registration order.

    Only a module's own ``weight`` is considered (biases are never pruned), and an attention's
    projection weights (`layer_types.ATTENTION_WEIGHTS`); a weight shared by several modules is
    listed once, under its first name.
    """
    selector = selector or PrunableSelector()
    found: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        attributes = ATTENTION_WEIGHTS if isinstance(module, nn.MultiheadAttention) else ("weight",)
        for attr in attributes:
            weight = module._parameters.get(attr)
            if weight is None or id(weight) in seen:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            if selector.admits(module, name):
                found[name] = weight
                seen.add(id(weight))
    return found


def prunable_shapes(model: nn.Module, selector: PrunableSelector | None = None) -> dict[str, Shape]:
    """`{name: shape}` of the prunable weights: the input every density rule works on.

    Each shape is a `LayerShape`, a tuple that also carries its layer's geometry, so rules that
    need a layer's outputs read them right for transposed convs too, and ER/ERK see a fused q/k/v
    projection as its three ``(E, E)`` projections: an attention's ``in_proj_weight``, and a
    Linear named ``qkv`` with three times as many outputs as inputs (timm's attention).
    """
    shapes: dict[str, Shape] = {}
    for name, p in prunable_parameters(model, selector).items():
        shapes[name] = LayerShape(tuple(p.shape), weight_geometry(model, name))
    return shapes


def weight_geometry(model: nn.Module, name: str) -> LayerGeometry:
    """The geometry of `model`'s weight `name` (`layer_geometry` of its module), fused q/k/v read as three blocks.

    The one place that reads a Linear named ``qkv`` with three times as many outputs as inputs as
    three ``(E, E)`` projections. Raises `AttributeError` when `model` has no parameter `name`.
    """
    module, attr = owning_module(model, name)
    geometry = layer_geometry(module, getattr(module, attr), attr)
    if name.endswith("qkv.weight") and isinstance(module, nn.Linear) and geometry.out == 3 * geometry.in_:
        geometry = LayerGeometry(geometry.in_, geometry.in_, blocks=3)
    return geometry


def owning_module(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    """The module holding parameter `param_name` and the attribute name within it."""
    module_path, _, attr = param_name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def names_matching(names: Iterable[str], pattern: str) -> list[str]:
    """Names equal to `pattern`, or else fully matching it as a regex (for name-keyed options)."""
    names = list(names)
    if pattern in names:
        return [pattern]
    regex = _compile(pattern, "layer name")
    assert regex is not None
    return [n for n in names if regex.fullmatch(n)]

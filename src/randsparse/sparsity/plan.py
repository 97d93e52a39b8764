"""From a model and a global sparsity to per-layer densities and a drawn random mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from randsparse.errors import ConfigError
from randsparse.sparsity.distributions import layer_densities
from randsparse.sparsity.layers import PrunableSelector, prunable_shapes
from randsparse.sparsity.masks import MaskSet, Sampling


@dataclass(frozen=True)
class LayerPlan:
    """A prunable layer: its size, the density its rule asks for, and what the mask keeps."""

    name: str
    shape: tuple[int, ...]
    params: int
    density: float
    kept: int


@dataclass(frozen=True)
class SparsityPlan:
    """Per-layer densities of a rule together with the random masks drawn from them."""

    sparsity: float
    distribution: str
    layers: list[LayerPlan]
    masks: MaskSet

    @property
    def params(self) -> int:
        """Prunable weights in total."""
        return sum(layer.params for layer in self.layers)

    @property
    def kept(self) -> int:
        """Weights the drawn masks keep."""
        return sum(layer.kept for layer in self.layers)

    @property
    def density(self) -> float:
        """Realised global density of the drawn masks."""
        return self.kept / self.params

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the layers and the totals."""
        return {
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "layers": [
                {
                    "name": x.name,
                    "shape": list(x.shape),
                    "params": x.params,
                    "density": x.density,
                    "kept": x.kept,
                }
                for x in self.layers
            ],
            "total": {"params": self.params, "kept": self.kept, "density": self.density},
        }


def sparsity_to_density(sparsity: float) -> float:
    """Density (fraction kept) of a sparsity (fraction zeroed) in [0, 1); otherwise an error."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (0.0 <= sparsity < 1.0):
        raise ConfigError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    return 1.0 - float(sparsity)


def plan_sparsity(
    model: nn.Module,
    sparsity: float,
    distribution: str = "erk",
    seed: int | torch.Generator = 0,
    sampling: Sampling = "exact",
    selector: PrunableSelector | None = None,
    **options: Any,
) -> SparsityPlan:
    """Densities of `distribution` at `sparsity` for `model`'s prunable layers, and masks drawn.

    Works on shapes only, so `model` may live on the ``meta`` device.
    """
    density = sparsity_to_density(sparsity)
    shapes = prunable_shapes(model, selector)
    densities = layer_densities(shapes, density, distribution, **options)
    masks = MaskSet.random(shapes, densities, seed, sampling)
    return plan_from_masks(masks, sparsity, distribution, densities)


def plan_from_masks(
    masks: MaskSet, sparsity: float, distribution: str, densities: dict[str, float] | None = None
) -> SparsityPlan:
    """A plan describing existing `masks`; without `densities`, each layer's realised density."""
    layers = [
        LayerPlan(s.name, s.shape, s.params, densities[s.name] if densities else s.density, s.kept)
        for s in masks.summary()
    ]
    return SparsityPlan(sparsity, distribution, layers, masks)

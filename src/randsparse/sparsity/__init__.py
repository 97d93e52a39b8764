"""The sparsity core: prunable layers, layer-wise density rules, random masks, fixed-mask training."""

from randsparse.sparsity.distributions import (
    available_distributions,
    layer_densities,
    load_custom_densities,
    register_distribution,
)
from randsparse.sparsity.enforce import FixedMask, attach, masks_from_model
from randsparse.sparsity.layers import PrunableSelector, prunable_parameters, prunable_shapes
from randsparse.sparsity.masks import LayerSummary, MaskSet
from randsparse.sparsity.plan import SparsityPlan, plan_sparsity, sparsity_to_density

__all__ = [
    "FixedMask",
    "LayerSummary",
    "MaskSet",
    "PrunableSelector",
    "SparsityPlan",
    "attach",
    "available_distributions",
    "layer_densities",
    "load_custom_densities",
    "masks_from_model",
    "plan_sparsity",
    "prunable_parameters",
    "prunable_shapes",
    "register_distribution",
    "sparsity_to_density",
]

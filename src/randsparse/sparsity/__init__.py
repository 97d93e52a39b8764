"""The sparsity core: prunable layers, layer-wise density rules, saliency scores, masks, fixed-mask training."""

from randsparse.sparsity.distributions import (
    available_distributions,
    layer_densities,
    load_custom_densities,
    register_distribution,
)
from randsparse.sparsity.enforce import FixedMask, attach, masks_from_model
from randsparse.sparsity.layers import PrunableSelector, prunable_parameters, prunable_shapes
from randsparse.sparsity.masks import LayerSummary, MaskSet, load_masks, save_masks
from randsparse.sparsity.plan import SparsityPlan, plan_sparsity, sparsity_to_density
from randsparse.sparsity.saliency import available_scorers, compute_scores, register_scorer
from randsparse.sparsity.selection import masks_from_scores, score_densities

__all__ = [
    "FixedMask",
    "LayerSummary",
    "MaskSet",
    "PrunableSelector",
    "SparsityPlan",
    "attach",
    "available_distributions",
    "available_scorers",
    "compute_scores",
    "layer_densities",
    "load_custom_densities",
    "load_masks",
    "masks_from_model",
    "masks_from_scores",
    "plan_sparsity",
    "prunable_parameters",
    "prunable_shapes",
    "register_distribution",
    "register_scorer",
    "save_masks",
    "score_densities",
    "sparsity_to_density",
]

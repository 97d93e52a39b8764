"""From saliency scores to per-layer densities (ratio mode) or to the top-scored weights (mask mode).

Scores map each prunable weight's name to a tensor of the weight's shape; a higher score means a
more important weight, kept first. Selection is global: the highest scores over all layers are
kept. Ties are broken by layer name, then by flat position, so the result never depends on the
order of a dict. The layer-collapse guard keeps a floor of weights in every layer (a layer with no
weights disconnects the network) and says, through `logging`, which layers it had to raise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from randsparse.errors import ConfigError, InfeasibleBudgetError, is_integer, is_real
from randsparse.sparsity.distributions import check_density
from randsparse.sparsity.layer_types import shape_outputs
from randsparse.sparsity.layers import Shape
from randsparse.sparsity.masks import MaskSet, kept_count

logger = logging.getLogger(__name__)

# How many layer names a warning lists before it says "and N more".
_NAMES_SHOWN = 8


def check_scores(shapes: Mapping[str, Shape], scores: Mapping[str, torch.Tensor]) -> None:
    """Raise `ConfigError` unless `scores` holds one finite tensor of the right shape per layer of `shapes`."""
    if not isinstance(scores, Mapping):
        raise ConfigError(f"scores must map layer names to tensors, got {type(scores).__name__}")
    for name in scores:
        if name not in shapes:
            raise ConfigError(f"scores given for {name!r}, which is not a prunable layer")
    for name, shape in shapes.items():
        if name not in scores:
            raise ConfigError(f"no scores for prunable layer {name!r}; compute them on the same model and selector")
        score = scores[name]
        if not isinstance(score, torch.Tensor) or not score.is_floating_point():
            raise ConfigError(f"scores of layer {name!r} must be a floating-point tensor")
        if tuple(score.shape) != tuple(shape):
            raise ConfigError(f"scores of layer {name!r} have shape {tuple(score.shape)}, the weight {tuple(shape)}")
        if not bool(torch.isfinite(score).all()):
            raise ConfigError(f"scores of layer {name!r} are not all finite (NaN or inf); check the model and data")


def layer_floors(
    shapes: Mapping[str, Shape], min_weights_per_output: int = 1, min_density: float = 0.0
) -> dict[str, int]:
    """The fewest weights the collapse guard lets each layer keep.

    A layer's floor is ``max(min_weights_per_output * output units, ceil(min_density * size))``,
    capped at its size; the output units are the layer's (`shape_outputs`: a Conv's or Linear's
    first dimension, a transposed conv's second times its groups).
    """
    if not is_integer(min_weights_per_output):
        raise ConfigError(f"min_weights_per_output must be a non-negative integer, got {min_weights_per_output!r}")
    if min_weights_per_output < 0:
        raise ConfigError(f"min_weights_per_output must be a non-negative integer, got {min_weights_per_output!r}")
    if not is_real(min_density) or not (0.0 <= min_density <= 1.0):
        raise ConfigError(f"min_density must lie in [0, 1], got {min_density!r}")
    floors = {}
    for name, shape in shapes.items():
        size = math.prod(shape)
        outputs = shape_outputs(shape)
        by_density = math.ceil(min_density * size - 1e-9 * size)
        floors[name] = min(size, max(min_weights_per_output * outputs, by_density))
    return floors


def _flat(scores: Mapping[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """The scores of `names`, flattened and concatenated on the CPU in one floating dtype."""
    dtype = torch.float64 if any(scores[n].dtype == torch.float64 for n in names) else torch.float32
    return torch.cat([scores[n].detach().reshape(-1).to("cpu", dtype) for n in names])


def top_flags(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean flags of the `keep` highest entries of 1-D `values`; among equal values the first win."""
    size = values.numel()
    if keep <= 0:
        return torch.zeros(size, dtype=torch.bool)
    if keep >= size:
        return torch.ones(size, dtype=torch.bool)
    threshold = torch.kthvalue(values, size - keep + 1).values  # the keep-th largest value
    flags = values > threshold
    missing = keep - int(flags.sum())
    if missing > 0:
        ties = torch.nonzero(values == threshold).squeeze(1)[:missing]
        flags[ties] = True
    return flags


def global_top_masks(scores: Mapping[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Boolean masks (CPU) keeping the `keep` highest scores over all layers together."""
    names = sorted(scores)
    if not names:
        return {}
    flags = top_flags(_flat(scores, names), keep)
    pieces = flags.split([scores[n].numel() for n in names])
    by_name = {n: piece.reshape(scores[n].shape) for n, piece in zip(names, pieces, strict=True)}
    return {n: by_name[n] for n in scores}


@dataclass(frozen=True)
class TopCounts:
    """Per-layer counts of a global top-score selection, and the layers the guard raised to their floor."""

    counts: dict[str, int]
    raised: list[str]


def top_counts(scores: Mapping[str, torch.Tensor], keep: int, floors: Mapping[str, int] | None = None) -> TopCounts:
    """How many of the `keep` highest scores fall in each layer, every layer holding at least its floor.

    A layer whose share falls below its floor keeps exactly its floor; the others share what is left
    by score. Raising a layer only lowers the others' shares, so a few rounds settle it. The floors
    must fit in `keep` (the caller checks and says so).
    """
    floors = floors or {}
    names = sorted(scores)
    fixed: dict[str, int] = {}
    while True:
        free = [n for n in names if n not in fixed]
        budget = keep - sum(fixed.values())
        counts: dict[str, int] = {}
        if free:
            flags = top_flags(_flat(scores, free), budget)
            sizes = [scores[n].numel() for n in free]
            counts = {n: int(piece.sum()) for n, piece in zip(free, flags.split(sizes), strict=True)}
        low = [n for n in free if counts[n] < floors.get(n, 0)]
        if not low:
            break
        fixed.update((n, floors[n]) for n in low)
    counts.update(fixed)
    return TopCounts({n: counts[n] for n in scores}, [n for n in scores if n in fixed])


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def score_densities(
    shapes: Mapping[str, Shape],
    density: float,
    scores: Mapping[str, torch.Tensor],
    allow_collapse: bool = False,
    min_weights_per_output: int = 1,
    min_density: float = 0.0,
) -> dict[str, float]:
    """Per-layer densities of the global top `density` fraction of `scores` (ratio mode).

    The budget ``density * size`` is met exactly: whole weights go to the highest scores, and the
    fractional remainder to the layer of the next-best score, so a mask drawn with exact counts
    keeps ``round(budget)`` weights. Unless `allow_collapse`, every layer keeps at least its
    floor (`layer_floors`), and the layers raised to it are named in a warning; with it, layers
    left empty are named instead (the network is then disconnected).
    """
    check_scores(shapes, scores)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    budget = density * total
    low = min(total, math.floor(budget + 1e-9 * total))
    fraction = max(0.0, budget - low)
    guard = layer_floors(shapes, min_weights_per_output, min_density)  # validates the options either way
    floors = None if allow_collapse else guard
    if floors is not None:
        needed = sum(floors.values())
        if needed > low:
            raise InfeasibleBudgetError(
                f"the layer-collapse guard keeps at least {needed} of {total} weights"
                f" (min_weights_per_output={min_weights_per_output}, min_density={min_density:g}), more than"
                f" the budget of {budget:.0f} at sparsity {1 - density:.6g}; the highest sparsity it allows is"
                f" {1 - needed / total:.6f}; lower the floors or allow collapse (allow_collapse, --allow-collapse)"
            )
    ordered = {n: scores[n] for n in shapes}
    below = top_counts(ordered, low, floors)
    counts: dict[str, float] = {n: float(c) for n, c in below.counts.items()}
    if fraction > 1e-12 and low < total:
        above = top_counts(ordered, low + 1, floors)
        counts = {n: counts[n] + fraction * (above.counts[n] - below.counts[n]) for n in counts}
    if below.raised:
        logger.warning(
            "layer-collapse guard: %d layer(s) would keep fewer weights than their floor and were raised to it"
            " (the rest of the budget goes by score): %s",
            len(below.raised),
            _names(below.raised),
        )
    empty = [n for n, c in counts.items() if round(c) == 0]
    if empty:
        logger.warning(
            "layer collapse: %d layer(s) keep no weights, so the network is disconnected: %s",
            len(empty),
            _names(empty),
        )
    return {n: min(1.0, max(0.0, counts[n] / sizes[n])) for n in shapes}


def top_score_masks(scores: Mapping[str, torch.Tensor], densities: Mapping[str, float]) -> MaskSet:
    """Masks keeping, in each layer, its ``kept_count(density, size)`` highest scores (mask mode).

    With densities from `score_densities`, this is the global top-score selection itself, with
    the same per-layer counts as a random mask drawn at those densities.
    """
    masks = {}
    for name, density in densities.items():
        if name not in scores:
            raise ConfigError(f"no scores for layer {name!r}")
        score = scores[name]
        flags = top_flags(score.detach().reshape(-1).to("cpu"), kept_count(density, score.numel()))
        masks[name] = flags.reshape(score.shape)
    return MaskSet(masks)


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    density: float,
    allow_collapse: bool = False,
    min_weights_per_output: int = 1,
    min_density: float = 0.0,
) -> MaskSet:
    """Mask mode: keep the global top `density` fraction of `scores` (the pruning-at-init baseline).

    Same budget and collapse guard as ratio mode (`score_densities`); the kept weights are the
    top-scored ones instead of a random draw with the same per-layer counts.
    """
    check_density(density)
    if not scores:
        raise ConfigError("no scores given; nothing to select")
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    densities = score_densities(shapes, density, scores, allow_collapse, min_weights_per_output, min_density)
    return top_score_masks(scores, densities)

"""``lth``: lottery-ticket iterative magnitude pruning with rewinding (the pure decisions of each level).

Frankle & Carbin (ICLR 2019) train a dense network, prune the smallest-magnitude weights, rewind
the survivors to their initial values and train again, over several levels; Frankle et al. (ICML
2020, "Linear mode connectivity and the lottery ticket hypothesis") rewind to the weights of an
early optimizer step k instead of the initialisation. The reference implementation whose behaviour
is matched is facebookresearch/open_lth: level 0 trains the dense network, level L >= 1 starts from
the step-k weights with a fresh optimizer, continues the learning-rate schedule and data order from
step k, and trains with the mask fixed (like ``static``) to the end.

This module holds what is decided between levels, as functions of tensors: the sparsity of each
level (`level_sparsities`) and the next masks from the trained weights and the current masks
(`global_magnitude_masks`, `layerwise_magnitude_masks`). Where levels run is
`randsparse.train.lottery`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from randsparse.errors import ConfigError, is_integer
from randsparse.sparsity.masks import MaskSet, kept_count
from randsparse.sparsity.methods.base import SparsityMethod, register_method
from randsparse.sparsity.methods.topology import join_blocks, split_blocks
from randsparse.sparsity.selection import global_top_masks, top_flags

SCOPES = ("global", "layerwise")
MAX_LEVELS = 100


def level_sparsities(target: float, levels: int) -> list[float]:
    """Sparsity of each level 0..`levels`: 0 (dense), then ``1 - (1 - target) ** (L / levels)``.

    Every level keeps the same fraction ``(1 - target) ** (1 / levels)`` of the weights the previous
    level kept (open_lth fixes that fraction per level instead, 0.2 pruned, and lets the number of
    levels set the final sparsity; here the final sparsity is the config's `target`, reached exactly
    at level `levels`). Raises `ConfigError` for a target outside [0, 1) or fewer than one level.
    """
    if not 0.0 <= target < 1.0:
        raise ConfigError(f"the lottery-ticket target sparsity must lie in [0, 1), got {target!r}")
    if not is_integer(levels) or levels < 1:
        raise ConfigError(f"levels must be a positive integer, got {levels!r}")
    return [0.0] + [1.0 - (1.0 - target) ** (level / levels) for level in range(1, levels + 1)]


def _active_magnitudes(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None) -> dict:
    """|w| of every active weight (CPU, float64); -1 where the current mask already pruned it."""
    scores = {}
    for name, weight in weights.items():
        magnitude = weight.detach().to("cpu", torch.float64).abs()
        if masks is not None and name in masks:
            mask = masks[name].to("cpu")
            if mask.shape != weight.shape:
                raise ConfigError(f"mask of {name!r} has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
            magnitude = torch.where(mask, magnitude, torch.full_like(magnitude, -1.0))
        scores[name] = magnitude
    return scores


def _active_count(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None, name: str) -> int:
    if masks is None or name not in masks:
        return weights[name].numel()
    return int(masks[name].sum())


def global_magnitude_masks(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None, density: float
) -> MaskSet:
    """The next level's masks under one magnitude threshold across all layers (LTH's standard).

    `weights` maps each prunable weight's name to its trained tensor (any shape, floating);
    `masks` the current bool masks of the same shapes (None, or a layer missing from it: all
    active). Keeps the ``kept_count(density, total size)`` active weights of largest ``|w|`` over
    all layers together; pruned weights are never revived, so the new masks are subsets of the
    old. Ties at the threshold go to the first layer in name order, then to the first flat
    position (`randsparse.sparsity.selection.top_flags`). The threshold is global, so the
    layer-wise densities are *redistributed*: layers with small weights lose more than others.

    Raises `ConfigError` when `density` is not in (0, 1] or asks to keep more weights than are
    active.
    """
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density must lie in (0, 1], got {density!r}")
    total = sum(w.numel() for w in weights.values())
    keep = kept_count(density, total)
    active = sum(_active_count(weights, masks, n) for n in weights)
    if keep > active:
        raise ConfigError(f"cannot keep {keep} weights at density {density:g}: only {active} are still active")
    return MaskSet(global_top_masks(_active_magnitudes(weights, masks), keep))


def layerwise_magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None,
    densities: Mapping[str, float],
    blocks: Mapping[str, int] | None = None,
) -> MaskSet:
    """The next level's masks keeping each layer's own density (a layer-wise rule such as ERK at this level).

    In each layer, keeps its ``kept_count(densities[name], size)`` active weights of largest
    ``|w|`` (ties to the first flat position); a weight stacking `blocks` projections (q, k, v of
    an attention, `SparsityMethod.blocks`) keeps ``kept_count(density, block size)`` in each. A
    layer (block) whose rule asks for more weights than it still has keeps all it has (pruning never
    revives a weight; ERK and uniform never ask for more as the sparsity rises). Raises
    `ConfigError` when a layer has no density.
    """
    scores = _active_magnitudes(weights, masks)
    result = {}
    for name, score in scores.items():
        if name not in densities:
            raise ConfigError(f"no density for layer {name!r}")
        count = (blocks or {}).get(name, 1)
        active = torch.ones_like(score, dtype=torch.bool)
        if masks is not None and name in masks:
            active = masks[name].to("cpu")
        parts = [
            top_flags(part, min(kept_count(densities[name], part.numel()), int(alive.sum())))
            for part, alive in zip(split_blocks(score, count), split_blocks(active, count), strict=True)
        ]
        result[name] = join_blocks(parts, score.shape)
    return MaskSet(result)


@register_method("lth")
class LotteryTicket(SparsityMethod):
    """Lottery-ticket iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    Options (``sparsity.method_options``):

    - ``levels`` (int >= 1, default 3): pruning rounds after the dense level 0; level L trains at
      sparsity ``1 - (1 - s) ** (L / levels)``, so the last level is at the config's sparsity s.
    - ``rewind_step`` (int >= 0, default 0): the optimizer step whose weights every level >= 1
      starts from (0 = the original initialisation, as in Frankle & Carbin; Frankle et al. rewind
      to an early step k). It must be below the run's number of steps (`check_steps`).
    - ``scope`` (``global``, default, or ``layerwise``): one magnitude threshold over all layers
      (LTH's standard; it redistributes the layer-wise densities), or per-layer pruning to the
      densities the config's layer-wise rule (``sparsity.distribution``) gives at each level.

    Within a level the masks stay fixed, like ``static``: `is_update_step` is always False.
    """

    def __init__(self, total_steps: int, levels: int = 3, rewind_step: int = 0, scope: str = "global") -> None:
        super().__init__(total_steps)
        if not is_integer(levels) or not 1 <= levels <= MAX_LEVELS:
            raise ConfigError(f"lth levels must be an integer in [1, {MAX_LEVELS}], got {levels!r}")
        if not is_integer(rewind_step) or rewind_step < 0:
            raise ConfigError(f"lth rewind_step must be a non-negative integer, got {rewind_step!r}")
        if scope not in SCOPES:
            raise ConfigError(f"lth scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.levels = int(levels)
        self.rewind_step = int(rewind_step)
        self.scope = scope

    def check_steps(self, total_steps: int) -> None:
        """Refuse (`ConfigError`) a rewind step at or past the run's `total_steps` optimizer steps.

        Not checked in ``__init__``: the number of steps is known only once the data is built.
        """
        if self.rewind_step >= total_steps:
            raise ConfigError(
                f"lth rewind_step {self.rewind_step} must be below the run's {total_steps} optimizer steps"
            )

    def sparsities(self, target: float) -> list[float]:
        """Sparsity of each level 0..levels (`level_sparsities`)."""
        return level_sparsities(target, self.levels)

    def next_masks(
        self,
        weights: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None,
        sparsity: float,
        densities: Mapping[str, float] | None = None,
    ) -> MaskSet:
        """The masks of a level at `sparsity` from the previous level's trained `weights` and `masks`.

        ``global`` scope: `global_magnitude_masks`; ``layerwise``: `layerwise_magnitude_masks` with
        `densities` (the layer-wise rule at this level's density; required).
        """
        density = 1.0 - sparsity
        if self.scope == "global":
            return global_magnitude_masks(weights, masks, density)
        if densities is None:
            raise ConfigError("layer-wise lottery-ticket pruning needs the rule's per-layer densities")
        return layerwise_magnitude_masks(weights, masks, densities, self.blocks)

    def state_dict(self) -> dict[str, Any]:
        return {"levels": self.levels, "rewind_step": self.rewind_step, "scope": self.scope}

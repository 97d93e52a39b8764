"""``gmp``: gradual magnitude pruning (Zhu & Gupta, 2017) from dense (or an initial sparsity) to the plan."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from randsparse.sparsity.methods.base import SparsityMethod, register_method
from randsparse.sparsity.methods.topology import (
    block_counts,
    check_every,
    check_range,
    cubic_sparsity,
    drop_lowest,
    fraction_step,
    join_blocks,
    split_blocks,
)


@register_method("gmp")
class GMP(SparsityMethod):
    """Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017), per layer.

    Training starts from dense (``initial_sparsity: 0``) or from the ``initial_sparsity`` fraction of
    each layer's weights of smallest magnitude pruned (never more than the layer's target); the
    masks `start` returns are these, not the plan's. After the steps ``t0, t0 + ΔT, ...`` between
    ``t0 = begin_fraction × T`` and ``t_end = end_fraction × T`` (and after ``t_end`` itself) every
    layer keeps its weights of largest magnitude, its pruned count following the cubic schedule
    ``p_t = p_f + (p_i - p_f)(1 - (t - t0) / (t_end - t0))³`` (rounded), where ``p_f`` is the
    layer's pruned count in the plan: each layer ends at the layer-wise rule's density. Pruned
    weights never come back. A weight stacking projections (`SparsityMethod.blocks`) follows the
    schedule in each block, from that block's plan count, so q, k and v each end at their own
    density (its layer total is the sum of its blocks'). Options: ``update_every`` (ΔT ≥ 1, default
    100), ``begin_fraction`` (in [0, 1), default 0.0), ``end_fraction`` (in (begin_fraction, 1],
    default 0.75), ``initial_sparsity`` (in [0, 1), default 0.0). Raises `ConfigError` outside those
    ranges.
    """

    dynamic = True

    def __init__(
        self,
        total_steps: int,
        update_every: int = 100,
        begin_fraction: float = 0.0,
        end_fraction: float = 0.75,
        initial_sparsity: float = 0.0,
    ) -> None:
        super().__init__(total_steps)
        check_every(update_every)
        check_range("begin_fraction", begin_fraction, 0.0, 1.0, high_open=True)
        check_range("end_fraction", end_fraction, begin_fraction, 1.0, low_open=True)
        check_range("initial_sparsity", initial_sparsity, 0.0, 1.0, high_open=True)
        self.update_every = int(update_every)
        self.begin_fraction = float(begin_fraction)
        self.end_fraction = float(end_fraction)
        self.initial_sparsity = float(initial_sparsity)
        self.begin_step = fraction_step(begin_fraction, self.total_steps)
        self.end_step = max(fraction_step(end_fraction, self.total_steps), self.begin_step, 1)
        self.updates = 0
        self.plan_block_counts: dict[str, list[int]] = {}

    def start(self, plan: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each layer with its ``initial_sparsity`` share (at most its target) of smallest-magnitude weights pruned."""
        super().start(plan, weights)
        self.plan_block_counts = {name: block_counts(mask, self.blocks.get(name, 1)) for name, mask in plan.items()}
        dense = {name: torch.ones_like(mask) for name, mask in plan.items()}
        return self._prune(self._kept_counts(0.0), weights, dense)

    def _prune(
        self, kept: Mapping[str, list[int]], weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """`masks` with each block's active weights of smallest magnitude pruned down to its `kept` count."""
        new = {}
        for name, mask in masks.items():
            blocks = len(kept[name])
            magnitudes = split_blocks(weights[name].detach().abs(), blocks)
            parts = zip(split_blocks(mask, blocks), magnitudes, kept[name], strict=True)
            new[name] = join_blocks([drop_lowest(m, w, max(int(m.sum()) - k, 0)) for m, w, k in parts], mask.shape)
        return new

    def _kept_counts(self, progress_step: float) -> dict[str, list[int]]:
        """Each layer's kept count per block at `progress_step` of the cubic schedule."""
        counts = {}
        for name, size in self.plan_sizes.items():
            planned = self.plan_block_counts[name]
            block = size // len(planned)
            counts[name] = []
            for count in planned:
                final = block - count  # pruned at the end
                initial = min(round(self.initial_sparsity * block), final)
                pruned = cubic_sparsity(progress_step, initial, final, self.begin_step, self.end_step)
                counts[name].append(block - (final if progress_step >= self.end_step else round(pruned)))
        return counts

    def last_update(self, step: int) -> int | None:
        """The last update step at or before `step`, or None before the first."""
        if step < max(self.begin_step, 1):
            return None
        if step >= self.end_step:
            return self.end_step
        last = self.begin_step + (step - self.begin_step) // self.update_every * self.update_every
        return last if last >= 1 else None

    def is_update_step(self, step: int) -> bool:
        return step >= 1 and self.last_update(step) == step

    def target_counts(self, step: int) -> dict[str, int]:
        """Every layer's kept count after step `step`: the cubic schedule at the last update so far."""
        last = self.last_update(step)
        kept = self._kept_counts(float("-inf") if last is None else float(last))
        return {name: sum(counts) for name, counts in kept.items()}

    def update(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor],
        grads: Mapping[str, torch.Tensor] | None,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        new = self._prune(self._kept_counts(float(step)), weights, masks)
        self.updates += 1
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))

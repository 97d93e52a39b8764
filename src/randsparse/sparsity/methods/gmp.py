"""``gmp``: gradual magnitude pruning (Zhu & Gupta, 2017) from dense (or an initial sparsity) to the plan."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from randsparse.sparsity.methods.base import SparsityMethod, register_method
from randsparse.sparsity.methods.topology import (
    check_every,
    check_range,
    cubic_sparsity,
    drop_lowest,
    fraction_step,
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
    weights never come back. Options: ``update_every`` (ΔT ≥ 1, default 100), ``begin_fraction``
    (in [0, 1), default 0.0), ``end_fraction`` (in (begin_fraction, 1], default 0.75),
    ``initial_sparsity`` (in [0, 1), default 0.0). Raises `ConfigError` outside those ranges.
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

    def start(self, plan: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each layer with its ``initial_sparsity`` share (at most its target) of smallest-magnitude weights pruned."""
        super().start(plan, weights)
        kept = self._kept_counts(0.0)
        masks = {}
        for name, mask in plan.items():
            dense = torch.ones_like(mask)
            masks[name] = drop_lowest(dense, weights[name].detach().abs(), mask.numel() - kept[name])
        return masks

    def _kept_counts(self, progress_step: float) -> dict[str, int]:
        counts = {}
        for name, size in self.plan_sizes.items():
            final = size - self.plan_counts[name]  # pruned at the end
            initial = min(round(self.initial_sparsity * size), final)
            pruned = cubic_sparsity(progress_step, initial, final, self.begin_step, self.end_step)
            counts[name] = size - (final if progress_step >= self.end_step else round(pruned))
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
        return self._kept_counts(float("-inf") if last is None else float(last))

    def update(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor],
        grads: Mapping[str, torch.Tensor] | None,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        kept = self._kept_counts(float(step))
        new = {}
        for name, mask in masks.items():
            new[name] = drop_lowest(mask, weights[name].detach().abs(), max(int(mask.sum()) - kept[name], 0))
        self.updates += 1
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))

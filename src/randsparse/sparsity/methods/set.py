"""``set``: Sparse Evolutionary Training (Mocanu et al., 2018): magnitude drop, random regrowth."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from randsparse.sparsity.methods.base import register_method
from randsparse.sparsity.methods.topology import DropAndGrow, random_scores


@register_method("set")
class SET(DropAndGrow):
    """SET (Mocanu et al., Nature Communications 2018): a constant ζ, growth at random positions.

    After every `update_every` (ΔT) optimizer steps up to `end_fraction` of training, each layer
    drops the ``round(ζ × active)`` active weights of smallest magnitude and regrows as many at
    inactive positions drawn uniformly at random (the step's seeded generator ranks them; the
    positions just dropped may be drawn again). Regrown weights start at zero. Options:
    ``update_every`` (ΔT ≥ 1, default 100), ``drop_fraction`` (ζ in (0, 1), default 0.3, Mocanu's
    value), ``end_fraction`` (in (0, 1], default 1.0: the whole run). Raises `ConfigError` outside
    those ranges.
    """

    def __init__(
        self, total_steps: int, update_every: int = 100, drop_fraction: float = 0.3, end_fraction: float = 1.0
    ) -> None:
        super().__init__(total_steps, update_every, drop_fraction, end_fraction)

    def drop_fraction_at(self, step: int) -> float:
        return self.drop_fraction

    def grow_scores(
        self, name: str, mask: torch.Tensor, grads: Mapping[str, torch.Tensor] | None, generator: torch.Generator
    ) -> torch.Tensor:
        return random_scores(mask, generator)

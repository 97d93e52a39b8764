"""``rigl``: Rigging the Lottery (Evci et al., 2020): magnitude drop, regrowth where the dense gradient is largest."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from randsparse.errors import RandsparseError
from randsparse.sparsity.methods.base import register_method
from randsparse.sparsity.methods.topology import DropAndGrow, cosine_fraction


@register_method("rigl")
class RigL(DropAndGrow):
    """RigL (Evci et al., ICML 2020), with the paper's cosine decay of the drop fraction.

    After every `update_every` (ΔT) optimizer steps before `end_fraction` of training, each layer
    drops the ``round(ζ_t × active)`` active weights of smallest magnitude and grows as many at the
    inactive positions (those just dropped included) with the largest dense-gradient magnitude
    ``|∂L/∂w|`` of that step, averaged over processes. ``ζ_t = ζ / 2 · (1 + cos(π t / T_end))``
    with ``T_end = end_fraction × T``. Regrown weights start at zero (as in the paper). Options:
    ``update_every`` (ΔT ≥ 1, default 100), ``drop_fraction`` (ζ in (0, 1), default 0.3),
    ``end_fraction`` (in (0, 1], default 0.75). Raises `ConfigError` outside those ranges.
    """

    def __init__(
        self, total_steps: int, update_every: int = 100, drop_fraction: float = 0.3, end_fraction: float = 0.75
    ) -> None:
        super().__init__(total_steps, update_every, drop_fraction, end_fraction)

    def needs_dense_gradients(self, step: int) -> bool:
        return self.is_update_step(step)

    def drop_fraction_at(self, step: int) -> float:
        return cosine_fraction(step, self.drop_fraction, self.end_step)

    def grow_scores(
        self, name: str, mask: torch.Tensor, grads: Mapping[str, torch.Tensor] | None, generator: torch.Generator
    ) -> torch.Tensor:
        if grads is None:
            raise RandsparseError("rigl needs the dense gradients at its update steps")
        if name not in grads:  # the weight took no part in this step's loss: no gradient, lowest index first
            return torch.zeros(mask.shape, dtype=torch.float64)
        return grads[name].detach().abs()

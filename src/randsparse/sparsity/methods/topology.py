"""The shared pieces of mask-moving methods: drop/grow by score, update schedules, `DropAndGrow`.

Every function is pure over tensors and deterministic: scores are ranked with a stable sort, so
equal scores are broken by the lower flat (row-major) index first, whatever the device. Masks are
bool tensors (True = active); scores are floating tensors of the mask's shape.

A weight stacking ``blocks`` projections along its first dimension (q, k, v of an attention's
``in_proj_weight``) is decided block by block (`split_blocks`), each keeping its own active count.

Schedules take 1-based optimizer steps (the masks change *after* step ``t``) and the run's total
number of optimizer steps ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from randsparse.errors import ConfigError
from randsparse.sparsity.methods.base import SparsityMethod


def _order(scores: torch.Tensor, descending: bool, device: torch.device) -> torch.Tensor:
    """Flat positions (on `device`) sorted by score (stable: ties keep the lower index first)."""
    flat = scores.detach().to(device).reshape(-1).double()
    flat = torch.nan_to_num(
        flat, nan=0.0, posinf=torch.finfo(torch.float64).max, neginf=-torch.finfo(torch.float64).max
    )
    return torch.sort(flat, descending=descending, stable=True).indices


def drop_lowest(mask: torch.Tensor, scores: torch.Tensor, count: int) -> torch.Tensor:
    """`mask` with its `count` active positions of lowest score made inactive (a new tensor).

    Used with ``scores = |weight|`` (magnitude pruning: SET, RigL, GMP). Raises `ValueError` when
    `count` is negative or larger than the number of active positions.
    """
    active = int(mask.sum())
    if not 0 <= count <= active:
        raise ValueError(f"cannot drop {count} of {active} active positions")
    new = mask.clone()
    if count == 0:
        return new
    flat_mask = mask.reshape(-1)
    order = _order(scores, descending=False, device=mask.device)
    candidates = order[flat_mask[order]]  # active positions, lowest score first
    new.view(-1)[candidates[:count]] = False
    return new


def grow_highest(mask: torch.Tensor, scores: torch.Tensor, count: int) -> torch.Tensor:
    """`mask` with its `count` inactive positions of highest score made active (a new tensor).

    Used with ``scores = |dense gradient|`` (RigL) or uniform random scores (SET). Raises
    `ValueError` when `count` is negative or larger than the number of inactive positions.
    """
    inactive = mask.numel() - int(mask.sum())
    if not 0 <= count <= inactive:
        raise ValueError(f"cannot grow {count} of {inactive} inactive positions")
    new = mask.clone()
    if count == 0:
        return new
    flat_mask = mask.reshape(-1)
    order = _order(scores, descending=True, device=mask.device)
    candidates = order[~flat_mask[order]]  # inactive positions, highest score first
    new.view(-1)[candidates[:count]] = True
    return new


def random_scores(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) scores of `mask`'s shape drawn (on the CPU) from `generator`: random growth."""
    return torch.rand(mask.shape, generator=generator, dtype=torch.float64)


def split_blocks(tensor: torch.Tensor, blocks: int) -> tuple[torch.Tensor, ...]:
    """`tensor`'s `blocks` stacked projections: equal slices along dim 0, each flattened (row-major views).

    Raises `ValueError` when `blocks` < 1 or does not divide ``tensor.shape[0]``.
    """
    rows = tensor.shape[0] if tensor.dim() else 1
    if blocks < 1 or rows % blocks:
        raise ValueError(f"cannot split a weight of shape {tuple(tensor.shape)} into {blocks} blocks along dim 0")
    return tuple(tensor.reshape(blocks, -1).unbind(0))


def join_blocks(parts: list[torch.Tensor], shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The inverse of `split_blocks`: the flattened `parts` stacked back into one tensor of `shape`."""
    return torch.stack(parts).reshape(shape)


def block_counts(mask: torch.Tensor, blocks: int) -> list[int]:
    """Active positions of each of `mask`'s `blocks` stacked projections (`split_blocks`)."""
    return [int(part.sum()) for part in split_blocks(mask, blocks)]


def drop_and_grow(
    mask: torch.Tensor, weight: torch.Tensor, grow_scores: torch.Tensor, fraction: float, blocks: int = 1
) -> torch.Tensor:
    """Drop ``round(fraction × active)`` active weights of smallest magnitude, grow as many by `grow_scores`.

    Growth candidates are every position inactive after the drop, the ones just dropped included
    (google-research/rigl does the same), so the active count is unchanged. With `blocks` > 1 each
    stacked projection (`split_blocks`) drops and grows its own ``round(fraction × its active)``
    among its own positions, so every block keeps its count.
    """
    if blocks != 1:
        parts = zip(*(split_blocks(t, blocks) for t in (mask, weight, grow_scores)), strict=True)
        return join_blocks([drop_and_grow(m, w, s, fraction) for m, w, s in parts], mask.shape)
    count = round(fraction * int(mask.sum()))
    dropped = drop_lowest(mask, weight.detach().abs(), count)
    return grow_highest(dropped, grow_scores, count)


def cosine_fraction(step: int, start: float, end_step: int) -> float:
    """RigL's drop fraction at `step`: ``start / 2 · (1 + cos(π · step / end_step))``, 0 from `end_step` on."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return start / 2 * (1 + math.cos(math.pi * step / end_step))


def cubic_sparsity(step: int, initial: float, final: float, begin_step: int, end_step: int) -> float:
    """Zhu & Gupta's (2017) cubic schedule: ``s_f + (s_i - s_f)(1 - (t - t0) / (n Δt))³``, clamped to [t0, t0 + nΔt]."""
    if end_step <= begin_step:
        return final if step >= end_step else initial
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return final + (initial - final) * (1 - progress) ** 3


def fraction_step(fraction: float, total_steps: int) -> int:
    """The optimizer step at `fraction` of a run of `total_steps` steps (rounded)."""
    return round(fraction * total_steps)


def check_range(
    name: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """Refuse an option outside [low, high] (or the open ends asked for) with a one-line `ConfigError`."""
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"sparsity.method_options.{name} must be in {left}{low:g}, {high:g}{right}, got {value!r}")


def check_every(value: int) -> None:
    """Refuse an update interval ΔT below 1 step."""
    if value < 1:
        raise ConfigError(f"sparsity.method_options.update_every must be at least 1 step, got {value!r}")


class DropAndGrow(SparsityMethod):
    """Base of the fixed-count methods (SET, RigL): every ΔT steps, per layer, drop by magnitude, grow by a score.

    Updates happen after steps ``ΔT, 2ΔT, ...`` before ``end_fraction × T`` (rounded), never after the last
    step (a weight grown then could not train). Each layer keeps the plan's active count, so the
    layer-wise rule's densities hold throughout (of each projection of a stacked weight too, see
    `SparsityMethod.blocks`). Subclasses give `drop_fraction_at` and `grow_scores`.
    """

    dynamic = True

    def __init__(self, total_steps: int, update_every: int, drop_fraction: float, end_fraction: float) -> None:
        super().__init__(total_steps)
        check_every(update_every)
        check_range("drop_fraction", drop_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_range("end_fraction", end_fraction, 0.0, 1.0, low_open=True)
        self.update_every = int(update_every)
        self.drop_fraction = float(drop_fraction)
        self.end_fraction = float(end_fraction)
        self.end_step = fraction_step(end_fraction, self.total_steps)
        self.updates = 0

    def is_update_step(self, step: int) -> bool:
        return step > 0 and step % self.update_every == 0 and step < self.end_step and step < self.total_steps

    def drop_fraction_at(self, step: int) -> float:
        """ζ_t: the fraction of each layer's active weights moved after step `step`."""
        raise NotImplementedError

    def grow_scores(
        self, name: str, mask: torch.Tensor, grads: Mapping[str, torch.Tensor] | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Scores of layer `name`'s positions; the inactive ones scored highest are grown."""
        raise NotImplementedError

    def update(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor],
        grads: Mapping[str, torch.Tensor] | None,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        fraction = self.drop_fraction_at(step)
        new = {}
        for name, mask in masks.items():  # layers in the plan's order: the generator's draws are fixed
            scores = self.grow_scores(name, mask, grads, generator).to(mask.device)
            new[name] = drop_and_grow(mask, weights[name], scores, fraction, self.blocks.get(name, 1))
        self.updates += 1
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))

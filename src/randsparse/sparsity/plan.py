"""From a model and a global sparsity to per-layer densities and a mask: drawn at random, or top-scored.

Every plan, whatever made it (a rule, a custom file, a mask file), is refused when it leaves a
layer with no weights (the network is then disconnected and trains at chance), unless the caller
opts in with ``allow_empty_layers`` (``allow_collapse`` of the score rules opts in too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from randsparse.errors import ConfigError, InfeasibleBudgetError, RandsparseError, is_real
from randsparse.seeding import seed_from
from randsparse.sparsity.distributions import layer_densities
from randsparse.sparsity.layers import PrunableSelector, prunable_shapes
from randsparse.sparsity.masks import MaskSet, Sampling, kept_count
from randsparse.sparsity.saliency import compute_scores, ratio_method, scorer_options
from randsparse.sparsity.selection import top_score_masks

MaskMode = Literal["random", "scores"]
MASK_MODES: tuple[str, ...] = ("random", "scores")

# How many empty layers a refusal lists before it says "and N more".
_NAMES_SHOWN = 8


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
    """Per-layer densities of a rule together with the masks made from them.

    `mask_mode` is ``"random"`` when the masks were drawn at random at those densities, and
    ``"scores"`` when they keep the top-scored weights (mask mode of a ``*_ratio`` distribution).
    """

    sparsity: float
    distribution: str
    layers: list[LayerPlan]
    masks: MaskSet
    mask_mode: str = "random"

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
            "mask_mode": self.mask_mode,
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
    if not is_real(sparsity) or not (0.0 <= sparsity < 1.0):
        raise ConfigError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    return 1.0 - float(sparsity)


def plan_sparsity(
    model: nn.Module,
    sparsity: float,
    distribution: str = "erk",
    seed: int | torch.Generator = 0,
    sampling: Sampling = "exact",
    selector: PrunableSelector | None = None,
    *,
    mask_mode: MaskMode = "random",
    scores: Mapping[str, torch.Tensor] | None = None,
    data: Any = None,
    input_shape: Sequence[int] | None = None,
    score_options: Mapping[str, Any] | None = None,
    allow_empty_layers: bool = False,
    **options: Any,
) -> SparsityPlan:
    """Densities of `distribution` at `sparsity` for `model`'s prunable layers, and their masks.

    Shape-only rules (``erk``, ...) work on shapes, so `model` may live on the ``meta`` device;
    they ignore `data` and `input_shape`, so a caller may offer those whatever the rule. A
    score-ratio rule (``snip_ratio``, ``grasp_ratio``, ``synflow_ratio``, ``magnitude_ratio``)
    uses `scores` if given, else computes them on (a copy of) `model` with `data`, `input_shape`
    and `score_options` (see `compute_scores`; SynFlow gets the target density; a dataset is
    sampled with `seed`). Its masks are drawn at random at the scores' layer densities
    (`mask_mode="random"`, ratio mode) or keep the top-scored weights (``"scores"``, mask mode:
    the pruning-at-initialization baseline). `options` go to the rule (for score rules: the
    collapse guard, ``allow_collapse``, ``min_weights_per_output``, ``min_density``).

    Raises `InfeasibleBudgetError` when the masks leave a layer with no weights, naming the layers
    and the highest sparsity at which this rule keeps a weight in every layer, unless
    `allow_empty_layers` (or the score rules' ``allow_collapse``) is true.
    """
    density = sparsity_to_density(sparsity)
    if mask_mode not in MASK_MODES:
        raise ConfigError(f"unknown mask mode {mask_mode!r}; known: {', '.join(MASK_MODES)}")
    shapes = prunable_shapes(model, selector)
    method = ratio_method(distribution)
    if method is None:
        asked = [f"mask mode {mask_mode!r}"] if mask_mode != "random" else []
        asked += [name for name, value in (("scores", scores), ("score_options", score_options)) if value]
        if asked:
            raise ConfigError(
                f"{', '.join(asked)} only apply to score-ratio distributions (snip_ratio, grasp_ratio,"
                f" synflow_ratio, magnitude_ratio), not to {distribution!r}"
            )
        densities = layer_densities(shapes, density, distribution, **options)
        masks = MaskSet.random(shapes, densities, seed, sampling)
        return plan_from_masks(
            masks,
            sparsity,
            distribution,
            densities,
            allow_empty_layers=allow_empty_layers,
            densities_at=lambda d: layer_densities(shapes, d, distribution, **options),
        )
    base = seed_from(seed)
    if scores is None:
        extra = dict(score_options or {})
        if "density" in scorer_options(method):
            extra.setdefault("density", density)
        scores = compute_scores(method, model, data, input_shape=input_shape, selector=selector, seed=base, **extra)
    else:
        unused = [n for n, v in (("data", data), ("input_shape", input_shape)) if v is not None]
        unused += ["score_options"] if score_options else []
        if unused:
            raise ConfigError(f"scores are given, so {', '.join(unused)} do not apply")
    densities = layer_densities(shapes, density, distribution, scores=scores, **options)
    if mask_mode == "scores":
        if sampling != "exact":
            raise ConfigError("mask mode keeps the top-scored weights, an exact count; sampling must be 'exact'")
        masks = top_score_masks(scores, densities)
    else:
        masks = MaskSet.random(shapes, densities, base, sampling)
    allow_empty = allow_empty_layers or bool(options.get("allow_collapse"))
    given_scores = scores
    return plan_from_masks(
        masks,
        sparsity,
        distribution,
        densities,
        mask_mode=mask_mode,
        allow_empty_layers=allow_empty,
        densities_at=lambda d: layer_densities(shapes, d, distribution, scores=given_scores, **options),
    )


def plan_from_masks(
    masks: MaskSet,
    sparsity: float,
    distribution: str,
    densities: dict[str, float] | None = None,
    *,
    mask_mode: str = "random",
    allow_empty_layers: bool = False,
    densities_at: Callable[[float], Mapping[str, float]] | None = None,
) -> SparsityPlan:
    """A plan describing existing `masks`; without `densities`, each layer's realised density.

    Raises `InfeasibleBudgetError` when a layer keeps no weights, unless `allow_empty_layers`;
    `densities_at` (target density -> layer densities of the rule that made the masks) lets the
    error name the highest sparsity at which every layer keeps a weight.
    """
    layers = [
        LayerPlan(s.name, s.shape, s.params, densities[s.name] if densities else s.density, s.kept)
        for s in masks.summary()
    ]
    plan = SparsityPlan(sparsity, distribution, layers, masks, mask_mode)
    if not allow_empty_layers:
        refuse_empty_layers(plan, densities_at)
    return plan


def refuse_empty_layers(plan: SparsityPlan, densities_at: Callable[[float], Mapping[str, float]] | None = None) -> None:
    """Raise `InfeasibleBudgetError` in one line if a layer of `plan` keeps no weights.

    The line names the empty layers and, given `densities_at` (the plan's rule as target density
    -> layer densities), the highest sparsity at which that rule keeps a weight in every layer.
    """
    empty = [layer for layer in plan.layers if layer.kept == 0 and layer.params > 0]
    if not empty:
        return
    shown = ", ".join(f"{x.name} (0 of {x.params} kept)" for x in empty[:_NAMES_SHOWN])
    shown += f" and {len(empty) - _NAMES_SHOWN} more" if len(empty) > _NAMES_SHOWN else ""
    source = f"sparsity {plan.sparsity:g} with distribution {plan.distribution!r}"
    advice = "draw the masks at a lower sparsity"
    if densities_at is not None:
        highest = highest_connected_sparsity(plan.layers, densities_at, plan.sparsity)
        if highest is None:
            advice = "no sparsity of this rule and options keeps a weight in every layer; change its options"
        elif highest >= plan.sparsity:
            advice = "a random (Bernoulli) draw left it empty; use sampling 'exact' or another seed"
        else:
            advice = f"the highest sparsity that keeps a weight in every layer is {highest:.6f}"
    raise InfeasibleBudgetError(
        f"{source} leaves {len(empty)} layer(s) with no weights, which disconnects the network: {shown};"
        f" {advice}; or allow empty layers (plan: --allow-empty-layers; train, study:"
        " sparsity.options.allow_empty_layers=true)"
    )


def highest_connected_sparsity(
    layers: Sequence[LayerPlan], densities_at: Callable[[float], Mapping[str, float]], upto: float
) -> float | None:
    """Highest sparsity in [0, `upto`] (6 decimals, rounded down) at which every layer keeps a weight.

    Found by bisection on the rule `densities_at`, counting kept weights as an exact draw does;
    None when even sparsity 0 leaves a layer empty (or the rule refuses it).
    """

    def connected(sparsity: float) -> bool:
        try:
            densities = densities_at(1.0 - sparsity)
        except RandsparseError:
            return False
        return all(kept_count(densities[x.name], x.params) >= 1 for x in layers)

    if connected(upto):
        return upto
    if not connected(0.0):
        return None
    low, high = 0.0, upto
    for _ in range(40):
        middle = (low + high) / 2
        if connected(middle):
            low = middle
        else:
            high = middle
    return math.floor(low * 1e6) / 1e6

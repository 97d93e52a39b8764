"""The scorer registry: `register_scorer`, `compute_scores`, and each scorer's ``<name>_ratio`` density rule.

`compute_scores` returns ``{prunable weight name: tensor of the weight's shape}`` on the CPU; a
higher score always means a more important weight, kept first. The model, its gradients, its
batch-norm statistics and the global RNG are left as they were: scorers work on a deep copy, draw
examples with their own generator, and run with dropout-like layers off. Scores are used in two
ways (`randsparse.sparsity.selection`): ratio mode, the registered ``<scorer>_ratio`` density
rules, which keep the per-layer densities and draw the mask at random within each layer; and
mask mode, `masks_from_scores`, which keeps the top-scored weights themselves.

Add a scorer with ``@register_scorer(name, needs_data=...)``: a function ``(ScoringInput,
**options) -> {name: scores}``; registering it also registers its ``<name>_ratio`` distribution.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from randsparse.errors import ConfigError, is_integer
from randsparse.registry import Registry, check_options
from randsparse.sparsity.distributions import DensityRule, register_distribution
from randsparse.sparsity.layers import PrunableSelector, prunable_parameters
from randsparse.sparsity.masks import seed_from
from randsparse.sparsity.saliency.inputs import Scores, ScoringInput
from randsparse.sparsity.selection import score_densities

ScorerFn = Callable[..., Scores]

RATIO_SUFFIX = "_ratio"


@dataclass(frozen=True)
class _Scorer:
    name: str
    fn: ScorerFn
    needs_data: bool


_SCORERS: Registry[_Scorer] = Registry("scorer")


def register_scorer(name: str, *, needs_data: bool) -> Callable[[ScorerFn], ScorerFn]:
    """Decorator adding a scorer under `name`, and its ratio distribution ``<name>_ratio``."""

    def decorate(fn: ScorerFn) -> ScorerFn:
        _SCORERS.add(name, _Scorer(name, fn, needs_data))
        register_distribution(name + RATIO_SUFFIX)(_ratio_rule(name))
        return fn

    return decorate


def available_scorers() -> list[str]:
    """Names of every registered scorer, sorted."""
    return _SCORERS.names()


def _get_scorer(name: str) -> _Scorer:
    return _SCORERS[name]


def scorer_options(name: str) -> list[str]:
    """Keyword options the scorer `name` takes."""
    return list(inspect.signature(_get_scorer(name).fn).parameters)[1:]


def scorer_needs_data(name: str) -> bool:
    """True when the scorer `name` needs labelled examples (SNIP, GraSP); false when data-free."""
    return _get_scorer(name).needs_data


def ratio_method(distribution: str) -> str | None:
    """The scorer behind a ratio distribution (``"snip_ratio"`` -> ``"snip"``); None for any other rule."""
    if distribution.endswith(RATIO_SUFFIX) and distribution[: -len(RATIO_SUFFIX)] in _SCORERS:
        return distribution[: -len(RATIO_SUFFIX)]
    return None


def _ratio_rule(method: str) -> DensityRule:
    """The density rule ``<method>_ratio``: `score_densities` (same options) under the scorer's name."""

    @functools.wraps(score_densities)
    def rule(*args: Any, **kwargs: Any) -> dict[str, float]:
        return score_densities(*args, **kwargs)

    rule.__name__ = rule.__qualname__ = method + RATIO_SUFFIX
    rule.__doc__ = (
        f"Per-layer densities of the global top {method} scores (ratio mode); `scores` come from"
        f" ``compute_scores({method!r}, ...)``, and the collapse guard options are those of `score_densities`."
    )
    return rule


def compute_scores(
    method: str,
    model: nn.Module,
    data: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    selector: PrunableSelector | None = None,
    seed: int | torch.Generator = 0,
    **options: Any,
) -> Scores:
    """Scores of `method` for every prunable weight of `model` (higher = more important).

    `data` is a map-style `Dataset` of ``(input, label)`` examples (a random sample is drawn with
    `seed`), an iterable of ``(inputs, labels)`` batches (used in order; a `DataLoader` without a
    `generator` draws its worker seed from the global RNG), or one ``(inputs, labels)`` batch.
    `input_shape` is ``(C, H, W)`` (SynFlow's all-ones input; taken from `data` when omitted).
    `options` go to the scorer (see `scorer_options`).
    """
    scorer = _get_scorer(method)
    accepted = scorer_options(method)
    check_options(f"scorer {method!r}", options, accepted)
    params = inspect.signature(scorer.fn).parameters
    missing = [p for p in accepted if params[p].default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"scorer {method!r} needs option(s) {', '.join(missing)}")
    original = prunable_parameters(model, selector)
    if not original:
        raise ConfigError("the model has no prunable layers; nothing to score")
    if any(p.is_meta for p in original.values()):
        raise ConfigError(f"{method} scores need the model's real weights, but it lives on the meta device")
    if scorer.needs_data and data is None:
        raise ConfigError(f"{method} scores need labelled data (a dataset or batches of (inputs, labels))")
    generator = torch.Generator().manual_seed(seed_from(seed))
    work = copy.deepcopy(model)
    weights = prunable_parameters(work, selector)
    for param in work.parameters():
        param.requires_grad_(False)
    for weight in weights.values():
        weight.requires_grad_(True)
    shape = _check_input_shape(input_shape) if input_shape is not None else None
    scores = scorer.fn(ScoringInput(work, weights, data, shape, generator), **options)
    return {name: scores[name].detach().to("cpu") for name in weights}


def _check_input_shape(shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not all(is_integer(d) for d in shape):
        raise ConfigError(f"input_shape must be a sequence of positive integers such as (3, 32, 32), got {shape!r}")
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"input_shape must be a sequence of positive integers such as (3, 32, 32), got {shape!r}")
    return tuple(shape)

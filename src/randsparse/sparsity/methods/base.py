"""The sparse-training method registry and `SparsityMethod`, the interface every method implements.

A method is a pure decision over tensors: given the step, the current weights, masks and (when it
asks for them) dense gradients, and a seeded generator, it says which positions are active next.
It never touches a model or an optimizer; the enforcement handle applies its decision.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import torch

from randsparse.registry import Registry

M = TypeVar("M", bound=type["SparsityMethod"])

_METHODS: Registry[type[SparsityMethod]] = Registry("sparsity method")

# Parameters of a method's constructor that the training loop passes itself (not user options).
LOOP_ARGUMENTS = ("total_steps",)


class SparsityMethod:
    """Base class of a sparse-training method; the base keeps the masks fixed (``static``).

    Subclasses take their user options (``sparsity.method_options``) as keyword arguments of
    ``__init__`` after ``total_steps`` (the number of optimizer steps of the whole run), validating
    their ranges there with `randsparse.errors.ConfigError`.

    The training loop calls `start` once with the plan's masks (the layer-wise rule's draw), then,
    after optimizer step ``t`` (1-based, one per global batch whatever gradient accumulation or a
    skipped AMP step did), `update` whenever `is_update_step(t)`. Masks are ``{weight name: bool
    tensor}`` (True = active) in the plan's order; weights and gradients are float tensors of the
    same shapes. A method never touches a model or an optimizer: the enforcement handle
    (`randsparse.sparsity.enforce.FixedMask.update_masks`) applies what it returns.

    `blocks` maps a weight stacking several projections along its first dimension to their number
    (3 for an attention's fused q/k/v, read by `randsparse.sparsity.layers.weight_geometry`; a layer
    absent from it is one block). The training loop sets it before `start`; a moving method keeps
    the active count of each block, not only of the layer, so q, k and v keep their densities.
    """

    name: ClassVar[str] = "static"
    #: True when the masks may move during training (the loop then tracks ITOP and mask change).
    dynamic: ClassVar[bool] = False

    def __init__(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)
        self.plan_counts: dict[str, int] = {}
        self.plan_sizes: dict[str, int] = {}
        self.blocks: dict[str, int] = {}

    def start(
        self, plan: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
    ) -> Mapping[str, torch.Tensor]:
        """The masks training starts from; records the plan's per-layer active counts (the targets).

        The base returns `plan` itself (a static run trains exactly the drawn masks). Called on a
        resume too (the plan is drawn again from the same seed), before the checkpoint's masks
        replace the returned ones.
        """
        self.plan_counts = {name: int(mask.sum()) for name, mask in plan.items()}
        self.plan_sizes = {name: mask.numel() for name, mask in plan.items()}
        return plan

    def is_update_step(self, step: int) -> bool:
        """Whether the masks may change after optimizer step `step` (1-based); never for ``static``."""
        return False

    def needs_dense_gradients(self, step: int) -> bool:
        """Whether `update` after step `step` reads the dense (unmasked) gradients (RigL); else False."""
        return False

    def target_counts(self, step: int) -> dict[str, int]:
        """Every layer's active count after step `step`'s update: the plan's (fixed-count methods)."""
        return dict(self.plan_counts)

    def update(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor],
        grads: Mapping[str, torch.Tensor] | None,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """The masks after step `step`: new tensors, each layer holding exactly `target_counts(step)`.

        `grads` are the dense gradients (averaged over processes) when `needs_dense_gradients(step)`,
        else None; `generator` is a CPU generator seeded from (mask seed, step), the same on every
        process. The base keeps `masks` as they are.
        """
        return {name: mask.clone() for name, mask in masks.items()}

    def state_dict(self) -> dict[str, Any]:
        """The method's schedule state, saved in every checkpoint (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator registering a `SparsityMethod` subclass under `name` (sets its ``name``)."""

    def decorate(cls: M) -> M:
        cls.name = name
        _METHODS.add(name, cls)
        return cls

    return decorate


def get_method(name: str) -> type[SparsityMethod]:
    """The method class registered under `name`; `UnknownNameError` (listing the known ones) otherwise."""
    return _METHODS[name]


def available_methods() -> list[str]:
    """Names of every registered sparse-training method, sorted."""
    return _METHODS.names()


def method_options(name: str) -> list[str]:
    """The options (``sparsity.method_options`` keys) method `name` takes."""
    params = inspect.signature(get_method(name).__init__).parameters
    return [p for p in params if p not in ("self", *LOOP_ARGUMENTS) and params[p].kind != params[p].VAR_KEYWORD]

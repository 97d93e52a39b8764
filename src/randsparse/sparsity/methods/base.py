"""The sparse-training method registry and `SparsityMethod`, the interface every method implements.

A method is a pure decision over tensors: given the step, the current weights, masks and (when it
asks for them) dense gradients, and a seeded generator, it says which positions are active next.
It never touches a model or an optimizer; the enforcement handle applies its decision.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

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
    """

    name: ClassVar[str] = "static"

    def __init__(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    def is_update_step(self, step: int) -> bool:
        """Whether the masks may change after optimizer step `step` (1-based); never for ``static``."""
        return False

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

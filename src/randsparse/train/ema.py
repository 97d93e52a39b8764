"""Weight EMA: an exponential moving average of a model's parameters, masked like the weights it follows.

After every optimizer step, ``average = decay x average + (1 - decay) x weight`` for each floating
parameter (the Polyak average of timm's ``ModelEmaV3`` without warm-up); pruned positions are then
set to zero with the masks the model holds at that moment, so the average is exactly as sparse as
the weights even when the masks move. Buffers (BatchNorm statistics) are not averaged: evaluating
the average uses the live model's buffers. `swapped_in` puts the average into the model for an
evaluation and the trained weights back afterwards; the average travels in checkpoints (``ema``)
and is restored on resume, so a resumed run averages bit-identically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from randsparse.errors import FileFormatError
from randsparse.sparsity.enforce import BUFFER_SUFFIX, zero_pruned_
from randsparse.sparsity.layers import owning_module


class WeightEMA:
    """The moving average of `model`'s floating parameters, by parameter name (float tensors, the weights' shapes).

    Raises `ValueError` for a `decay` outside (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.average: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step with `model`'s current weights, then the model's masks on the average."""
        params = dict(model.named_parameters())
        names = list(self.average)
        averages = [self.average[n] for n in names]
        torch._foreach_lerp_(averages, [params[n].detach() for n in names], 1.0 - self.decay)
        self.apply_masks(model)

    @torch.no_grad()
    def apply_masks(self, model: nn.Module) -> None:
        """Zero the average wherever `model`'s masks (as attached now) prune a weight."""
        for name, value in self.average.items():
            mask = _mask_of(model, name)
            if mask is not None:
                zero_pruned_(value, mask)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average by parameter name (what a checkpoint's ``ema`` holds)."""
        return dict(self.average)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore an average written by `state_dict`; raises `FileFormatError` when it does not fit."""
        load_average(self.average, state)

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """`model` holds the average inside the block and its trained weights again after it."""
        trained = swap_in(model, self.average)
        try:
            yield
        finally:
            swap_in(model, trained)


def _mask_of(model: nn.Module, name: str) -> torch.Tensor | None:
    module, attr = owning_module(model, name)
    return module._buffers.get(attr + BUFFER_SUFFIX)


@torch.no_grad()
def swap_in(model: nn.Module, average: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy `average` into `model`'s parameters of the same names; returns copies of the values they had."""
    params = dict(model.named_parameters())
    previous = {}
    for name, value in average.items():
        previous[name] = params[name].detach().clone()
        params[name].copy_(value)
    return previous


@torch.no_grad()
def load_average(into: dict[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the average `into` in place; raises `FileFormatError` naming what does not fit."""
    if not isinstance(state, Mapping) or set(state) != set(into):
        raise FileFormatError("the checkpoint's weight average (ema) does not hold this model's parameters")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != into[name].shape:
            raise FileFormatError(f"the checkpoint's weight average (ema) of {name!r} does not fit the model")
        into[name].copy_(value)


def averaged(model: nn.Module, ema: WeightEMA | None) -> contextlib.AbstractContextManager[None]:
    """`ema.swapped_in(model)`, or nothing to do without an average."""
    return contextlib.nullcontext() if ema is None else ema.swapped_in(model)


def evaluated_weights(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The state dict a checkpoint's run is evaluated with: its ``model``, with the average (``ema``) as parameters."""
    weights = dict(checkpoint["model"])  # type: ignore[arg-type]
    average = checkpoint.get("ema")
    if average is not None:
        if not isinstance(average, Mapping) or not set(average) <= set(weights):
            raise FileFormatError("the checkpoint's weight average (ema) does not hold this model's parameters")
        weights.update(average)
    return weights

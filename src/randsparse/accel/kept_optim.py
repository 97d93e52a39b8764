"""O(kept) optimizer steps: the optimizer updates only the kept entries of masked weights, as a values tensor.

`use_kept_optimizer(model, optimizer)` puts, in the optimizer's parameter groups, a kept-values
tensor (one float per kept weight) in place of each masked weight of a `torch.optim.SGD`, `Adam`
or `AdamW`, so the update and the optimizer state (momentum, Adam moments) cost time and memory in
proportion to the kept weights. The dense weight stays the model's parameter and the source of
truth: before each step its kept entries and their gradients are gathered (O(kept), parallel numba
gathers of `randsparse.accel.train_kernels`), after it the new values are written back (O(kept))
and its gradient dropped; the gather of the weights is
skipped when the weight was not written since the last write-back (its version counter tells).
Pruned entries are never touched, so they stay exactly zero, and `FixedMask`'s re-masking after
the step has nothing dense left to do for these weights. The optimizer's ``state_dict()`` is the
dense-shaped one of the plain optimizer (kept state scattered, zeros elsewhere) and
``load_state_dict()`` takes it, so checkpoints keep the
standard format and resume with or without this.

Measured (MLP 784-1024-1024-10 layers, SGD momentum + weight decay, 2 threads): the masked dense
step with `FixedMask`'s re-masking took 6-9× the kept-only step plus write-back at 2-5 % density.

A mask change (dynamic sparse training) is picked up before the next step: the state is carried
to the new kept positions, zero for newly kept weights (as a reset of their state would make it).
Only elementwise optimizers qualify; others are left alone (the function returns False).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.graph import increment_version

from randsparse.accel import train_kernels
from randsparse.sparsity.enforce import BUFFER_SUFFIX

_ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
_KERNEL_DTYPES = (torch.float32, torch.float64)  # what the numba gathers take; others use torch's ops


class _Kept:
    """One masked weight and its kept-values stand-in in the optimizer."""

    def __init__(self, weight: nn.Parameter, module: nn.Module, attr: str) -> None:
        self.weight = weight
        self.module = module
        self.buffer = attr + BUFFER_SUFFIX
        self.values = nn.Parameter(torch.empty(0, dtype=weight.dtype), requires_grad=True)
        self.index = torch.empty(0, dtype=torch.long)
        self.index_np = self.index.numpy()
        self.key: tuple[int, int] | None = None
        self.synced: int | None = None  # the weight's version when `values` last equalled its kept entries

    def mask(self) -> torch.Tensor:
        return self.module._buffers[self.buffer]

    def current(self) -> bool:
        mask = self.mask()
        return self.key == (id(mask), mask._version)

    def reindex(self, state: dict[str, Any]) -> None:
        """Read the mask again; carry `state` (kept-size tensors) to the new kept positions."""
        mask = self.mask()
        dense_state = {k: self.scatter(v) for k, v in state.items()}
        self.index = mask.detach().reshape(-1).nonzero().squeeze(1).cpu()
        self.index_np = self.index.numpy()
        self.key = (id(mask), mask._version)
        self.values.data = self.take(self.weight.detach())
        self.synced = self.weight._version
        state.update({k: self.gather(v) for k, v in dense_state.items()})

    def take(self, dense: torch.Tensor) -> torch.Tensor:
        """The kept entries of a weight-shaped CPU tensor, in `index` order (a parallel gather, O(kept))."""
        flat = dense.reshape(-1)
        if not flat.is_contiguous() or flat.dtype not in _KERNEL_DTYPES:
            return torch.index_select(flat, 0, self.index)
        out = torch.empty(self.index.numel(), dtype=flat.dtype)
        train_kernels.gather_slots(flat.numpy(), self.index_np, out.numpy())
        return out

    def put(self, values: torch.Tensor, dense: torch.Tensor) -> None:
        """Write `values` (kept size) into the kept entries of the weight-shaped `dense`, in place."""
        if not dense.is_contiguous() or dense.dtype not in _KERNEL_DTYPES:
            dense.view(-1).scatter_(0, self.index, values)
            return
        train_kernels.scatter_at(self.index_np, values.contiguous().numpy(), dense.view(-1).numpy())
        increment_version(dense)  # a write through NumPy: tell autograd's checks and version-keyed caches

    def scatter(self, value: Any) -> Any:
        """A kept-size state tensor as a weight-shaped one (zeros at pruned entries); others unchanged."""
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == self.index.numel():
            dense = torch.zeros(self.weight.numel(), dtype=value.dtype, device=value.device)
            dense[self.index] = value
            return dense.view(self.weight.shape)
        return value

    def gather(self, value: Any) -> Any:
        """A weight-shaped state tensor as a kept-size one; others unchanged."""
        if isinstance(value, torch.Tensor) and value.shape == self.weight.shape:
            return value.reshape(-1)[self.index].clone()
        return value


class KeptOptimizer:
    """The hooks that make `optimizer` step over kept values (see the module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, entries: dict[int, _Kept]) -> None:
        self.optimizer = optimizer
        self.entries = entries  # position in the flattened param groups -> entry
        self._handles = [
            optimizer.register_step_pre_hook(self._before),
            optimizer.register_step_post_hook(self._after),
            optimizer.register_state_dict_post_hook(self._dense_state),
            optimizer.register_load_state_dict_pre_hook(self._kept_state),
        ]

    def _before(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for entry in self.entries.values():
                if not entry.current():
                    entry.reindex(optimizer.state.get(entry.values, {}))
                elif entry.weight._version != entry.synced:  # written since the last step (a load, a rewind)
                    entry.values.data = entry.take(entry.weight.detach())
                grad = entry.weight.grad
                entry.values.grad = None if grad is None else entry.take(grad)

    def _after(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for entry in self.entries.values():
                entry.put(entry.values.detach(), entry.weight.detach())
                entry.synced = entry.weight._version
                entry.weight.grad = None
                entry.values.grad = None

    def _dense_state(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        for position, entry in self.entries.items():
            if position in state_dict["state"]:
                state_dict["state"][position] = {k: entry.scatter(v) for k, v in state_dict["state"][position].items()}
        return state_dict

    def _kept_state(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict = {**state_dict, "state": dict(state_dict["state"])}
        for position, entry in self.entries.items():
            if not entry.current():
                entry.reindex({})
            if position in state_dict["state"]:
                state_dict["state"][position] = {k: entry.gather(v) for k, v in state_dict["state"][position].items()}
        return state_dict

    def remove(self) -> None:
        """Put the dense weights back in the parameter groups (state scattered back) and drop the hooks."""
        for handle in self._handles:
            handle.remove()
        by_values = {id(e.values): e for e in self.entries.values()}
        for group in self.optimizer.param_groups:
            for i, param in enumerate(group["params"]):
                entry = by_values.get(id(param))
                if entry is not None:
                    state = self.optimizer.state.pop(param, None)
                    if state is not None:
                        self.optimizer.state[entry.weight] = {k: entry.scatter(v) for k, v in state.items()}
                    group["params"][i] = entry.weight


# Above this density the gathers and write-backs cost about what they save (engine ``auto`` keeps
# such weights dense in the optimizer; ``sparse`` takes them all).
AUTO_MAX_DENSITY = 0.25


def use_kept_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, max_density: float = 1.0
) -> KeptOptimizer | None:
    """Make `optimizer` update only the kept entries of `model`'s masked weights; None when it does not qualify.

    Qualifies: exactly `torch.optim.SGD`, `Adam` or `AdamW` (elementwise updates), CPU weights,
    masks attached (`randsparse.sparsity.attach`), density at most `max_density`. Call after
    `attach`; existing state is converted.
    """
    if type(optimizer) not in _ELEMENTWISE:
        return None
    owners: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for attr, param in module._parameters.items():
            mask = module._buffers.get(attr + BUFFER_SUFFIX)
            if param is None or mask is None or param.device.type != "cpu":
                continue
            if float(mask.sum()) <= max_density * mask.numel():
                owners[id(param)] = (module, attr)
    entries: dict[int, _Kept] = {}
    position = 0
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            owner = owners.get(id(param))
            if owner is not None:
                entry = _Kept(param, *owner)
                state = optimizer.state.pop(param, {})
                entry.reindex({})
                if state:  # dense-shaped: gathered at the kept positions
                    optimizer.state[entry.values] = {k: entry.gather(v) for k, v in state.items()}
                group["params"][i] = entry.values
                entries[position] = entry
            position += 1
    return KeptOptimizer(optimizer, entries) if entries else None

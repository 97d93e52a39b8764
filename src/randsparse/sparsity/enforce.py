"""Fixed-mask training: keep pruned weights at exactly zero whatever the optimizer does.

`attach(model, masks, optimizer)` does three things, all undone by `FixedMask.remove()`:

1. stores each mask as a non-persistent buffer ``<weight>_randsparse_mask`` on the module owning
   the weight, so the masks follow `.to()`, `copy.deepcopy` and `torch.save(model)` without
   changing the model's `state_dict` keys;
2. registers a gradient hook on each masked weight, so the gradient of a pruned weight is zero
   before any optimizer, gradient clipping or DDP all-reduce sees it. A weight frozen at attach
   time (``requires_grad=False``) cannot hold a hook yet: a forward pre-hook on the model gives it
   one at the first forward after it is unfrozen, before its gradient is computed;
3. registers an optimizer step post-hook that re-masks the weights and every optimizer state
   tensor shaped like a weight (momentum, Adam moments, ...), so neither weight decay nor stale
   state can bring a pruned weight back.

Any optimizer works (SGD, Adam, AdamW, under a `torch.amp.GradScaler` too): nothing here depends
on its update rule. Hooks are not carried by `copy.deepcopy` or pickling; call `attach` again on a
copy (`masks_from_model` reads its masks back).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from functools import partial

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from randsparse.errors import MaskMismatchError
from randsparse.sparsity.layers import owning_module
from randsparse.sparsity.masks import MaskSet

BUFFER_SUFFIX = "_randsparse_mask"

# Weights whose masks a live `FixedMask` enforces, keyed by id (tensors cannot be compared as
# keys). Weak, so it never keeps a model alive; a copy of a model has new weight tensors, so masks
# can be attached to the copy again.
_ENFORCED: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def _mask_grad(module: nn.Module, buffer: str, grad: torch.Tensor) -> torch.Tensor:
    # Read the buffer at call time, so a later `.to(device)` of the model is honoured.
    return grad * module._buffers[buffer]


class _UnfrozenWatch:
    """Forward pre-hook that hooks the gradients of weights unfrozen since `attach`.

    A copy (``copy.deepcopy``, pickling) is inert: the copied model's weights are new tensors,
    which only an `attach` on the copy enforces.
    """

    def __init__(self, handle: FixedMask | None) -> None:
        self._handle = handle

    def __call__(self, module: nn.Module, args: object) -> None:
        if self._handle is not None:
            self._handle._hook_gradients()

    def __reduce__(self) -> tuple[type[_UnfrozenWatch], tuple[None]]:
        return (_UnfrozenWatch, (None,))


class FixedMask:
    """Handle of masks attached to a model (and optimizers); `remove()` detaches everything."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        masks = masks if isinstance(masks, MaskSet) else MaskSet(masks)
        masks.validate(model)
        self.model = model
        self._targets: dict[int, tuple[nn.Parameter, nn.Module, str]] = {}
        self._handles: list[RemovableHandle] = []
        self._optimizers: list[Optimizer] = []
        # Check every layer before touching any, so a refused attach leaves the model as it was.
        located = []
        for name, mask in masks.items():
            module, attr = owning_module(model, name)
            weight = module._parameters[attr]
            assert weight is not None
            if id(weight) in _ENFORCED:
                raise MaskMismatchError(f"masks are already attached to {name!r}; remove them first")
            located.append((module, attr, weight, mask))
        for module, attr, weight, mask in located:
            # A copied or unpickled model may carry a stale buffer of that name: it is replaced.
            buffer = attr + BUFFER_SUFFIX
            module.register_buffer(buffer, mask.to(weight.device), persistent=False)
            self._targets[id(weight)] = (weight, module, buffer)
            _ENFORCED[id(weight)] = weight
        self._hooked: set[int] = set()
        self._hook_gradients()
        # A weight unfrozen later gets its hook before the next forward computes its gradient.
        self._handles.append(model.register_forward_pre_hook(_UnfrozenWatch(self)))
        self._reapply(p for p, _, _ in self._targets.values())

    def _hook_gradients(self) -> None:
        """Give every masked weight that now requires a gradient its masking hook (once)."""
        for key, (weight, module, buffer) in self._targets.items():
            if key not in self._hooked and weight.requires_grad:
                self._handles.append(weight.register_hook(partial(_mask_grad, module, buffer)))
                self._hooked.add(key)

    @property
    def masks(self) -> MaskSet:
        """The attached masks, read from the model's buffers."""
        return masks_from_model(self.model)

    def watch(self, optimizer: Optimizer) -> None:
        """Re-mask weights and `optimizer`'s state after each of its steps; zero stale state now."""
        if any(o is optimizer for o in self._optimizers):
            return
        self._optimizers.append(optimizer)
        self._handles.append(optimizer.register_step_post_hook(self._after_step))
        self._after_step(optimizer, (), {})

    @torch.no_grad()
    def _after_step(self, optimizer: Optimizer, args: object, kwargs: object) -> None:
        params = (p for group in optimizer.param_groups for p in group["params"])
        masked = [p for p in params if id(p) in self._targets]
        self._reapply(masked)
        for p in masked:
            state = optimizer.state.get(p)
            if not state:
                continue
            mask = self._mask_of(p)
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.mul_(mask)

    def _mask_of(self, param: torch.Tensor) -> torch.Tensor:
        _, module, buffer = self._targets[id(param)]
        return module._buffers[buffer]

    @torch.no_grad()
    def _reapply(self, params: Iterable[torch.Tensor]) -> None:
        for p in params:
            mask = self._mask_of(p)
            p.mul_(mask)
            if p.grad is not None:
                p.grad.mul_(mask)

    def remove(self, keep_buffers: bool = False) -> None:
        """Stop enforcing: drop every hook and (unless `keep_buffers`) the mask buffers."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._optimizers.clear()
        for weight, module, buffer in self._targets.values():
            _ENFORCED.pop(id(weight), None)
            if not keep_buffers:
                module._buffers.pop(buffer, None)
                module._non_persistent_buffers_set.discard(buffer)
        self._targets.clear()
        self._hooked.clear()


def attach(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    optimizer: Optimizer | Iterable[Optimizer] | None = None,
) -> FixedMask:
    """Apply `masks` to `model` and keep them fixed through training with `optimizer`(s)."""
    handle = FixedMask(model, masks)
    optimizers = [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer or [])
    for opt in optimizers:
        handle.watch(opt)
    return handle


def masks_from_model(model: nn.Module) -> MaskSet:
    """The masks attached to `model` (e.g. a deep copy or an unpickled model), by weight name."""
    found: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for buffer, mask in module._buffers.items():
            if buffer.endswith(BUFFER_SUFFIX) and mask is not None:
                attr = buffer[: -len(BUFFER_SUFFIX)]
                found[f"{module_name}.{attr}" if module_name else attr] = mask
    return MaskSet(found)

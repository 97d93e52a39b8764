"""Mask enforcement: keep pruned weights at exactly zero whatever the optimizer does, and move masks.

`attach(model, masks, optimizer)` does the first three, all undone by `FixedMask.remove()`; the fourth
happens on request:

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

4. changes the masks when a sparse-training method moves them (`FixedMask.update_masks`, the one
   place masks change): buffers overwritten in place, weights at changed positions set to zero,
   their gradients and optimizer state reset; `capture_dense_gradients` keeps the unmasked
   gradients of one step for a method that grows by gradient (RigL).

Any optimizer works (SGD, Adam, AdamW, under a `torch.amp.GradScaler` too): nothing here depends
on its update rule. Hooks are not carried by `copy.deepcopy` or pickling; call `attach` again on a
copy (`masks_from_model` reads its masks back).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

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

# Each live bool mask's 0/1 copy in a float dtype, keyed by id(mask): (weak ref to the mask, its
# version, the copy). An entry goes when its mask is freed, and is remade when the mask changes.
_MULTIPLIERS: dict[tuple[int, torch.dtype], tuple[weakref.ref, int, torch.Tensor]] = {}


def _multiplier(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`mask` as 0/1 values of `dtype`, converted once per mask state (another tensor, or an in-place change)."""
    if mask.dtype == dtype:
        return mask
    key = (id(mask), dtype)
    hit = _MULTIPLIERS.get(key)
    if hit is not None and hit[0]() is mask and hit[1] == mask._version:
        return hit[2]
    value = mask.to(dtype)
    _MULTIPLIERS[key] = (weakref.ref(mask, lambda _, key=key: _MULTIPLIERS.pop(key, None)), mask._version, value)
    return value


def zero_pruned_(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set the entries of `tensor` that bool `mask` prunes to zero, in place; returns `tensor`.

    Multiplying by a bool mask converts the whole mask on every call (for a 1024 x 1024 weight, a
    pass and an allocation costing more than the multiply itself, at every optimizer step); this
    multiplies by a float copy of the mask made once per mask state (it costs one weight's memory).
    """
    return tensor.mul_(_multiplier(mask, tensor.dtype))


def without_pruned(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of `grad` with the entries bool `mask` prunes set to zero (also where `grad` is NaN or inf).

    `torch.where` reads the bool mask as it is: no conversion, one pass.
    """
    return torch.where(mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


# A module whose ``__dict__`` holds this key set to True declares that the next gradient its masked
# weights receive is already zero at every pruned position (the sparse training engine computes
# only kept entries): the gradient hook then passes it through instead of masking it again. Whoever
# sets it sets False when a forward computes a dense gradient; the hook consumes it (pops it).
GRADIENT_PREMASKED = "_randsparse_gradient_premasked"


class _GradMask:
    """Gradient hook of one masked weight: masks the gradient, first keeping a dense copy when asked."""

    def __init__(self, handle: FixedMask, name: str, module: nn.Module, buffer: str) -> None:
        self.handle, self.name, self.module, self.buffer = handle, name, module, buffer

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        premasked = self.module.__dict__.pop(GRADIENT_PREMASKED, False)
        dense = self.handle._dense
        if dense is not None:  # summed over the backward passes of one optimizer step (accumulation)
            kept = dense.get(self.name)
            dense[self.name] = grad.detach().clone() if kept is None else kept + grad.detach()
        elif premasked:
            return grad
        # Read the buffer at call time, so a later `.to(device)` of the model is honoured.
        return without_pruned(grad, self.module._buffers[self.buffer])


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
        self._names: dict[str, int] = {}  # weight name -> key of `_targets`
        self._dense: dict[str, torch.Tensor] | None = None  # unmasked gradients, while capturing
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
            located.append((name, module, attr, weight, mask))
        for name, module, attr, weight, mask in located:
            # A copied or unpickled model may carry a stale buffer of that name: it is replaced.
            buffer = attr + BUFFER_SUFFIX
            module.register_buffer(buffer, mask.to(weight.device), persistent=False)
            self._targets[id(weight)] = (weight, module, buffer)
            self._names[name] = id(weight)
            _ENFORCED[id(weight)] = weight
        self._hooked: set[int] = set()
        self._hook_gradients()
        # A weight unfrozen later gets its hook before the next forward computes its gradient.
        self._handles.append(model.register_forward_pre_hook(_UnfrozenWatch(self)))
        self._reapply(p for p, _, _ in self._targets.values())

    def _hook_gradients(self) -> None:
        """Give every masked weight that now requires a gradient its masking hook (once)."""
        for name, key in self._names.items():
            weight, module, buffer = self._targets[key]
            if key not in self._hooked and weight.requires_grad:
                self._handles.append(weight.register_hook(_GradMask(self, name, module, buffer)))
                self._hooked.add(key)

    @property
    def masks(self) -> MaskSet:
        """The attached masks, read from the model's buffers."""
        return masks_from_model(self.model)

    def capture_dense_gradients(self, enabled: bool) -> None:
        """Start (or stop) keeping each masked weight's unmasked gradient of the coming backward passes.

        While capturing, the gradient hooks still mask what the optimizer, clipping and DDP see; the
        dense copies (summed over the backward passes until `dense_gradients`) are only read by a
        method that grows by gradient (RigL). Under AMP they carry the loss scale: a per-layer
        ranking does not depend on it.
        """
        self._dense = {} if enabled else None

    def dense_gradients(self) -> dict[str, torch.Tensor]:
        """The unmasked gradients captured since `capture_dense_gradients(True)`, by weight name; stops capturing.

        A weight that got no gradient is absent. Raises `MaskMismatchError` when nothing was captured.
        """
        if self._dense is None:
            raise MaskMismatchError("dense gradients were not captured for this step")
        dense, self._dense = self._dense, None
        return dense

    @torch.no_grad()
    def update_masks(
        self, new_masks: Mapping[str, torch.Tensor], counts: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Change the attached masks in place (the one place masks move); returns positions changed per layer.

        `new_masks` maps (some of) the attached weight names to bool tensors of their shapes; with
        `counts`, each layer must hold exactly that many active positions. Every layer is checked
        before any is changed (`MaskMismatchError` otherwise). Then, per layer: the mask buffer is
        overwritten in place (so `.to()`-moved buffers and views of it stay valid), every position
        whose state changed has its weight set to zero (dropped weights are pruned; regrown weights
        start at zero, as in SET and RigL) and its gradient and every weight-shaped state tensor of
        every watched optimizer (momentum, Adam's ``exp_avg`` / ``exp_avg_sq``, ...) reset to zero.
        """
        checked = []
        for name, mask in new_masks.items():
            if name not in self._names:
                raise MaskMismatchError(f"no mask is attached to {name!r}")
            weight, module, buffer = self._targets[self._names[name]]
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
                raise MaskMismatchError(f"the new mask of {name!r} is not a bool tensor of shape {tuple(weight.shape)}")
            if counts is not None and int(mask.sum()) != counts[name]:
                raise MaskMismatchError(
                    f"the new mask of {name!r} keeps {int(mask.sum())} weights, not the {counts[name]} planned"
                )
            checked.append((name, weight, module._buffers[buffer], mask.to(weight.device)))
        changed_counts = {}
        for name, weight, current, mask in checked:
            changed = current != mask
            changed_counts[name] = int(changed.sum())
            current.copy_(mask)
            weight.masked_fill_(changed, 0)
            if weight.grad is not None:
                weight.grad.masked_fill_(changed, 0)
            for optimizer in self._optimizers:
                for value in optimizer.state.get(weight, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                        value.masked_fill_(changed, 0)
        return changed_counts

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
                    zero_pruned_(value, mask)

    def _mask_of(self, param: torch.Tensor) -> torch.Tensor:
        _, module, buffer = self._targets[id(param)]
        return module._buffers[buffer]

    @torch.no_grad()
    def _reapply(self, params: Iterable[torch.Tensor]) -> None:
        for p in params:
            mask = self._mask_of(p)
            zero_pruned_(p, mask)
            if p.grad is not None:
                zero_pruned_(p.grad, mask)

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
        self._names.clear()
        self._hooked.clear()
        self._dense = None


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

"""Kept-entry slots: where each padded CSR slot of a sparse training layer takes its value from in the dense weight.

A `Slots` maps the GROUP-padded CSR rows the kernels read (`randsparse.accel.kernels.pad_rows`)
to flat positions of the layer's dense weight: it gathers the packed values from the weight
(O(kept)), permutes another pack's values into its own order (`follow`, `values_from`: the
transposed pack of the backward pass), and scatters per-slot gradients into a dense-shaped weight
gradient, zero at the pruned entries, in a reused buffer (`scatter`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from randsparse.accel import kernels, train_kernels


def _references(buffer: np.ndarray) -> int:
    """`sys.getrefcount` of a gradient buffer's array, always taken the same way (`GradBuffer.take`)."""
    return sys.getrefcount(buffer)


class GradBuffer:
    """A weight's dense-shaped gradient buffer (flat, the weight's numel), zero outside the kept positions.

    One per pack, shared by all of its `Slots` (the forward pack's, the transposed packs' of the
    backward passes), so a layer holds one such buffer whichever pass wrote its last gradient.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.free = 0  # `_references` of `array` while no tensor uses it

    def take(self, numel: int, dtype: np.dtype) -> np.ndarray:
        """The buffer, or a fresh zeroed one while a tensor still uses it (or it has another size or dtype)."""
        # A tensor made by torch.from_numpy holds a reference to the array until its storage is freed,
        # so a count above the one taken when the array was new means a gradient still uses it.
        array = self.array
        if array is None or array.dtype != dtype or array.size != numel or _references(array) - 1 > self.free:
            self.array = np.zeros(numel, dtype=dtype)
            self.free = _references(self.array)
        return self.array


@dataclass
class Slots:
    """Where each padded CSR slot takes its value from in the flat weight (padding slots: zero).

    Gathers and scatters run in `train_kernels` (`gather_slots`, `scatter_at`: parallel, one pass).
    """

    index: torch.Tensor  # int64, per padded slot: flat position in the weight (0 for padding)
    real: torch.Tensor  # int64 positions of the real slots
    kept: torch.Tensor  # int64 flat weight positions of the real slots, in slot order
    position: np.ndarray  # int64, per padded slot: flat position in the weight, -1 for padding
    # per padded slot: its slot in the forward pass's slots (`follow`), -1 for padding
    source: np.ndarray | None = field(default=None, repr=False)
    # where `scatter` writes the dense-shaped gradient; packs share one between their slots
    buffer: GradBuffer = field(default_factory=GradBuffer, repr=False)

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """The padded values of `weight` in slot order (O(kept))."""
        out = torch.empty(len(self.position), dtype=weight.dtype)
        train_kernels.gather_slots(weight.detach().reshape(-1).numpy(), self.position, out.numpy())
        return out

    def follow(self, forward: Slots) -> Slots:
        """Record where each slot's entry sits in `forward`'s padded values (`values_from`); returns self."""
        kept = forward.kept.numpy()
        order = np.argsort(kept, kind="stable")
        real = self.position >= 0
        self.source = np.full(len(self.position), -1, dtype=np.int64)
        found = order[np.searchsorted(kept[order], self.position[real])]
        self.source[real] = forward.real.numpy()[found]
        return self

    def values_from(self, forward_values: torch.Tensor) -> torch.Tensor:
        """The padded values in slot order from the forward pass's padded values (O(kept), cache-resident).

        Used by the backward pass instead of a second gather from the dense weight; needs `follow`.
        """
        assert self.source is not None, "follow() first"
        out = torch.empty(len(self.source), dtype=forward_values.dtype)
        train_kernels.gather_slots(forward_values.numpy(), self.source, out.numpy())
        return out

    def scatter(self, grads: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A dense gradient shaped like `weight`: `grads` (per padded slot) at the kept positions, zero elsewhere.

        The gradient is written into `buffer` (`GradBuffer`), zero outside the kept positions, which is
        reused once no tensor uses it any more (the usual case: the optimizer step or `zero_grad`
        dropped the last gradient), so a step writes O(kept) entries instead of zero-filling the
        whole weight. While the last gradient is still held (accumulation over micro-batches, a
        reference kept by the caller), a fresh zeroed buffer is taken instead. Writing non-zeros
        into the pruned entries of a weight's ``.grad`` in place is not supported (nothing in
        torch's optimizers, clipping, AMP scaling or DDP's averaging does).
        """
        values = grads.numpy()
        dense = self.buffer.take(weight.numel(), values.dtype)
        train_kernels.scatter_at(self.position, values, dense)
        # A view of the tensor wrapping the buffer: two tensors on one storage, so autograd never sums
        # another gradient of this weight (a dense forward in the same step) into the buffer in place;
        # it does that only into memory no other tensor uses.
        return torch.from_numpy(dense).view(weight.shape)


def make_slots(counts: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, Slots]:
    """Padded row pointers and slots of rows holding `counts` entries, whose flat weight positions are `flat`."""
    rowptr, padded, real = kernels.pad_rows(counts, flat.astype(np.int64), np.ones(len(flat), dtype=bool))
    slots = Slots(
        torch.from_numpy(padded),
        torch.from_numpy(np.flatnonzero(real)),
        torch.from_numpy(flat.astype(np.int64)),
        np.where(real, padded, -1).astype(np.int64),
    )
    return rowptr, slots


def slots_of(index: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, Slots]:
    """Padded row pointers and slots of the kept entries of `mask`, row-major, each naming `index` there."""
    rows = mask.shape[0]
    row, col = np.nonzero(mask.detach().reshape(rows, -1).cpu().numpy().astype(bool, copy=False))
    flat = index.reshape(rows, -1).numpy()[row, col].astype(np.int64)
    return make_slots(np.bincount(row, minlength=rows), flat)

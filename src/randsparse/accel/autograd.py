"""Sparse training layers: autograd functions whose forward and backward cost follows the kept weights.

A *pack* holds the index structures of one masked weight, built once per mask (`LinearPack`, `ConvPack`;
again after a mask change): the kept positions as the GROUP-padded CSR rows the inference kernels
of `randsparse.accel.kernels` take, once for the weight and once for its transpose. The weight
itself stays the layer's ordinary dense `nn.Parameter` (pruned entries zero, as `FixedMask` keeps
them), so the state dict, the optimizer, checkpoints and DDP see a plain layer. Each call:

- forward: the kept values are gathered from the weight (O(kept)) and multiplied by the input
  with the CSR kernels (`csr_matmat` for a Linear, the direct convolution for a Conv2d);
- gradient w.r.t. the input: the same kernels with the transposed pack, whose values are the
  forward pass's packed values permuted (for a stride-1 "same"
  conv: the convolution of the output gradient with the flipped, transposed kept weights; for any
  other conv: the transposed direct convolution, `train_kernels.shifted_rows_sum`, no zero insertion);
- gradient w.r.t. the weight: only the kept entries, as sampled dense-dense products
  (`csr_sddmm`, `conv2d_sddmm`), scattered into a dense-shaped gradient (pruned entries zero), a
  buffer reused once no tensor holds the last one (`_Slots.scatter`), so no dense zero fill per step.

float32 and float64 CPU tensors (float64 for gradient checks); first-order gradients only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from randsparse.accel import kernels, train_kernels
from randsparse.accel.sparse_conv import SparseConv2d


def _references(buffer: np.ndarray) -> int:
    """`sys.getrefcount` of a slots' gradient buffer, always taken the same way (`_Slots.scatter`)."""
    return sys.getrefcount(buffer)


@dataclass
class _Slots:
    """Where each padded CSR slot takes its value from in the flat weight (padding slots: zero).

    Gathers and scatters run in `train_kernels` (`gather_slots`, `scatter_at`: parallel, one pass).
    """

    index: torch.Tensor  # int64, per padded slot: flat position in the weight (0 for padding)
    real: torch.Tensor  # int64 positions of the real slots
    kept: torch.Tensor  # int64 flat weight positions of the real slots, in slot order
    position: np.ndarray  # int64, per padded slot: flat position in the weight, -1 for padding
    # per padded slot: its slot in the forward pass's slots (`follow`), -1 for padding
    source: np.ndarray | None = field(default=None, repr=False)
    _grad: np.ndarray | None = field(default=None, repr=False)
    _grad_free: int = field(default=0, repr=False)  # `_references` of `_grad` while no tensor uses it

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """The padded values of `weight` in slot order (O(kept))."""
        out = torch.empty(len(self.position), dtype=weight.dtype)
        train_kernels.gather_slots(weight.detach().reshape(-1).numpy(), self.position, out.numpy())
        return out

    def follow(self, forward: _Slots) -> _Slots:
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

        The gradient is written into a buffer kept here, zero outside the kept positions, which is
        reused once no tensor uses it any more (the usual case: the optimizer step or `zero_grad`
        dropped the last gradient), so a step writes O(kept) entries instead of zero-filling the
        whole weight. While the last gradient is still held (accumulation over micro-batches, a
        reference kept by the caller), a fresh zeroed buffer is taken instead. Writing non-zeros
        into the pruned entries of a weight's ``.grad`` in place is not supported (nothing in
        torch's optimizers, clipping, AMP scaling or DDP's averaging does).
        """
        values = grads.numpy()
        # A tensor made by torch.from_numpy holds a reference to the buffer until its storage is freed,
        # so a count above the one taken when the buffer was new means a gradient still uses it.
        if self._grad is None or self._grad.dtype != values.dtype or _references(self._grad) > self._grad_free:
            self._grad = np.zeros(weight.numel(), dtype=values.dtype)
            self._grad_free = _references(self._grad)
        train_kernels.scatter_at(self.position, values, self._grad)
        # A view of the tensor wrapping the buffer: two tensors on one storage, so autograd never sums
        # another gradient of this weight (a dense forward in the same step) into the buffer in place;
        # it does that only into memory no other tensor uses.
        return torch.from_numpy(self._grad).view(weight.shape)


def _make_slots(counts: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, _Slots]:
    """Padded row pointers and slots of rows holding `counts` entries, whose flat weight positions are `flat`."""
    rowptr, padded, real = kernels.pad_rows(counts, flat.astype(np.int64), np.ones(len(flat), dtype=bool))
    slots = _Slots(
        torch.from_numpy(padded),
        torch.from_numpy(np.flatnonzero(real)),
        torch.from_numpy(flat.astype(np.int64)),
        np.where(real, padded, -1).astype(np.int64),
    )
    return rowptr, slots


def _slots(index: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, _Slots]:
    """Padded row pointers and slots of the kept entries of `mask`, row-major, each naming `index` there."""
    rows = mask.shape[0]
    row, col = np.nonzero(mask.detach().reshape(rows, -1).cpu().numpy().astype(bool, copy=False))
    flat = index.reshape(rows, -1).numpy()[row, col].astype(np.int64)
    return _make_slots(np.bincount(row, minlength=rows), flat)


def _feature_major(x: torch.Tensor) -> torch.Tensor:
    """`x` (batch, features) as a contiguous (features, batch) tensor (no copy when `x.t()` is one)."""
    xt = x.t()
    if xt.is_contiguous():
        return xt
    out = torch.empty(x.shape[1], x.shape[0], dtype=x.dtype)
    kernels.transpose(x.contiguous().numpy(), out.numpy())
    return out


class LinearPack:
    """Kept entries of a Linear weight (out, in) as padded CSR rows of W and of W^T."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.shape = tuple(int(d) for d in mask.shape)
        index = torch.arange(mask.numel()).view(self.shape)
        rowptr, self.slots = _slots(index, mask)
        rowptr_t, self.slots_t = _slots(index.t(), mask.t())
        self.slots_t.follow(self.slots)
        self.rowptr = rowptr
        self.cols = (self.slots.index % self.shape[1]).to(torch.int32).numpy()
        self.rowptr_t = rowptr_t
        self.cols_t = (self.slots_t.index // self.shape[1]).to(torch.int32).numpy()
        self.nnz = len(self.slots.kept)
        self._zeros: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def zeros(self, n: int, dtype: torch.dtype) -> np.ndarray:
        """A cached zero bias of `n` entries."""
        key = (n, dtype)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros(n, dtype=dtype)
        return self._zeros[key].numpy()


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: LinearPack):
        kernels.sync_threads()
        out_features = pack.shape[0]
        xt = _feature_major(x.detach())
        vals = pack.slots.values(weight)
        b = pack.zeros(out_features, x.dtype) if bias is None else bias.detach().contiguous().numpy()
        # A (batch, out) tensor stored feature-major: not a view, so in-place ops (ReLU) may follow.
        y = torch.empty_strided((x.shape[0], out_features), (1, x.shape[0]), dtype=x.dtype)
        kernels.csr_matmat(pack.rowptr, pack.cols, vals.numpy(), b, xt.numpy(), y.t().numpy())
        ctx.pack = pack
        ctx.has_bias = bias is not None
        # A leaf input's gradient becomes its .grad, which autograd copies to the input's (batch-major)
        # layout; the backward pass then writes it so with the blocked transpose instead.
        ctx.leaf_input = x.requires_grad and x.grad_fn is None and x.is_contiguous()
        ctx.save_for_backward(xt, weight, vals)  # the weight only for autograd's in-place-write check
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor):
        pack: LinearPack = ctx.pack
        xt, weight, vals = ctx.saved_tensors
        gyt = _feature_major(gy)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            vals_t = pack.slots_t.values_from(vals)
            gxt = torch.empty(pack.shape[1], gy.shape[0], dtype=gy.dtype)
            zeros = pack.zeros(pack.shape[1], gy.dtype)
            kernels.csr_matmat(pack.rowptr_t, pack.cols_t, vals_t.numpy(), zeros, gyt.numpy(), gxt.numpy())
            gx = gxt.t()
            if ctx.leaf_input:
                gx = torch.empty(gy.shape[0], pack.shape[1], dtype=gy.dtype)
                kernels.transpose(gxt.numpy(), gx.numpy())
        if ctx.needs_input_grad[1]:
            gv = torch.empty(len(pack.slots.index), dtype=gy.dtype)
            train_kernels.csr_sddmm(pack.rowptr, pack.cols, gyt.numpy(), xt.numpy(), gv.numpy())
            gw = pack.slots.scatter(gv, weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gyt.sum(1)
        return gx, gw, gb, None


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: LinearPack) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for a weight zero outside `pack`'s kept entries, in O(kept) work.

    `x` (..., in_features), CPU float32/float64; returns (..., out_features), possibly a transposed
    view. Gradients flow to `x`, `weight` (kept entries only; pruned ones get exactly zero) and `bias`.
    """
    if x.dim() == 2:
        return _SparseLinearFn.apply(x, weight, bias, pack)
    flat = x.reshape(-1, x.shape[-1])
    return _SparseLinearFn.apply(flat, weight, bias, pack).reshape(*x.shape[:-1], pack.shape[0])


def _flip_transpose(t: torch.Tensor, groups: int) -> torch.Tensor:
    """A conv weight (K, C/g, kh, kw) as the weight of its transposed convolution (C, K/g, kh, kw), taps flipped."""
    k, cg, kh, kw = t.shape
    return t.view(groups, k // groups, cg, kh, kw).transpose(1, 2).flip(3, 4).reshape(groups * cg, k // groups, kh, kw)


class ConvPack:
    """Kept entries of a Conv2d weight, as the direct convolution takes them, for the conv and its transposes.

    `forward_conv` computes the layer. The input gradient comes one of two ways:

    - stride 1 with "same" padding (2·padding = dilation·(kernel − 1)): `backward_conv`, the
      convolution with the flipped, transposed kept weights, of the output gradient gathered with
      the forward pass's geometry; that gathered gradient is, shifted, also the layout the weight
      gradient reads, so one gather serves both;
    - any other geometry (stride > 1 included): the transposed direct convolution
      (`train_kernels.shifted_rows_sum`) writes the gradient of the forward pass's gathered input,
      which `train_kernels.conv2d_scatter_input` puts back in (N, C, H, W): no zero insertion.
    """

    def __init__(self, layer: nn.Conv2d, mask: torch.Tensor) -> None:
        self.stride, self.padding, self.dilation = tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation)
        self.groups = int(layer.groups)
        self.kernel_size = tuple(layer.kernel_size)
        self.in_channels, self.out_channels = int(layer.in_channels), int(layer.out_channels)
        shape = tuple(mask.shape)
        self.forward_conv = SparseConv2d(
            torch.zeros(shape), mask, None, self.stride, self.padding, self.dilation, self.groups, mode="sparse"
        )
        index = torch.arange(mask.numel()).view(shape)
        _, self.slots = _slots(index, mask)
        reach = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
        self.same = self.stride == (1, 1) and all(r == 2 * p for r, p in zip(reach, self.padding, strict=True))
        self.backward_conv: SparseConv2d | None = None
        if self.same:
            mask_t = _flip_transpose(mask, self.groups)
            self.slots_t = _slots(_flip_transpose(index, self.groups), mask_t)[1].follow(self.slots)
            self.backward_conv = SparseConv2d(
                torch.zeros(mask_t.shape), mask_t, None, 1, self.padding, self.dilation, self.groups, mode="sparse"
            )
        self.nnz = len(self.slots.kept)
        self._zeros: dict[tuple[int, torch.dtype], np.ndarray] = {}
        self._transposed: dict[tuple[int, ...], _Transposed] = {}

    def zeros(self, n: int, dtype: torch.dtype) -> np.ndarray:
        """A cached zero bias of `n` entries."""
        key = (n, dtype)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros(n, dtype=dtype).numpy()
        return self._zeros[key]

    def transposed(self, plan: Any) -> _Transposed:
        """The transposed direct convolution for the forward `plan` (cached per input shape)."""
        key = (plan.n_img, plan.hq, plan.wq, plan.chan_len)
        if key not in self._transposed:
            self._transposed[key] = _Transposed(self, plan)
        return self._transposed[key]


class _Transposed:
    """The transposed direct convolution: per row of the forward pass's gathered input, the kept weights reading it.

    Kept weight j reads gathered row R_j at shift d_j (`plan.offsets[j] = R_j·chan_len + d_j`), so
    the gradient of row R at u sums value_j · g_k(j)[u − d_j]. The output gradient is laid out with
    `front` = max d_j leading zeros per channel row (`layout`), so every read is in bounds.
    """

    def __init__(self, pack: ConvPack, plan: Any) -> None:
        conv = pack.forward_conv
        rowptr = conv.rowptr.numpy()
        real = pack.slots.real.numpy()
        offsets = plan.offsets[real]
        row_of = np.repeat(np.arange(pack.out_channels), np.diff(rowptr))[real]
        gathered_row, shift = np.divmod(offsets, plan.chan_len)
        self.front = int(shift.max()) if len(shift) else 0
        self.cols = int(plan.chan_len)
        self.row_len = self.front + self.cols
        self.rows = pack.stride[0] * pack.stride[1] * pack.in_channels
        order = np.argsort(gathered_row, kind="stable")
        counts = np.bincount(gathered_row[order], minlength=self.rows)
        flat = pack.slots.kept.numpy()[order]
        source = row_of[order] * self.row_len + self.front - shift[order]
        self.rowptr, self.slots = _make_slots(counts, flat)
        self.slots.follow(pack.slots)
        self.offsets = kernels.pad_rows(counts, source.astype(np.int64))[1]
        threads = kernels.sync_threads()
        self.tile = 2048
        tiles = -(-self.cols // self.tile)
        chunks = -(-4 * threads // tiles)  # (tile, row block) tasks: about 4 per thread, or one per tile
        self.r_chunk = -(-self.rows // chunks)

    def layout(self, gy: torch.Tensor, plan: Any) -> torch.Tensor:
        """`gy` (N, K, Ho, Wo) as (K, row_len): `front` zeros, then the forward pass's padded layout."""
        return _output_grad_layout(gy, plan.hq, plan.wq, self.front, self.row_len)

    def input_grad(
        self, rows: torch.Tensor, values: torch.Tensor, pack: ConvPack, plan: Any, x_shape: tuple[int, ...]
    ) -> torch.Tensor:
        """The input gradient (N, C, H, W) from the laid-out output gradient `rows` and the forward pass's `values`."""
        grad_q = np.empty((self.rows, self.cols), dtype=rows.numpy().dtype)
        vals = self.slots.values_from(values).numpy()
        source = rows.numpy().ravel()
        train_kernels.shifted_rows_sum(source, self.rowptr, self.offsets, vals, grad_q, self.tile, self.r_chunk)
        gx = torch.empty(tuple(x_shape), dtype=rows.dtype)
        train_kernels.conv2d_scatter_input(grad_q, gx.numpy(), *pack.stride, *pack.padding, plan.hq, plan.wq)
        return gx


def _output_grad_layout(gy: torch.Tensor, hq: int, wq: int, front: int = 0, row_len: int = 0) -> torch.Tensor:
    """`gy` (N, K, Ho, Wo) as (K, row_len), zero outside the valid outputs: the layout `conv2d_sddmm` reads.

    Row k holds `front` zeros, then gy[n, k] at n·hq·wq + i·wq + j, then zeros up to `row_len`
    (at least front + N·hq·wq; 0 means exactly that).
    """
    n, k, ho, wo = gy.shape
    plane = n * hq * wq
    rows = gy.new_zeros(k, max(row_len, front + plane))
    rows[:, front : front + plane].view(k, n, hq, wq)[:, :, :ho, :wo] = gy.transpose(0, 1)
    return rows


# Positions per piece of the weight-gradient walk: the gathered input of a piece stays under this many bytes.
_SDDMM_PIECE_BYTES = 1 << 19


class _SparseConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: ConvPack):
        conv = pack.forward_conv
        gathered, plan = conv.gather(x)
        vals = pack.slots.values(weight)
        b = pack.zeros(pack.out_channels, x.dtype) if bias is None else bias.detach().contiguous().numpy()
        out = conv.direct(gathered, plan, vals.numpy(), b)
        ctx.pack, ctx.plan, ctx.gathered = pack, plan, gathered
        ctx.has_bias = bias is not None
        ctx.x_shape = tuple(x.shape)
        ctx.save_for_backward(weight, vals)  # the weight only for autograd's in-place-write check
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor):
        pack: ConvPack = ctx.pack
        plan = ctx.plan
        weight, vals = ctx.saved_tensors
        gy = gy.contiguous()
        gx = gw = gb = None
        # The output gradient in the padded layout of the forward plan, as one flat buffer: row k at
        # base + k·stride. Built once for the input gradient and reused by the weight gradient.
        grad_rows: np.ndarray | None = None
        base = stride = 0
        if ctx.needs_input_grad[0]:
            if pack.same:
                conv = pack.backward_conv
                gathered, plan_t = conv.gather(gy)
                vals_t = pack.slots_t.values_from(vals).numpy()
                gx = conv.direct(gathered, plan_t, vals_t, pack.zeros(pack.in_channels, gy.dtype))
                # gathered row k holds gy[n, k] at (i + p_h, j + p_w) of the same hq × wq planes
                grad_rows, stride = gathered.ravel(), plan_t.chan_len
                base = pack.padding[0] * plan.wq + pack.padding[1]
            else:
                transposed = pack.transposed(plan)
                rows = transposed.layout(gy, plan)
                gx = transposed.input_grad(rows, vals, pack, plan, ctx.x_shape)
                grad_rows, stride, base = rows.numpy().ravel(), transposed.row_len, transposed.front
        # positions of a row of the padded layout up to the last valid output
        length = (plan.n_img - 1) * plan.hq * plan.wq + plan.out_h * plan.wq
        if ctx.needs_input_grad[1]:
            if grad_rows is None:
                grad_rows = _output_grad_layout(gy, plan.hq, plan.wq).numpy().ravel()
                stride = plan.n_img * plan.hq * plan.wq
            rows_in = ctx.gathered.shape[0]
            piece = int(max(256, min(8192, _SDDMM_PIECE_BYTES // (gy.element_size() * rows_in))))
            threads = kernels.sync_threads()
            k_chunk = max(1, -(-pack.out_channels // (4 * threads)))
            gv = torch.empty(len(pack.slots.index), dtype=gy.dtype)
            train_kernels.conv2d_sddmm(
                ctx.gathered,
                grad_rows,
                stride,
                base,
                pack.forward_conv.rowptr.numpy(),
                plan.offsets,
                gv.numpy(),
                k_chunk,
                piece,
                length,
            )
            gw = pack.slots.scatter(gv, weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            if grad_rows is None:
                gb = gy.sum((0, 2, 3))
            else:  # the rows already laid out: zero outside the valid outputs
                gb = torch.empty(pack.out_channels, dtype=gy.dtype)
                train_kernels.row_sums(grad_rows, base, stride, length, gb.numpy())
        return gx, gw, gb, None


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: ConvPack) -> torch.Tensor:
    """`F.conv2d` of the layer `pack` was built from, for a weight zero outside its kept entries, in O(kept) work.

    `x` (N, C, H, W), CPU float32/float64; returns (N, K, Ho, Wo). Gradients flow to `x`, `weight`
    (kept entries only; pruned ones get exactly zero) and `bias`.
    """
    return _SparseConvFn.apply(x, weight, bias, pack)

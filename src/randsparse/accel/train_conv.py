"""Sparse Conv2d training layer: forward, input gradient and kept-weight gradient in O(kept) work."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from randsparse.accel import kernels, train_kernels
from randsparse.accel.slots import make_slots, slots_of
from randsparse.accel.sparse_conv import SparseConv2d, block_size


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
        _, self.slots = slots_of(index, mask)
        reach = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
        self.same = self.stride == (1, 1) and all(r == 2 * p for r, p in zip(reach, self.padding, strict=True))
        self.backward_conv: SparseConv2d | None = None
        if self.same:
            mask_t = _flip_transpose(mask, self.groups)
            self.slots_t = slots_of(_flip_transpose(index, self.groups), mask_t)[1].follow(self.slots)
            self.slots_t.buffer = self.slots.buffer  # one gradient buffer, whichever pass writes it
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
        self.rowptr, self.slots = make_slots(counts, flat)
        self.slots.follow(pack.slots)
        self.slots.buffer = pack.slots.buffer  # one gradient buffer per layer, not one per input shape
        self.offsets = kernels.pad_rows(counts, source.astype(np.int64))[1]
        threads = kernels.sync_threads()
        self.tile = 2048
        tiles = -(-self.cols // self.tile)
        # (tile, row block) tasks: about 4 per thread, or one per tile
        self.r_chunk = block_size(self.rows, -(-4 * threads // tiles), threads) if tiles < 4 * threads else self.rows
        self.blocks = min(tiles, 4 * threads)  # the fused pass's tile blocks: one partial weight gradient each

    def layout(self, gy: torch.Tensor, plan: Any) -> torch.Tensor:
        """`gy` (N, K, Ho, Wo) as (K, row_len): `front` zeros, then the forward pass's padded layout."""
        return _output_grad_layout(gy, plan.hq, plan.wq, self.front, self.row_len)

    def input_grad(
        self,
        rows: torch.Tensor,
        values: torch.Tensor,
        pack: ConvPack,
        plan: Any,
        x_shape: tuple[int, ...],
        gathered: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input gradient (N, C, H, W) from the laid-out output gradient `rows` and the forward pass's `values`.

        With the forward pass's `gathered` input, the same pass also gives the kept weights'
        gradient (`train_kernels.shifted_rows_sum_sddmm`), per slot of `self.slots`; else None.
        """
        dtype = rows.numpy().dtype
        grad_q = np.empty((self.rows, self.cols), dtype=dtype)
        vals = self.slots.values_from(values).numpy()
        source = rows.numpy().ravel()
        grads = None
        if gathered is None:
            train_kernels.shifted_rows_sum(source, self.rowptr, self.offsets, vals, grad_q, self.tile, self.r_chunk)
        else:
            partial = np.empty((self.blocks, len(self.slots.index)), dtype=dtype)
            train_kernels.shifted_rows_sum_sddmm(
                source, self.rowptr, self.offsets, vals, grad_q, self.tile, self.r_chunk, gathered, partial
            )
            grads = torch.from_numpy(partial).sum(0)
        gx = torch.empty(tuple(x_shape), dtype=rows.dtype)
        train_kernels.conv2d_scatter_input(grad_q, gx.numpy(), *pack.stride, *pack.padding, plan.hq, plan.wq)
        return gx, grads


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


def _same_conv_grads(
    pack: ConvPack,
    conv: SparseConv2d,
    gathered_gy: np.ndarray,
    plan_t: Any,
    vals_t: np.ndarray,
    gathered_x: np.ndarray,
    base: int,
    x_shape: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradient (N, C, H, W) and kept weights' gradient (per slot of ``pack.slots_t``) of a "same" conv, one pass.

    `train_kernels.conv2d_direct_sddmm`. Many tiles (large maps): 4 blocks of tiles per thread,
    each task all channels of its block (the block's input stays in cache across channels) and
    its own partial weight gradient, summed here. Few tiles (8 per thread or fewer: small maps,
    several images per tile): one block, tasks by input channels, about 4 per thread
    (`sparse_conv.block_size`). An empty batch has no tiles: nothing to compute. Measured
    against the other split on the ResNet-20 ×4 shapes, batch 64, 95/98 %, 2 threads: 256 ch
    8×8 (6 tiles): 1.12-1.13× faster; 128 ch 16×16 (10 tiles): 1.06-1.09×; 64 ch 32×32 (64
    tiles): the blocks, 1.05-1.15× faster.
    """
    threads = kernels.sync_threads()
    tasks = 4 * threads
    tiles = len(plan_t.tiles)
    blocks = min(tiles, tasks) if tiles > 8 * threads else 1
    k_chunk = pack.in_channels if blocks > 1 else block_size(pack.in_channels, tasks, threads)
    gx = torch.empty(x_shape, dtype=torch.from_numpy(vals_t).dtype)
    if tiles == 0:  # an empty batch
        return gx, torch.zeros(len(pack.slots_t.index), dtype=gx.dtype)
    partial = np.empty((blocks, len(pack.slots_t.index)), dtype=gathered_gy.dtype)
    train_kernels.conv2d_direct_sddmm(
        gathered_gy,
        conv.rowptr.numpy(),
        plan_t.offsets,
        vals_t,
        gx.numpy(),
        plan_t.tiles,
        k_chunk,
        plan_t.wq,
        plan_t.hq * plan_t.wq,
        gathered_x,
        base,
        partial,
    )
    return gx, torch.from_numpy(partial).sum(0)


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
        # Both gradients wanted: one pass over the output gradient gives both (fused, as SparseProp's).
        fused = ctx.needs_input_grad[0] and ctx.needs_input_grad[1]
        if ctx.needs_input_grad[0]:
            if pack.same:
                conv = pack.backward_conv
                gathered, plan_t = conv.gather(gy)
                vals_t = pack.slots_t.values_from(vals).numpy()
                # gathered row k holds gy[n, k] at (i + p_h, j + p_w) of the same hq × wq planes
                grad_rows, stride = gathered.ravel(), plan_t.chan_len
                base = pack.padding[0] * plan.wq + pack.padding[1]
                if fused:
                    gx, grads = _same_conv_grads(pack, conv, gathered, plan_t, vals_t, ctx.gathered, base, ctx.x_shape)
                    gw = pack.slots_t.scatter(grads, weight)
                else:
                    gx = conv.direct(gathered, plan_t, vals_t, pack.zeros(pack.in_channels, gy.dtype))
            else:
                transposed = pack.transposed(plan)
                rows = transposed.layout(gy, plan)
                gx, grads = transposed.input_grad(rows, vals, pack, plan, ctx.x_shape, ctx.gathered if fused else None)
                if grads is not None:
                    gw = transposed.slots.scatter(grads, weight)
                grad_rows, stride, base = rows.numpy().ravel(), transposed.row_len, transposed.front
        # positions of a row of the padded layout up to the last valid output
        length = (plan.n_img - 1) * plan.hq * plan.wq + plan.out_h * plan.wq
        if ctx.needs_input_grad[1] and gw is None:
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

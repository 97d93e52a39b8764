"""Sparse training layers: autograd functions whose forward and backward cost follows the kept weights.

A *pack* holds the index structures of one masked weight, built once per mask (`pack_layer`;
again after a mask change): the kept positions as the GROUP-padded CSR rows the inference kernels
of `randsparse.accel.kernels` take, once for the weight and once for its transpose. The weight
itself stays the layer's ordinary dense `nn.Parameter` (pruned entries zero, as `FixedMask` keeps
them), so the state dict, the optimizer, checkpoints and DDP see a plain layer. Each call:

- forward: the kept values are gathered from the weight (O(kept)) and multiplied by the input
  with the CSR kernels (`csr_matmat` for a Linear, the direct convolution for a Conv2d);
- gradient w.r.t. the input: the same kernels with the transposed pack (for a conv: a stride-1
  convolution of the output gradient, zero-inserted for stride > 1, with the flipped, transposed
  kept weights);
- gradient w.r.t. the weight: only the kept entries, as sampled dense-dense products
  (`csr_sddmm`, `conv2d_sddmm`), scattered into a dense-shaped gradient (pruned entries zero).

float32 and float64 CPU tensors (float64 for gradient checks); first-order gradients only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from randsparse.accel import kernels
from randsparse.accel.sparse_conv import SparseConv2d


@dataclass
class _Slots:
    """Where each padded CSR slot takes its value from in the flat weight (padding slots: zero)."""

    index: torch.Tensor  # int64, per padded slot: flat position in the weight (0 for padding)
    padding: torch.Tensor  # int64 positions of the padding slots
    real: torch.Tensor  # int64 positions of the real slots
    kept: torch.Tensor  # int64 flat weight positions of the real slots, in slot order

    def values(self, weight: torch.Tensor) -> torch.Tensor:
        """The padded values of `weight` in slot order (O(kept))."""
        vals = torch.index_select(weight.detach().reshape(-1), 0, self.index)  # faster than vals[index]
        return vals.index_fill_(0, self.padding, 0)

    def scatter(self, grads: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A dense gradient shaped like `weight`: `grads` (per padded slot) at the kept positions, zero elsewhere."""
        dense = torch.zeros(weight.numel(), dtype=grads.dtype)
        dense.scatter_(0, self.kept, torch.index_select(grads, 0, self.real))  # scatter_: 2x index_copy_'s speed
        return dense.view(weight.shape)


def _slots(index: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, _Slots]:
    """Padded row pointers and slots of the kept entries of `mask`, row-major, each naming `index` there."""
    rows = mask.shape[0]
    row, col = np.nonzero(mask.detach().reshape(rows, -1).cpu().numpy().astype(bool, copy=False))
    flat = index.reshape(rows, -1).numpy()[row, col].astype(np.int64)
    counts = np.bincount(row, minlength=rows)
    rowptr, padded, real = kernels.pad_rows(counts, flat, np.ones(len(flat), dtype=bool))
    slots = _Slots(
        torch.from_numpy(padded),
        torch.from_numpy(np.flatnonzero(~real)),
        torch.from_numpy(np.flatnonzero(real)),
        torch.from_numpy(flat),
    )
    return rowptr, slots


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
        ctx.save_for_backward(xt, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor):
        pack: LinearPack = ctx.pack
        xt, weight = ctx.saved_tensors
        gyt = _feature_major(gy)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            vals_t = pack.slots_t.values(weight)
            gxt = torch.empty(pack.shape[1], gy.shape[0], dtype=gy.dtype)
            zeros = pack.zeros(pack.shape[1], gy.dtype)
            kernels.csr_matmat(pack.rowptr_t, pack.cols_t, vals_t.numpy(), zeros, gyt.numpy(), gxt.numpy())
            gx = gxt.t()
        if ctx.needs_input_grad[1]:
            gv = torch.empty(len(pack.slots.index), dtype=gy.dtype)
            kernels.csr_sddmm(pack.rowptr, pack.cols, gyt.numpy(), xt.numpy(), gv.numpy())
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
    """Kept entries of a Conv2d weight, as the direct convolution takes them, for the conv and its transpose.

    `forward_conv` computes the layer; `backward_conv` is the stride-1 convolution (dilation and
    groups kept, taps flipped, channels swapped) that gives the input gradient from the output
    gradient, zero-inserted by the stride and padded as `input_grad_padding` says.
    """

    def __init__(self, layer: nn.Conv2d, mask: torch.Tensor) -> None:
        self.stride, self.padding, self.dilation = tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation)
        self.groups = int(layer.groups)
        self.kernel_size = tuple(layer.kernel_size)
        self.in_channels, self.out_channels = int(layer.in_channels), int(layer.out_channels)
        shape = tuple(mask.shape)
        zeros = torch.zeros(shape)
        self.forward_conv = SparseConv2d(
            zeros, mask, None, self.stride, self.padding, self.dilation, self.groups, mode="sparse"
        )
        index = torch.arange(mask.numel()).view(shape)
        _, self.slots = _slots(index, mask)
        mask_t = _flip_transpose(mask, self.groups)
        self.slots_t = _slots(_flip_transpose(index, self.groups), mask_t)[1]
        # Stride 1 with padding <= the reach of the kernel: the padding is the kernel's own.
        reach = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
        self.direct_pad = self.stride == (1, 1) and all(r >= p for r, p in zip(reach, self.padding, strict=True))
        pad = tuple(r - p for r, p in zip(reach, self.padding, strict=True)) if self.direct_pad else (0, 0)
        self.backward_conv = SparseConv2d(
            torch.zeros(mask_t.shape), mask_t, None, 1, pad, self.dilation, self.groups, mode="sparse"
        )
        self.nnz = len(self.slots.kept)
        self._zeros: dict[tuple[int, torch.dtype], np.ndarray] = {}

    def zeros(self, n: int, dtype: torch.dtype) -> np.ndarray:
        """A cached zero bias of `n` entries."""
        key = (n, dtype)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros(n, dtype=dtype).numpy()
        return self._zeros[key]

    def input_grad_source(self, gy: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The output gradient laid out so that `backward_conv` of it is the input gradient (N, C, height, width)."""
        if self.direct_pad:
            return gy
        (sh, sw), (ph, pw) = self.stride, self.padding
        (dh, dw), (kh, kw) = self.dilation, self.kernel_size
        n, k, ho, wo = gy.shape
        if (sh, sw) != (1, 1):
            up = gy.new_zeros(n, k, (ho - 1) * sh + 1, (wo - 1) * sw + 1)
            up[:, :, ::sh, ::sw] = gy
            gy = up
        extra_h = height + 2 * ph - dh * (kh - 1) - 1 - (ho - 1) * sh
        extra_w = width + 2 * pw - dw * (kw - 1) - 1 - (wo - 1) * sw
        top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
        return F.pad(gy, (left, left + extra_w, top, top + extra_h))


def _output_grad_layout(gy: torch.Tensor, hq: int, wq: int) -> torch.Tensor:
    """`gy` (N, K, Ho, Wo) as (K, N*hq*wq), zero outside the valid outputs: the layout `conv2d_sddmm` reads."""
    n, k, ho, wo = gy.shape
    gq = gy.new_zeros(k, n, hq, wq)
    gq[:, :, :ho, :wo] = gy.transpose(0, 1)
    return gq.view(k, n * hq * wq)


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
        ctx.input_hw = (int(x.shape[2]), int(x.shape[3]))
        ctx.save_for_backward(weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor):
        pack: ConvPack = ctx.pack
        (weight,) = ctx.saved_tensors
        gy = gy.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            conv = pack.backward_conv
            source = pack.input_grad_source(gy, *ctx.input_hw)
            gathered, plan = conv.gather(source)
            gx = conv.direct(
                gathered, plan, pack.slots_t.values(weight).numpy(), pack.zeros(pack.in_channels, gy.dtype)
            )
        if ctx.needs_input_grad[1]:
            plan = ctx.plan
            gq = _output_grad_layout(gy, plan.hq, plan.wq)
            length = (plan.n_img - 1) * plan.hq * plan.wq + plan.out_h * plan.wq
            rows = ctx.gathered.shape[0]
            piece = int(max(256, min(8192, _SDDMM_PIECE_BYTES // (gy.element_size() * rows))))
            threads = kernels.sync_threads()
            k_chunk = max(1, -(-pack.out_channels // (4 * threads)))
            gv = torch.empty(len(pack.slots.index), dtype=gy.dtype)
            kernels.conv2d_sddmm(
                ctx.gathered,
                gq.numpy(),
                pack.forward_conv.rowptr.numpy(),
                plan.offsets,
                gv.numpy(),
                k_chunk,
                piece,
                length,
            )
            gw = pack.slots.scatter(gv, weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: ConvPack) -> torch.Tensor:
    """`F.conv2d` of the layer `pack` was built from, for a weight zero outside its kept entries, in O(kept) work.

    `x` (N, C, H, W), CPU float32/float64; returns (N, K, Ho, Wo). Gradients flow to `x`, `weight`
    (kept entries only; pruned ones get exactly zero) and `bias`.
    """
    return _SparseConvFn.apply(x, weight, bias, pack)

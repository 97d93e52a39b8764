"""`SparseConv2d`: an `nn.Conv2d` (zero padding) stored as its kept weights, computed by a direct sparse convolution."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from randsparse.accel import kernels
from randsparse.accel.dispatch import DispatchMode, SparseModule, kept_entries
from randsparse.errors import ConfigError

# Output tiles aim at this many floats (an L1/L2-resident scratch row) ...
_TILE_TARGET = 2048
_TILE_MIN = 256
# ... and at most this many bytes of input per tile (phases x channels x tile), to stay in L2.
_TILE_INPUT_BYTES = 1 << 20


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


@dataclass(frozen=True)
class _ConvPlan:
    """Everything the direct convolution needs for one input shape (cached per shape)."""

    n_img: int
    out_h: int
    out_w: int
    hq: int
    wq: int
    chan_len: int
    offsets: np.ndarray
    tiles: np.ndarray
    k_chunk: int


class SparseConv2d(SparseModule):
    """`nn.Conv2d` (zero padding, any stride, dilation, groups) computed by a direct sparse convolution.

    No im2col: each kept weight (k, c, r, s) adds ``value * input[c]`` shifted by its tap to output
    channel k, over a tile of outputs at a time (see `kernels.conv2d_direct`). Inputs (N, C, H, W) or
    (C, H, W), float32 for the sparse path; dispatch as in `randsparse.accel.dispatch`. Raises
    `ConfigError` for a weight that is not 4-D, string padding, or a mask that does not fit.
    """

    channel: torch.Tensor
    tap: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        bias: torch.Tensor | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        mode: DispatchMode = "auto",
    ) -> None:
        if weight.dim() != 4:
            raise ConfigError(f"SparseConv2d needs a 4-D weight, got shape {tuple(weight.shape)}")
        if isinstance(padding, str):
            raise ConfigError(f"SparseConv2d takes numeric padding, got {padding!r}")
        super().__init__(mode, bias, int(weight.shape[0]))
        self.out_channels, per_group, kh, kw = (int(d) for d in weight.shape)
        self.groups = int(groups)
        self.in_channels = per_group * self.groups
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        row, col, values = kept_entries(weight, mask)
        local_c, rs = np.divmod(col, kh * kw)
        r, s = np.divmod(rs, kw)
        counts = np.bincount(row, minlength=self.out_channels)
        tap = (r * kw + s).astype(np.int32)
        rowptr, local_p, tap_p, vals = kernels.pad_rows(counts, local_c.astype(np.int32), tap, values)
        # Input channel of every entry, padding included: a padding entry (value 0) reads the first
        # channel of its own row's group, so it is a valid position for the kernels and the dense weight.
        padded_rows = np.repeat(np.arange(self.out_channels), np.diff(rowptr))
        channel_p = (self._group_of(padded_rows) * per_group + local_p).astype(np.int32)
        self.register_buffer("rowptr", torch.from_numpy(rowptr))
        self.register_buffer("channel", torch.from_numpy(channel_p))
        self.register_buffer("tap", torch.from_numpy(tap_p))
        self.register_buffer("values", torch.from_numpy(vals))
        self.nnz = len(values)
        self.numel = int(weight.numel())
        self._shape_cache: dict[tuple[int, ...], _ConvPlan] = {}

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, mask: torch.Tensor, mode: DispatchMode = "auto") -> SparseConv2d:
        """The sparse equivalent of `layer` (which must use zero padding) with `mask` applied."""
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ConfigError(f"only zero, numeric padding converts to SparseConv2d, got {layer.padding_mode!r}")
        return cls(layer.weight, mask, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups, mode)

    def to_plain(self) -> nn.Conv2d:
        """The plain `nn.Conv2d` with the masked weight (float32, on the CPU)."""
        with torch.device("meta"):
            geometry = (self.kernel_size, self.stride, self.padding, self.dilation, self.groups)
            plain = nn.Conv2d(self.in_channels, self.out_channels, *geometry, bias=self.bias is not None)
        plain.weight = nn.Parameter(self._dense_weight_copy())
        if self.bias is not None:
            plain.bias = nn.Parameter(self.bias.detach().clone())
        return plain.train(self.training)

    def describe(self) -> tuple[str, str]:
        kh, kw = self.kernel_size
        stride = "" if self.stride == (1, 1) else f" s{self.stride[0]}"
        groups = "" if self.groups == 1 else f" g{self.groups}"
        return "conv2d", f"{self.in_channels}→{self.out_channels} {kh}×{kw}{stride}{groups}"

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride},"
            f" padding={self.padding}, dilation={self.dilation}, groups={self.groups}, density={self.density:.4f}"
        )

    def _group_of(self, out_channel: Any) -> Any:
        """Group index of output channel(s) `out_channel` (an array or tensor of ints)."""
        return out_channel // (self.out_channels // self.groups)

    def _build_dense_weight(self) -> torch.Tensor:
        kh, kw = self.kernel_size
        per_group = self.in_channels // self.groups
        weight = torch.zeros(self.out_channels, per_group, kh * kw, dtype=torch.float32)
        counts = self.rowptr[1:] - self.rowptr[:-1]
        rows = torch.repeat_interleave(torch.arange(self.out_channels), counts)
        local_c = self.channel.long() - self._group_of(rows) * per_group
        weight.index_put_((rows, local_c, self.tap.long()), self.values, accumulate=True)  # padding adds 0
        return weight.reshape(self.out_channels, per_group, kh, kw)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._dense_args(x)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _plan(self, n_img: int, height: int, width: int) -> _ConvPlan:
        key = (n_img, height, width)
        plan = self._shape_cache.get(key)
        if plan is not None:
            return plan
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        hq = out_h + (dh * (kh - 1)) // sh
        wq = out_w + (dw * (kw - 1)) // sw
        tail = (dw * (kw - 1)) // sw + 1
        if (sh, sw) == (1, 1) and (2 * ph, 2 * pw) == (dh * (kh - 1), dw * (kw - 1)):
            # "same" padding: one band of zeros between rows (and between images) is the bottom/right
            # padding of one and the top/left padding of the next, so no tap reads data across them
            # (8×8 maps: 9×9 planes instead of 10×10). The last image reads a tail of zeros: its last
            # tile ends ph·wq before the planes do, and its taps reach 2·ph·wq + 2·pw further.
            hq, wq = height + ph, width + pw
            tail = ph * wq + 2 * pw
        plane = hq * wq
        chan_len = n_img * plane + tail
        tap = self.tap.numpy().astype(np.int64)
        r, s = np.divmod(tap, kw)
        rr, ss = r * dh, s * dw
        phase = (rr % sh) * sw + (ss % sw)
        offsets = (phase * self.in_channels + self.channel.numpy()) * chan_len + (rr // sh) * wq + (ss // sw)
        tiles = _tiles(n_img, out_h, wq, plane, sh * sw * self.in_channels)
        threads = kernels.sync_threads()
        n_tasks_wanted = 4 * threads
        k_chunk = self.out_channels
        if len(tiles) < n_tasks_wanted:
            # Channel blocks, as many as the tiles need for about 4 tasks per thread, a multiple of the
            # threads: the kernel runs blocks outermost, so each thread gets whole blocks over every tile.
            # (An empty batch has no tiles.)
            k_chunk = block_size(self.out_channels, math.ceil(n_tasks_wanted / max(1, len(tiles))), threads)
        plan = _ConvPlan(n_img, out_h, out_w, hq, wq, chan_len, offsets.astype(np.int64), tiles, k_chunk)
        self._shape_cache[key] = plan
        return plan

    def gather(self, x: torch.Tensor) -> tuple[np.ndarray, _ConvPlan]:
        """`x` (N, C, H, W) as the direct convolution reads it (`kernels.conv2d_gather_input`), and the plan."""
        kernels.sync_threads()
        n_img, channels, height, width = x.shape
        plan = self._plan(n_img, height, width)
        sh, sw = self.stride
        gathered = np.empty((sh * sw * channels, plan.chan_len), dtype=kernels_dtype(x))
        kernels.conv2d_gather_input(
            x.detach().contiguous().numpy(), gathered, sh, sw, self.padding[0], self.padding[1], plan.hq, plan.wq
        )
        return gathered, plan

    def direct(self, gathered: np.ndarray, plan: _ConvPlan, values: np.ndarray, bias: np.ndarray) -> torch.Tensor:
        """The convolution of a gathered input with padded `values` (laid out as `self.values`) plus `bias`."""
        out = torch.empty(plan.n_img, self.out_channels, plan.out_h, plan.out_w, dtype=torch.from_numpy(values).dtype)
        kernels.conv2d_direct(
            gathered,
            self.rowptr.numpy(),
            plan.offsets,
            values,
            bias,
            out.numpy(),
            plan.tiles,
            plan.k_chunk,
            plan.wq,
            plan.hq * plan.wq,
        )
        return out

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        gathered, plan = self.gather(x)
        return self.direct(gathered, plan, self.values.numpy(), self._bias_array())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched input, as nn.Conv2d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise RuntimeError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if not self._sparse_ok(x):
            return self._dense(x)
        return self._dispatch((x.shape[0], x.shape[2], x.shape[3]), x)


def kernels_dtype(x: torch.Tensor) -> type:
    """The NumPy dtype the kernels compute `x` in (float64 for float64 inputs, else float32)."""
    return np.float64 if x.dtype == torch.float64 else np.float32


def block_size(count: int, blocks: int, threads: int) -> int:
    """Size of the blocks that split `count` channels (or rows) into about `blocks` blocks, as kernel tasks.

    The number of blocks is rounded up to a multiple of `threads` and the blocks are equal but for
    a shorter last one. Where that count does not come out of a whole block size (fewer channels
    than blocks, or uneven counts), the largest smaller block count that `threads` divides; if
    none does, the blocks of ``ceil(count / blocks)``.
    The kernels run the blocks outermost and numba splits the tasks into equal runs per thread, so
    each thread gets whole blocks over every tile.
    """
    blocks = -(-blocks // threads) * threads
    first = size = max(1, math.ceil(count / blocks))
    while -(-count // size) % threads and size < count:
        size += 1
    return size if -(-count // size) % threads == 0 else first  # none divides: as many blocks as asked


def _tiles(n_img: int, out_h: int, wq: int, plane: int, input_rows: int) -> np.ndarray:
    """Output tiles (n0, n1, oh0, oh1): row blocks of one image, or groups of whole images."""
    target = max(_TILE_MIN, min(_TILE_TARGET, _TILE_INPUT_BYTES // (4 * input_rows)))
    tiles = []
    if out_h * wq >= target // 2:
        rows = max(1, target // wq)
        blocks = math.ceil(out_h / rows)
        rows = math.ceil(out_h / blocks)  # even blocks: no sliver at the bottom
        for n in range(n_img):
            for oh0 in range(0, out_h, rows):
                tiles.append((n, n + 1, oh0, min(out_h, oh0 + rows)))
    elif n_img:  # groups of whole images, as even as they can be (no images: no tiles)
        count = math.ceil(n_img / max(1, target // plane))
        bounds = [n_img * i // count for i in range(count + 1)]
        tiles = [(n0, n1, 0, out_h) for n0, n1 in itertools.pairwise(bounds)]
    return np.asarray(tiles, dtype=np.int64).reshape(-1, 4)

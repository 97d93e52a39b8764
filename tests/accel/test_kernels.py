"""The numba kernels' helpers: padded CSR rows, thread pinning, and the blocked transpose."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from randsparse.accel import kernels


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=13), min_size=1, max_size=12))
def test_pad_rows_keeps_each_row_in_order_and_pads_with_zeros_to_whole_groups(counts: list[int]) -> None:
    counts_arr = np.asarray(counts, dtype=np.int64)
    values = np.arange(1, int(counts_arr.sum()) + 1, dtype=np.float32)
    rowptr, padded = kernels.pad_rows(counts_arr, values)
    sizes = np.diff(rowptr)
    assert (sizes % kernels.GROUP == 0).all() and (sizes >= kernels.GROUP).all()
    assert (sizes - counts_arr < kernels.GROUP).all() or (counts_arr == 0).any()
    start = 0
    for row, count in enumerate(counts):
        block = padded[rowptr[row] : rowptr[row + 1]]
        assert block[:count].tolist() == values[start : start + count].tolist()
        assert (block[count:] == 0).all()
        start += count


def test_sync_threads_follows_torch_and_leaves_torch_thread_count_alone() -> None:
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert kernels.sync_threads() == 1
        assert torch.get_num_threads() == 1
        assert kernels.sync_threads(2) == min(2, kernels.numba.config.NUMBA_NUM_THREADS)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
        kernels.sync_threads()


def test_transpose_equals_torch_transpose_for_ragged_shapes() -> None:
    x = torch.randn(37, 21, generator=torch.Generator().manual_seed(0))
    out = torch.empty(21, 37)
    kernels.transpose(x.numpy(), out.numpy())
    assert torch.equal(out, x.t())


def _phase_index(n_img, channels, height, width, stride, pad, hq, wq):
    """For every input pixel (n, c, h, w): its (row, column) in the phase layout, and whether it lies in the planes."""
    n, c, h, w = np.meshgrid(*(np.arange(d) for d in (n_img, channels, height, width)), indexing="ij")
    i, a = np.divmod(h + pad, stride)
    j, b = np.divmod(w + pad, stride)
    inside = (i < hq) & (j < wq)
    row = (a * stride + b) * channels + c
    col = n * hq * wq + np.minimum(i, hq - 1) * wq + np.minimum(j, wq - 1)
    return row, col, inside


@settings(max_examples=40, deadline=None)
@given(
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    reach=st.integers(0, 2),
    n_img=st.integers(1, 3),
)
def test_gather_input_and_its_inverse_against_numpy(stride, pad, size, reach, n_img) -> None:
    """`conv2d_gather_input` puts each pixel at its phase position (zeros elsewhere); `conv2d_scatter_input`
    reads it back, zero for pixels past the planes."""
    from randsparse.accel import train_kernels

    height, width = size
    channels = 2
    hq = max(1, (height + 2 * pad - reach - 1) // stride + 1 + reach // stride)
    wq = max(1, (width + 2 * pad - reach - 1) // stride + 1 + reach // stride)
    chan_len = n_img * hq * wq + 3
    x = np.random.default_rng(0).standard_normal((n_img, channels, height, width)).astype(np.float32) + 5
    xq = np.full((stride * stride * channels, chan_len), np.nan, dtype=np.float32)
    kernels.conv2d_gather_input(x, xq, stride, stride, pad, pad, hq, wq)
    row, col, inside = _phase_index(n_img, channels, height, width, stride, pad, hq, wq)
    expected = np.zeros_like(xq)
    expected[row[inside], col[inside]] = x[inside]
    np.testing.assert_array_equal(xq, expected)  # every slot written: pixels, or zeros for padding and tail

    back = np.full_like(x, np.nan)
    train_kernels.conv2d_scatter_input(xq, back, stride, stride, pad, pad, hq, wq)
    np.testing.assert_array_equal(back, np.where(inside, x, 0))


@settings(max_examples=60, deadline=None)
@given(
    kernel=st.integers(1, 5),
    dilation=st.integers(1, 3),
    stride=st.integers(1, 2),
    extra_pad=st.integers(-1, 1),
    size=st.integers(1, 10),
    n_img=st.integers(1, 4),
)
def test_every_tile_reads_inside_its_gathered_row(kernel, dilation, stride, extra_pad, size, n_img) -> None:
    """The direct convolution, the SDDMM and the backward conv read `offset + p0 .. offset + p0 + length`
    of a gathered row: never past its end (a read past it took the next row's value, or memory
    past the array, which a zero output gradient turned into NaN: 0 · NaN)."""
    from randsparse.accel.sparse_conv import SparseConv2d

    reach = dilation * (kernel - 1)
    pad = max(0, reach // 2 + extra_pad)  # "same" when reach is even and extra_pad is 0
    if size + 2 * pad < reach + 1:
        return
    weight = torch.ones(2, 2, kernel, kernel)
    conv = SparseConv2d(weight, weight != 0, None, stride, pad, dilation, 1, mode="sparse")
    plan = conv._plan(n_img, size, size)
    shift = plan.offsets % plan.chan_len
    plane = plan.hq * plan.wq
    for n0, n1, oh0, oh1 in plan.tiles:
        if n1 - n0 == 1:
            p0, length = n0 * plane + oh0 * plan.wq, (oh1 - oh0) * plan.wq
        else:
            p0, length = n0 * plane, (n1 - n0 - 1) * plane + plan.out_h * plan.wq
        assert shift.max() + p0 + length <= plan.chan_len


@settings(max_examples=80, deadline=None)
@given(
    channels=st.integers(1, 300),
    size=st.integers(1, 40),
    n_img=st.integers(1, 130),
    threads=st.integers(1, 4),
    stride=st.integers(1, 2),
)
def test_conv_tasks_share_the_work_evenly(channels, size, n_img, threads, stride) -> None:
    """Whole-image tiles differ by at most one image; with few tiles the channel blocks are a multiple of the
    threads and equal but for a short last one (the kernel runs blocks outermost, so each thread gets whole
    blocks over every tile). Six tiles of 12, 12, 12, 12, 12 and 4 images once split 36/28 between 2 threads."""
    from randsparse.accel import sparse_conv

    weight = torch.ones(channels, 1, 3, 3)
    conv = sparse_conv.SparseConv2d(weight, weight != 0, None, stride, 1, 1, channels, mode="sparse")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sparse_conv.kernels, "sync_threads", lambda threads_=None: threads)
        plan = conv._plan(n_img, size, size)
    images = [int(n1 - n0) for n0, n1, _, _ in plan.tiles]
    if max(images) > 1:  # groups of whole images
        assert max(images) - min(images) <= 1, images
        assert sum(images) == n_img
    chunks = -(-channels // plan.k_chunk)
    if len(plan.tiles) < 4 * threads and channels >= 4 * threads:
        assert chunks % threads == 0, (len(plan.tiles), plan.k_chunk, chunks)
        assert plan.k_chunk - (channels - (chunks - 1) * plan.k_chunk) < chunks


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 600), blocks=st.integers(1, 40), threads=st.integers(1, 8))
def test_block_size_gives_whole_blocks_to_every_thread(count, blocks, threads) -> None:
    """`block_size`: a block count the threads divide (wherever one exists), equal blocks but a short last one."""
    from randsparse.accel.sparse_conv import block_size

    size = block_size(count, blocks, threads)
    n = -(-count // size)
    last = count - (n - 1) * size
    if any(-(-count // other) % threads == 0 for other in range(1, count + 1)):
        assert n % threads == 0, (size, n)
    assert 0 < last <= size and size - last < max(n, 2)
    rounded = -(-blocks // threads) * threads
    if count % rounded == 0:  # 64, 128, 256 channels in 2, 4, 8 blocks: exactly those blocks
        assert n == rounded


def test_strided_conv_gradient_tasks_divide_between_threads() -> None:
    """The transposed direct convolution of a stride-2 conv with 3 tiles: row blocks a multiple of the threads
    (before: 3 blocks, 9 tasks split 5/4 between 2 threads)."""
    from torch import nn

    from randsparse.accel import sparse_conv
    from randsparse.accel.train_conv import ConvPack

    layer = nn.Conv2d(128, 256, 3, stride=2, padding=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sparse_conv.kernels, "sync_threads", lambda threads_=None: 2)
        patch.setattr("randsparse.accel.train_conv.kernels.sync_threads", lambda threads_=None: 2)
        pack = ConvPack(layer, torch.rand(layer.weight.shape) < 0.05)
        plan = pack.forward_conv._plan(64, 16, 16)
        transposed = pack.transposed(plan)
    tiles = -(-transposed.cols // transposed.tile)
    chunks = -(-transposed.rows // transposed.r_chunk)
    assert tiles == 3
    assert (tiles * chunks) % 2 == 0 and chunks % 2 == 0

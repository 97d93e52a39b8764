"""The numba kernels' helpers: padded CSR rows, thread pinning, and the blocked transpose."""

from __future__ import annotations

import numpy as np
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

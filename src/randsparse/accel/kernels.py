"""numba CPU kernels of sparse layers: CSR matrix products and a direct sparse 2-D convolution.

Every kernel takes the nonzeros of each output row (a Linear's output feature, a conv's output
channel) padded to whole groups of `GROUP` entries; padding entries have value 0 and point at a
valid input position (for a grouped conv, a channel of the row's own group), so the inner loops
always combine `GROUP` terms per pass over the data and need no remainder code. Kernels are
compiled on first use and cached on disk (``cache=True``); they run on `torch.get_num_threads()`
threads (see `sync_threads`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

# Nonzeros combined per pass over an output tile; rows are padded to a multiple of it.
GROUP = 4

_JIT = {"parallel": True, "cache": True, "nogil": True, "fastmath": {"contract"}}
# Dot-product reductions (the SDDMMs) vectorise only when the sum may be reassociated.
_JIT_REDUCE = {"parallel": True, "cache": True, "nogil": True, "fastmath": {"contract", "reassoc", "nsz"}}


def sync_threads(threads: int | None = None) -> int:
    """Make numba's kernels use `threads` (default: `torch.get_num_threads()`); returns the count used.

    numba's OpenMP threading layer shares PyTorch's libgomp, and starting its pool sets the
    process-wide OpenMP thread count; the first call starts the pool and puts PyTorch's count
    back, so pinning threads with `torch.set_num_threads` keeps working.
    """
    global _pool_started
    torch_threads = torch.get_num_threads()
    if not _pool_started:
        _start_pool(np.zeros(1, dtype=np.float32))
        _pool_started = True
        torch.set_num_threads(torch_threads)
    wanted = torch_threads if threads is None else threads
    wanted = max(1, min(int(wanted), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    return wanted


_pool_started = False


@njit(parallel=True, cache=True)
def _start_pool(scratch):  # pragma: no cover - compiled
    for i in prange(scratch.shape[0]):
        scratch[i] = 0.0


def padded_row_pointers(counts: np.ndarray) -> np.ndarray:
    """Row pointers of rows holding `counts` nonzeros each once padded to whole groups (at least one)."""
    padded = np.maximum(GROUP, -(-counts // GROUP) * GROUP)
    rowptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(padded, out=rowptr[1:])
    return rowptr


def pad_rows(counts: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Row pointers, then each per-nonzero array of `columns` laid out in the padded rows (padding = 0)."""
    rowptr = padded_row_pointers(counts)
    starts = np.repeat(rowptr[:-1], counts)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    slots = starts + within
    out = []
    for column in columns:
        padded = np.zeros(int(rowptr[-1]), dtype=column.dtype)
        padded[slots] = column
        out.append(padded)
    return (rowptr, *out)


# The loads of one group of `GROUP` nonzeros, shared by the kernels' passes (inlined by numba: no call).


@njit(inline="always")
def _group_values(vals, j):  # pragma: no cover - compiled
    """The values of nonzeros j .. j+3."""
    return vals[j], vals[j + 1], vals[j + 2], vals[j + 3]


@njit(inline="always")
def _group_rows(xt, cols, j):  # pragma: no cover - compiled
    """The input rows (feature-major) nonzeros j .. j+3 multiply."""
    return xt[cols[j]], xt[cols[j + 1]], xt[cols[j + 2]], xt[cols[j + 3]]


@njit(inline="always")
def _group_runs(xf, offsets, j, p0, length):  # pragma: no cover - compiled
    """The `length`-long runs of the gathered input nonzeros j .. j+3 multiply, from tile start `p0`."""
    return (
        xf[offsets[j] + p0 : offsets[j] + p0 + length],
        xf[offsets[j + 1] + p0 : offsets[j + 1] + p0 + length],
        xf[offsets[j + 2] + p0 : offsets[j + 2] + p0 + length],
        xf[offsets[j + 3] + p0 : offsets[j + 3] + p0 + length],
    )


# Side of the square blocks `transpose` copies: 16 floats = one cache line.
_TILE = 16


@njit(**_JIT)
def transpose(x, xt):  # pragma: no cover - compiled
    """xt[:, :] = x.T, in cache-line blocks (torch's own transpose copy is several times slower)."""
    rows, cols = x.shape
    n_col_blocks = (cols + _TILE - 1) // _TILE
    for cb in prange(n_col_blocks):
        c0 = cb * _TILE
        c1 = min(cols, c0 + _TILE)
        for r0 in range(0, rows, _TILE):
            r1 = min(rows, r0 + _TILE)
            for c in range(c0, c1):
                dst = xt[c]
                for r in range(r0, r1):
                    dst[r] = x[r, c]


@njit(**_JIT)
def csr_matvec(rowptr, cols, vals, bias, x, y):  # pragma: no cover - compiled
    """y[o] = bias[o] + sum_j vals[j] * x[cols[j]]: one example through a sparse Linear."""
    for o in prange(y.shape[0]):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for j in range(rowptr[o], rowptr[o + 1], 4):
            a0 += vals[j] * x[cols[j]]
            a1 += vals[j + 1] * x[cols[j + 1]]
            a2 += vals[j + 2] * x[cols[j + 2]]
            a3 += vals[j + 3] * x[cols[j + 3]]
        y[o] = bias[o] + ((a0 + a1) + (a2 + a3))


@njit(**_JIT)
def csr_matmat(rowptr, cols, vals, bias, xt, yt):  # pragma: no cover - compiled
    """yt[o, :] = bias[o] + sum_j vals[j] * xt[cols[j], :]: a batch, stored feature-major, through a sparse Linear.

    Each output feature is one contiguous batch-long row (vectorised over the batch), `GROUP`
    nonzeros per pass; the caller hands back ``yt.T``, so no transpose is ever copied.
    """
    batch = xt.shape[1]
    for o in prange(yt.shape[0]):
        row = yt[o]
        j0 = rowptr[o]
        bo = bias[o]
        v0, v1, v2, v3 = _group_values(vals, j0)
        x0, x1, x2, x3 = _group_rows(xt, cols, j0)
        for b in range(batch):
            row[b] = bo + ((v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b]))
        for j in range(j0 + 4, rowptr[o + 1], 4):
            v0, v1, v2, v3 = _group_values(vals, j)
            x0, x1, x2, x3 = _group_rows(xt, cols, j)
            for b in range(batch):
                row[b] += (v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])


@njit(**_JIT)
def conv2d_gather_input(x, xq, stride_h, stride_w, pad_h, pad_w, hq, wq):  # pragma: no cover - compiled
    """Lay `x` (N, C, H, W) out as zero-padded stride phases: xq[(a*sw + b)*C + c, n*hq*wq + i*wq + j].

    Phase (a, b) holds padded input pixel (i*sh + a, j*sw + b), so an output pixel's tap at any
    stride is a fixed shift inside one phase plane, and a whole tile of outputs is one contiguous
    run of a phase row. Positions past the planes (a short tail) are zeroed. One task per (channel,
    image) writes all its phases (1.4-1.7x faster than a task per phase: the input plane is read
    while it is in cache); rows are copied with unsigned indices, so the loop has no wraparound checks.
    """
    n_img, channels, height, width = x.shape
    plane = hq * wq
    for task in prange(channels * n_img):
        c = task // n_img
        n = task - c * n_img
        base = n * plane
        for a in range(stride_h):
            for b in range(stride_w):
                dst = xq[(a * stride_w + b) * channels + c]
                jlo = 0
                while jlo < wq and jlo * stride_w + b - pad_w < 0:
                    jlo += 1
                jhi = jlo
                while jhi < wq and jhi * stride_w + b - pad_w < width:
                    jhi += 1
                step = np.uint64(stride_w)
                for i in range(hq):
                    hi = i * stride_h + a - pad_h
                    row = base + i * wq
                    if hi < 0 or hi >= height:
                        for j in range(wq):
                            dst[row + j] = 0.0
                        continue
                    src = x[n, c, hi]
                    for j in range(jlo):
                        dst[row + j] = 0.0
                    first = np.uint64(row + jlo)
                    source = np.uint64(jlo * stride_w + b - pad_w)
                    for t in range(np.uint64(jhi - jlo)):
                        dst[first + t] = src[source + t * step]
                    for j in range(jhi, wq):
                        dst[row + j] = 0.0
                if n == n_img - 1:
                    for t in range(n_img * plane, dst.shape[0]):
                        dst[t] = 0.0


@njit(inline="always")
def tile_span(tiles, t, ho, wq, plane):  # pragma: no cover - compiled
    """Start and length, in the phase planes, of output tile t = (n0, n1, oh0, oh1) (`conv2d_direct`'s tiles)."""
    n0, n1, oh0, oh1 = tiles[t, 0], tiles[t, 1], tiles[t, 2], tiles[t, 3]
    if n1 - n0 == 1:
        return n0 * plane + oh0 * wq, (oh1 - oh0) * wq
    return n0 * plane, (n1 - n0 - 1) * plane + ho * wq


@njit(inline="always")
def copy_tile_out(acc, out, tiles, t, k, wq, plane):  # pragma: no cover - compiled
    """Copy the valid columns of tile t's accumulated row `acc` into channel k of `out` (N, K, Ho, Wo)."""
    ho, wo = out.shape[2], out.shape[3]
    n0, n1 = tiles[t, 0], tiles[t, 1]
    first_row = tiles[t, 2] if n1 - n0 == 1 else 0
    last_row = tiles[t, 3] if n1 - n0 == 1 else ho
    for n in range(n0, n1):
        for oh in range(first_row, last_row):
            r = (n - n0) * plane + (oh - first_row) * wq
            dst = out[n, k, oh]
            for ow in range(wo):
                dst[ow] = acc[r + ow]


@njit(**_JIT)
def conv2d_direct(xq, rowptr, offsets, vals, bias, out, tiles, k_chunk, wq, plane):  # pragma: no cover
    """Direct sparse convolution: out[n, k] = bias[k] + sum over output channel k's nonzeros.

    Work is split into (block of output channels, tile) tasks, blocks outermost (each thread gets
    whole blocks over every tile, so equal blocks balance the threads). A tile is a run of output rows of
    one image, or several whole images, i.e. one contiguous stretch of the phase planes; each
    nonzero adds `value * xq[offset + p0 : offset + p0 + L]` to the tile, `GROUP` nonzeros per pass
    in an L1-resident scratch row, whose valid columns are then copied to `out` row by row.
    (Fusing the last pass with that copy ran 1.3-2.3x slower: the row-wise pass did not vectorise
    as well, and at 98 % sparsity it is a third of the passes.)
    """
    n_out, ho = out.shape[1], out.shape[2]
    xf = xq.ravel()
    n_chunks = (n_out + k_chunk - 1) // k_chunk
    n_tiles = tiles.shape[0]
    for task in prange(n_tiles * n_chunks):
        chunk = task // n_tiles
        t = task - chunk * n_tiles
        p0, length = tile_span(tiles, t, ho, wq, plane)
        acc = np.empty(length, dtype=out.dtype)
        for k in range(chunk * k_chunk, min(n_out, (chunk + 1) * k_chunk)):
            j0 = rowptr[k]
            bk = bias[k]
            v0, v1, v2, v3 = _group_values(vals, j0)
            s0, s1, s2, s3 = _group_runs(xf, offsets, j0, p0, length)
            for q in range(length):
                acc[q] = bk + ((v0 * s0[q] + v1 * s1[q]) + (v2 * s2[q] + v3 * s3[q]))
            for j in range(j0 + 4, rowptr[k + 1], 4):
                v0, v1, v2, v3 = _group_values(vals, j)
                s0, s1, s2, s3 = _group_runs(xf, offsets, j, p0, length)
                for q in range(length):
                    acc[q] += (v0 * s0[q] + v1 * s1[q]) + (v2 * s2[q] + v3 * s3[q])
            copy_tile_out(acc, out, tiles, t, k, wq, plane)

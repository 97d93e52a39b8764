"""numba CPU kernels of sparse training's backward pass: weight-gradient SDDMMs and the transposed convolution.

The forward kernels live in `randsparse.accel.kernels`; these take the same GROUP-padded rows
(padding entries: value 0, a valid position) and the same gathered-input layout of the direct
convolution, so one gathered input serves the forward pass, the weight gradient and, read
backwards, the input gradient.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from randsparse.accel.kernels import (
    _JIT,
    _JIT_REDUCE,
    _group_rows,
    _group_runs,
    _group_values,
    copy_tile_out,
    tile_span,
)


@njit(inline="always")
def _dot4(g, s0, s1, s2, s3, n):  # pragma: no cover - compiled
    """The dot products of g[:n] with s0[:n] .. s3[:n] (one pass over g; vectorised where reassociation is allowed)."""
    a0 = a1 = a2 = a3 = g[0] * 0
    for q in range(n):
        gq = g[q]
        a0 += gq * s0[q]
        a1 += gq * s1[q]
        a2 += gq * s2[q]
        a3 += gq * s3[q]
    return a0, a1, a2, a3


@njit(**_JIT_REDUCE)
def csr_sddmm(rowptr, cols, gyt, xt, gv):  # pragma: no cover - compiled
    """gv[j] = dot(gyt[o], xt[cols[j]]) for every nonzero j of row o: a sparse Linear's weight gradient.

    `gyt` (out, batch) and `xt` (in, batch) are feature-major; padding entries get a value too
    (their column is valid), which the caller ignores.
    """
    batch = xt.shape[1]
    for o in prange(gyt.shape[0]):
        g = gyt[o]
        for j in range(rowptr[o], rowptr[o + 1], 4):
            x0, x1, x2, x3 = _group_rows(xt, cols, j)
            gv[j], gv[j + 1], gv[j + 2], gv[j + 3] = _dot4(g, x0, x1, x2, x3, batch)


@njit(**_JIT_REDUCE)
def conv2d_sddmm(xq, gf, g_stride, g_base, rowptr, offsets, gv, k_chunk, tile, length):  # pragma: no cover
    """gv[j] = sum_p gf[g_base + k*g_stride + p] * xf[offsets[j] + p], p < `length`, for every nonzero j of channel k.

    The weight gradient of a direct sparse convolution: `xq` is the input gathered as for
    `kernels.conv2d_direct`, and row k of the flat `gf` (from `g_base`, `g_stride` apart) the output
    gradient of channel k in the same padded layout, zero outside the valid outputs, so each kept
    weight's gradient is one contiguous dot product. Tasks are blocks of `k_chunk` output channels;
    the positions are walked in `tile`-long pieces so the gathered input of a piece stays in cache
    across the block's channels.
    """
    xf = xq.ravel()
    n_out = len(rowptr) - 1
    n_chunks = (n_out + k_chunk - 1) // k_chunk
    for chunk in prange(n_chunks):
        k0 = chunk * k_chunk
        k1 = min(n_out, k0 + k_chunk)
        for j in range(rowptr[k0], rowptr[k1]):
            gv[j] = 0
        for t0 in range(0, length, tile):
            span = min(length, t0 + tile) - t0
            for k in range(k0, k1):
                start = g_base + k * g_stride + t0
                g = gf[start : start + span]
                for j in range(rowptr[k], rowptr[k + 1], 4):
                    s0, s1, s2, s3 = _group_runs(xf, offsets, j, t0, span)
                    a0, a1, a2, a3 = _dot4(g, s0, s1, s2, s3, span)
                    gv[j] += a0
                    gv[j + 1] += a1
                    gv[j + 2] += a2
                    gv[j + 3] += a3


@njit(inline="always")
def _rows_and_dots(acc, ref, src, offsets, vals, j0, j1, p0, length, grads):  # pragma: no cover - compiled
    """acc = sum_j vals[j]·run_j and grads[j] += dot(ref, run_j), run_j = src[offsets[j] + p0 :][:length].

    One row of a fused backward pass, over the nonzeros j0 .. j1 (at least one group): each run is
    read for the input gradient and, while it is in L1, for the weight gradient. (One loop doing
    both did not vectorise; two loops over a cache-resident run do.)
    """
    v0, v1, v2, v3 = _group_values(vals, j0)
    s0, s1, s2, s3 = _group_runs(src, offsets, j0, p0, length)
    for q in range(length):
        acc[q] = (v0 * s0[q] + v1 * s1[q]) + (v2 * s2[q] + v3 * s3[q])
    a0, a1, a2, a3 = _dot4(ref, s0, s1, s2, s3, length)
    grads[j0] += a0
    grads[j0 + 1] += a1
    grads[j0 + 2] += a2
    grads[j0 + 3] += a3
    for j in range(j0 + 4, j1, 4):
        v0, v1, v2, v3 = _group_values(vals, j)
        s0, s1, s2, s3 = _group_runs(src, offsets, j, p0, length)
        for q in range(length):
            acc[q] += (v0 * s0[q] + v1 * s1[q]) + (v2 * s2[q] + v3 * s3[q])
        a0, a1, a2, a3 = _dot4(ref, s0, s1, s2, s3, length)
        grads[j] += a0
        grads[j + 1] += a1
        grads[j + 2] += a2
        grads[j + 3] += a3


@njit(**_JIT_REDUCE)
def csr_matmat_sddmm(rowptr_t, rows_t, vals_t, gyt, xt, gxt, gv_t):  # pragma: no cover - compiled
    """Both gradients of a sparse Linear in one pass over the output gradient.

    Row i of the transposed pack (input feature i; nonzero j reads output feature ``rows_t[j]``):
    gxt[i] = sum_j vals_t[j] · gyt[rows_t[j]] and gv_t[j] = dot(xt[i], gyt[rows_t[j]]), the
    weight gradient in the transposed pack's slot order. `gyt` (out, batch), `xt` and `gxt` (in,
    batch) are feature-major. As SparseProp's backward pass does, every row of the output gradient
    it reads serves both products.
    """
    batch = gyt.shape[1]
    for i in prange(gxt.shape[0]):
        row = gxt[i]
        ref = xt[i]
        j0 = rowptr_t[i]
        v0, v1, v2, v3 = _group_values(vals_t, j0)
        g0, g1, g2, g3 = _group_rows(gyt, rows_t, j0)
        for b in range(batch):
            row[b] = (v0 * g0[b] + v1 * g1[b]) + (v2 * g2[b] + v3 * g3[b])
        gv_t[j0], gv_t[j0 + 1], gv_t[j0 + 2], gv_t[j0 + 3] = _dot4(ref, g0, g1, g2, g3, batch)
        for j in range(j0 + 4, rowptr_t[i + 1], 4):
            v0, v1, v2, v3 = _group_values(vals_t, j)
            g0, g1, g2, g3 = _group_rows(gyt, rows_t, j)
            for b in range(batch):
                row[b] += (v0 * g0[b] + v1 * g1[b]) + (v2 * g2[b] + v3 * g3[b])
            gv_t[j], gv_t[j + 1], gv_t[j + 2], gv_t[j + 3] = _dot4(ref, g0, g1, g2, g3, batch)


@njit(**_JIT_REDUCE)
def row_sums(flat, base, stride, length, out):  # pragma: no cover - compiled
    """out[k] = sum of flat[base + k*stride : base + k*stride + length]: a conv's bias gradient.

    Row k is channel k's output gradient in the padded layout the SDDMM reads (zero outside the
    valid outputs), so its sum is the bias gradient; torch's ``gy.sum((0, 2, 3))`` took 1 ms for
    a (64, 256, 8, 8) gradient here, 2 threads.
    """
    for k in prange(len(out)):
        start = base + k * stride
        acc = flat[start] * 0
        for p in range(length):
            acc += flat[start + p]
        out[k] = acc


@njit(**_JIT)
def shifted_rows_sum(src, rowptr, offsets, vals, out, tile, r_chunk):  # pragma: no cover - compiled
    """out[r, u] = sum_j vals[j] * src[offsets[j] + u] over the nonzeros j of row r: a transposed direct convolution.

    With `src` the output gradient (rows of the padded layout, front-padded) and `offsets` the
    transposed taps, `out` is the input gradient in the gathered layout of the forward pass, for
    any stride: no zero insertion. Tasks are (`tile`-long stretch, block of `r_chunk` rows); each
    row accumulates in place, `GROUP` nonzeros per pass (every row holds at least one group).
    """
    rows, cols = out.shape
    n_tiles = (cols + tile - 1) // tile
    n_chunks = (rows + r_chunk - 1) // r_chunk
    for task in prange(n_tiles * n_chunks):
        t = task // n_chunks
        chunk = task - t * n_chunks
        u0 = t * tile
        span = min(cols, u0 + tile) - u0
        for r in range(chunk * r_chunk, min(rows, (chunk + 1) * r_chunk)):
            acc = out[r, u0 : u0 + span]
            j0 = rowptr[r]
            v0, v1, v2, v3 = _group_values(vals, j0)
            s0, s1, s2, s3 = _group_runs(src, offsets, j0, u0, span)
            for q in range(span):
                acc[q] = (v0 * s0[q] + v1 * s1[q]) + (v2 * s2[q] + v3 * s3[q])
            for j in range(j0 + 4, rowptr[r + 1], 4):
                v0, v1, v2, v3 = _group_values(vals, j)
                s0, s1, s2, s3 = _group_runs(src, offsets, j, u0, span)
                for q in range(span):
                    acc[q] += (v0 * s0[q] + v1 * s1[q]) + (v2 * s2[q] + v3 * s3[q])


@njit(inline="always")
def _fused_task(task, n_chunks, chunk, count, rowptr, parts):  # pragma: no cover - compiled
    """Task `task` of a fused pass: (block b, rows r0 .. r1 of a `chunk`-row block), b's zeroed partial gradient.

    Tasks run blocks of tiles outermost and row (channel) blocks within; parts[b, j] is nonzero j's
    weight gradient over tile block b, zeroed here for the task's rows.
    """
    blk = task // n_chunks
    r0 = (task - blk * n_chunks) * chunk
    r1 = min(count, r0 + chunk)
    grads = parts[blk]
    for j in range(rowptr[r0], rowptr[r1]):
        grads[j] = 0
    return blk, r0, r1, grads


@njit(**_JIT_REDUCE)
def conv2d_direct_sddmm(gq, rowptr, offsets, vals, out, tiles, k_chunk, wq, plane, xq, base, parts):  # pragma: no cover
    """Both gradients of a stride-1 "same" sparse convolution in one pass over the output gradient.

    `gq` is the output gradient gathered with the forward geometry and (`rowptr`, `offsets`,
    `vals`) the flipped, transposed kept weights as `kernels.conv2d_direct` takes them (row c:
    input channel c): `out` (N, C, H, W) gets their direct convolution, the input gradient. Input
    pixel u of channel c is xq[c, base + u] in the forward pass's gathered input `xq` (zero in the
    padding columns), so the weight gradient of transposed nonzero j is the dot of that row with
    the run j adds, read while it is in cache. Tasks are (block of tiles, block of `k_chunk`
    channels): parts[b, j] is j's gradient over tile block b, which the caller sums over b.
    """
    n_out, ho = out.shape[1], out.shape[2]
    gf = gq.ravel()
    n_tiles = tiles.shape[0]
    n_blocks = parts.shape[0]
    n_chunks = (n_out + k_chunk - 1) // k_chunk
    longest = 0
    for t in range(n_tiles):
        longest = max(longest, tile_span(tiles, t, ho, wq, plane)[1])
    for task in prange(n_blocks * n_chunks):
        blk, k0, k1, grads = _fused_task(task, n_chunks, k_chunk, n_out, rowptr, parts)
        acc = np.empty(longest, dtype=out.dtype)
        for t in range(blk * n_tiles // n_blocks, (blk + 1) * n_tiles // n_blocks):  # blocks even to a tile
            p0, length = tile_span(tiles, t, ho, wq, plane)
            for k in range(k0, k1):
                ref = xq[k, base + p0 : base + p0 + length]
                _rows_and_dots(acc, ref, gf, offsets, vals, rowptr[k], rowptr[k + 1], p0, length, grads)
                copy_tile_out(acc, out, tiles, t, k, wq, plane)


@njit(**_JIT_REDUCE)
def shifted_rows_sum_sddmm(src, rowptr, offsets, vals, out, tile, r_chunk, xq, partial):  # pragma: no cover
    """`shifted_rows_sum` and the weight gradient in one pass: partial[b, j] = sum over tile block b of xq[r]·run_j.

    Row r of `out` (the gradient of the forward pass's gathered input row r) sums the runs of its
    nonzeros j; the same run dotted with gathered input row xq[r] is j's weight gradient. Tasks are
    (block of `tile`-long stretches, block of `r_chunk` rows); the caller sums `partial` over blocks.
    """
    rows, cols = out.shape
    n_tiles = (cols + tile - 1) // tile
    n_blocks = partial.shape[0]
    n_chunks = (rows + r_chunk - 1) // r_chunk
    for task in prange(n_blocks * n_chunks):
        blk, r0, r1, grads = _fused_task(task, n_chunks, r_chunk, rows, rowptr, partial)
        for t in range(blk * n_tiles // n_blocks, (blk + 1) * n_tiles // n_blocks):  # blocks even to a tile
            u0 = t * tile
            span = min(cols, u0 + tile) - u0
            for r in range(r0, r1):
                acc = out[r, u0 : u0 + span]
                ref = xq[r, u0 : u0 + span]
                _rows_and_dots(acc, ref, src, offsets, vals, rowptr[r], rowptr[r + 1], u0, span, grads)


@njit(**_JIT)
def conv2d_scatter_input(xq, x, stride_h, stride_w, pad_h, pad_w, hq, wq):  # pragma: no cover - compiled
    """x[n, c, h, w] = the gathered-layout entry of input pixel (h, w): `kernels.conv2d_gather_input` read backwards.

    Each padded input pixel has one place in the stride phases, so this is a permutation; pixels
    past the planes (no output reads them) get 0. An input row is written phase by phase: the
    pixels of phase b are every `stride_w`-th one, read from one contiguous run of that phase's row
    (unsigned indices, so the loop has no wraparound checks).
    """
    n_img, channels, height, width = x.shape
    plane = hq * wq
    reach = min(width, wq * stride_w - pad_w)  # pixels from here on are past the planes
    for task in prange(channels * n_img):
        c = task // n_img
        n = task - c * n_img
        for h in range(height):
            hp = h + pad_h
            i = hp // stride_h
            a = hp - i * stride_h
            dst = x[n, c, h]
            if i >= hq:
                for w in range(width):
                    dst[w] = 0.0
                continue
            for b in range(stride_w):
                first = (b - pad_w) % stride_w  # the first pixel of phase b
                if first >= reach:
                    continue
                src = xq[(a * stride_w + b) * channels + c]
                start = np.uint64(n * plane + i * wq + (first + pad_w) // stride_w)
                step = np.uint64(stride_w)
                w0 = np.uint64(first)
                for t in range(np.uint64((reach - first + stride_w - 1) // stride_w)):
                    dst[w0 + t * step] = src[start + t]
            for w in range(max(reach, 0), width):
                dst[w] = 0.0


@njit(**_JIT)
def gather_slots(src, position, out):  # pragma: no cover - compiled
    """out[i] = src[position[i]], or 0 where position[i] < 0 (a padding slot): packed values, kept gradients.

    Parallel, one pass: `torch.index_select` took 0.36 ms for the 53 000 kept entries of a
    1024×1024 weight at 95 % (2 threads), this 0.16 ms.
    """
    for i in prange(len(position)):
        p = position[i]
        out[i] = src[p] if p >= 0 else 0


@njit(**_JIT)
def scatter_at(position, values, dense):  # pragma: no cover - compiled
    """dense[position[i]] = values[i] wherever position[i] >= 0 (positions distinct): gradients, write-backs.

    The dense-shaped weight gradient is written into a buffer that is zero outside the kept
    positions and reused from step to step (`slots.Slots.scatter`), so only the kept entries
    are written; index_select + `scatter_` into fresh zeros took 0.29 ms, this with the zero fill
    0.22 ms, on the 1024×1024 weight above.
    """
    for i in prange(len(position)):
        p = position[i]
        if p >= 0:
            dense[p] = values[i]

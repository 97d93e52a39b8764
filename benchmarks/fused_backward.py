"""The sparse layers' backward pass: both gradients in one fused pass vs the input and weight gradients apart.

Each row times, on the same data, the backward work of one layer two ways: the input gradient
and the weight-gradient SDDMM as two passes (what a layer runs when only one is wanted, and what
every layer ran before the fused kernels), and the fused pass that gives both (what a layer
runs in training when both are wanted): `csr_matmat` + `csr_sddmm` vs `csr_matmat_sddmm` for a
Linear, the flipped direct convolution + `conv2d_sddmm` vs `conv2d_direct_sddmm` for a stride-1
"same" 3×3 conv, `shifted_rows_sum` + `conv2d_sddmm` vs `shifted_rows_sum_sddmm` for a stride-2
one. Output gradients and inputs are laid out once, outside the timing. One process, calls
interleaved, medians; threads pinned.

Target: the fused pass is never slower than the two apart (ratio >= 0.95, the noise of this
machine) on any shape at 90-98 %.

    python benchmarks/fused_backward.py [--sparsity 0.9,0.95,0.98] [--repeats 11] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from _verdict import verdict
from randsparse.accel import kernels, train_kernels
from randsparse.accel.bench import time_interleaved
from randsparse.accel.train_conv import ConvPack, _same_conv_grads
from randsparse.accel.train_linear import LinearPack, _feature_major

# (kind, in, out, batch, size, stride): the Linear, the ResNet-20 ×4 3×3 stages, its stride-2 convs
SHAPES = (
    ("linear", 1024, 1024, 128, 0, 1),
    ("conv", 64, 64, 64, 32, 1),
    ("conv", 128, 128, 64, 16, 1),
    ("conv", 256, 256, 64, 8, 1),
    ("conv", 64, 128, 64, 32, 2),
    ("conv", 128, 256, 64, 16, 2),
)


def _mask(shape: tuple[int, ...], sparsity: float, gen: torch.Generator) -> torch.Tensor:
    numel = int(np.prod(shape))
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=gen)[: round((1 - sparsity) * numel)]] = True
    return mask.view(shape)


def _linear(n_in: int, n_out: int, batch: int, sparsity: float, gen: torch.Generator) -> tuple[Callable, Callable]:
    mask = _mask((n_out, n_in), sparsity, gen)
    pack = LinearPack(mask)
    weight = torch.randn(n_out, n_in, generator=gen) * mask
    xt = _feature_major(torch.randn(batch, n_in, generator=gen))
    gyt = _feature_major(torch.randn(batch, n_out, generator=gen))
    vals_t = pack.slots_t.values_from(pack.slots.values(weight)).numpy()
    gxt = np.empty((n_in, batch), dtype=np.float32)
    gv = np.empty(len(pack.slots.index), dtype=np.float32)
    gv_t = np.empty(len(pack.slots_t.index), dtype=np.float32)
    zeros = pack.zeros(n_in, torch.float32)

    def apart() -> None:
        kernels.csr_matmat(pack.rowptr_t, pack.cols_t, vals_t, zeros, gyt.numpy(), gxt)
        train_kernels.csr_sddmm(pack.rowptr, pack.cols, gyt.numpy(), xt.numpy(), gv)

    def fused() -> None:
        train_kernels.csr_matmat_sddmm(pack.rowptr_t, pack.cols_t, vals_t, gyt.numpy(), xt.numpy(), gxt, gv_t)

    return apart, fused


def _conv(c_in: int, c_out: int, batch: int, size: int, stride: int, sparsity: float, gen: torch.Generator):
    layer = nn.Conv2d(c_in, c_out, 3, stride, 1)
    mask = _mask(tuple(layer.weight.shape), sparsity, gen)
    pack = ConvPack(layer, mask)
    weight = layer.weight.detach() * mask
    x = torch.randn(batch, c_in, size, size, generator=gen)
    gathered, plan = pack.forward_conv.gather(x)
    gy = torch.randn(batch, c_out, plan.out_h, plan.out_w, generator=gen)
    vals = pack.slots.values(weight)
    rowptr = pack.forward_conv.rowptr.numpy()
    gv = np.empty(len(pack.slots.index), dtype=np.float32)
    threads = kernels.sync_threads()
    k_chunk = max(1, -(-c_out // (4 * threads)))
    length = (plan.n_img - 1) * plan.hq * plan.wq + plan.out_h * plan.wq
    piece = int(max(256, min(8192, (1 << 19) // (4 * gathered.shape[0]))))
    if pack.same:
        conv = pack.backward_conv
        gq, plan_t = conv.gather(gy)
        vals_t = pack.slots_t.values_from(vals).numpy()
        base = pack.padding[0] * plan.wq + pack.padding[1]
        zeros = pack.zeros(c_in, torch.float32)

        def apart() -> None:
            conv.direct(gq, plan_t, vals_t, zeros)
            train_kernels.conv2d_sddmm(
                gathered, gq.ravel(), plan_t.chan_len, base, rowptr, plan.offsets, gv, k_chunk, piece, length
            )

        def fused() -> None:
            _same_conv_grads(pack, conv, gq, plan_t, vals_t, gathered, base, tuple(x.shape))

        return apart, fused
    transposed = pack.transposed(plan)
    rows = transposed.layout(gy, plan)
    flat = rows.numpy().ravel()

    def apart_t() -> None:
        transposed.input_grad(rows, vals, pack, plan, tuple(x.shape))
        train_kernels.conv2d_sddmm(
            gathered, flat, transposed.row_len, transposed.front, rowptr, plan.offsets, gv, k_chunk, piece, length
        )

    def fused_t() -> None:
        transposed.input_grad(rows, vals, pack, plan, tuple(x.shape), gathered)

    return apart_t, fused_t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=lambda t: [float(v) for v in t.split(",")], default=[0.9, 0.95, 0.98])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels.sync_threads()
    print(f"{args.threads} threads; backward median ms: input + weight gradients apart vs one fused pass")
    print(f"{'layer':34} {'sparsity':>8} {'apart':>8} {'fused':>8} {'ratio':>7}")
    targets: dict[str, bool] = {}
    for kind, n_in, n_out, batch, size, stride in SHAPES:
        for sparsity in args.sparsity:
            gen = torch.Generator().manual_seed(0)
            if kind == "linear":
                apart, fused = _linear(n_in, n_out, batch, sparsity, gen)
                name = f"linear {n_in}→{n_out} b{batch}"
            else:
                apart, fused = _conv(n_in, n_out, batch, size, stride, sparsity, gen)
                name = f"conv {n_in}→{n_out} 3×3{' s2' if stride == 2 else ''} {size}×{size} b{batch}"
            times = time_interleaved({"apart": apart, "fused": fused}, args.repeats, warmup=2)
            ratio = times["apart"] / times["fused"]
            print(f"{name:34} {sparsity:8g} {times['apart']:8.2f} {times['fused']:8.2f} {ratio:6.2f}×", flush=True)
            targets[f"{name} {sparsity:g} fused >= 0.95× apart ({ratio:.2f}×)"] = ratio >= 0.95
    return verdict(targets)


if __name__ == "__main__":
    sys.exit(main())

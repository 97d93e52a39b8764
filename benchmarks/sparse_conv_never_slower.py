"""Exported CIFAR ResNets and VGGs are never slower than dense (≥ 0.95×), at every sparsity (CPU).

Target (issue 9): speed-up ≥ 0.95 for every (model, sparsity, batch); the per-shape table says what
the direct sparse convolution achieved against the dense convolution in each layer's one-off
measurement. All timings of one model run interleaved in this process, medians, threads pinned.

    python benchmarks/sparse_conv_never_slower.py [--models resnet20,resnet56,vgg11,vgg16]
        [--sparsity 0.5,0.8,0.9,0.95,0.98] [--batch 1,64] [--repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse
import sys

import torch

from _verdict import verdict
from randsparse.accel.bench import bench_model, bench_spec, shape_summary

TARGET = 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56,vgg11,vgg16")
    parser.add_argument("--sparsity", default="0.5,0.8,0.9,0.95,0.98")
    parser.add_argument("--batch", default="1,64")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--shapes", action="store_true", help="print the per-layer-shape kernel table")
    args = parser.parse_args()
    sparsities = [float(s) for s in args.sparsity.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    worst = float("inf")
    print(f"{args.threads} threads, medians of {args.repeats} interleaved runs; speed-up = dense / exported")
    for name in args.models.split(","):
        rows = bench_model(bench_spec(name), sparsities, batches, repeats=args.repeats, warmup=2, threads=args.threads)
        for row in rows:
            sparse_layers = sum(layer["choice"] != "dense" for layer in row.layers)
            print(
                f"{name:9s} sparsity {row.sparsity:<5g} batch {row.batch:3d}: dense {row.dense_ms:8.3f} ms,"
                f" exported {row.sparse_ms:8.3f} ms, speed-up {row.speedup:5.2f}x (ideal {row.ideal_speedup:5.1f}x),"
                f" {sparse_layers}/{len(row.layers)} layers sparse, rel err {row.max_rel_error:.0e}"
            )
            worst = min(worst, row.speedup)
        if args.shapes:
            for item in shape_summary(rows):
                if item.kind == "conv2d":
                    print(
                        f"    s={item.sparsity:<5g} b={item.batch:<3d} {item.shape:16s} at {item.input:7s}"
                        f" x{item.layers:<2d} density {item.density:.3f}: dense {item.dense_ms:7.3f} ms,"
                        f" direct {item.sparse_ms:7.3f} ms -> {item.kernel_speedup:5.2f}x,"
                        f" sparse in {item.chosen_sparse}/{item.layers}"
                    )
    return verdict({f"slowest exported/dense speed-up {worst:.2f}x >= {TARGET}x": worst >= TARGET})


if __name__ == "__main__":
    sys.exit(main())

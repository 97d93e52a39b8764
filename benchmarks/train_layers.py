"""Forward+backward time per layer shape and sparsity: dense, masked dense, our sparse layer, SparseProp's.

Targets (issue 15): at 95 % and 98 % sparsity our sparse layer is faster than SparseProp's on at
least 80 % of the shapes (checked when ``sparseprop`` imports; without it, faster than masked
dense on 80 % instead, and the line says so). Everything runs in this one process, interleaved,
medians, threads pinned.

    python benchmarks/train_layers.py [--sparsity 0.5,0.9,0.95,0.98,0.99] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from _verdict import verdict
from randsparse.accel.train_bench import DEFAULT_SHAPES, bench_layer, sparseprop_module

CHECKED = (0.95, 0.98)


def _floats(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=_floats, default=[0.5, 0.9, 0.95, 0.98, 0.99])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", type=int, help="only the first N default shapes")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    torch.set_num_threads(args.threads)
    comparator = sparseprop_module() is not None
    shapes = DEFAULT_SHAPES[: args.shapes] if args.shapes else DEFAULT_SHAPES
    print(
        f"{args.threads} threads; forward+backward median ms; sparseprop {'found' if comparator else 'not importable'}"
    )
    print(
        f"{'shape':34} {'sparsity':>8} {'dense':>8} {'masked':>8} {'ours':>8} {'sprop':>8}"
        f" {'ours/masked':>11} {'vs sprop':>8}"
    )
    wins = {"sprop": 0, "masked": 0}
    checked = 0
    for shape in shapes:
        for sparsity in args.sparsity:
            row = bench_layer(shape, sparsity, repeats=args.repeats)
            sprop = f"{row.sparseprop_ms:8.2f}" if row.sparseprop_ms is not None else f"{'-':>8}"
            versus = f"{row.sparseprop_ms / row.sparse_ms:7.2f}×" if row.sparseprop_ms is not None else f"{'-':>8}"
            print(
                f"{row.shape:34} {sparsity:8g} {row.dense_ms:8.2f} {row.masked_ms:8.2f} {row.sparse_ms:8.2f}"
                f" {sprop} {row.speedup:10.2f}× {versus}",
                flush=True,
            )
            if sparsity in CHECKED:
                checked += 1
                wins["masked"] += row.sparse_ms < row.masked_ms
                if row.sparseprop_ms is not None:
                    wins["sprop"] += row.sparse_ms < row.sparseprop_ms
    if not checked:
        return verdict({})
    if comparator:
        share = wins["sprop"] / checked
        print(f"faster than SparseProp on {wins['sprop']}/{checked} shape×sparsity at 95/98 %")
        return verdict({f"faster than SparseProp on >= 80 % of shapes at 95/98 % ({share:.0%})": share >= 0.8})
    share = wins["masked"] / checked
    print(f"SparseProp not importable: faster than masked dense on {wins['masked']}/{checked} at 95/98 %")
    return verdict({f"faster than masked dense on >= 80 % of shapes at 95/98 % ({share:.0%})": share >= 0.8})


if __name__ == "__main__":
    sys.exit(main())

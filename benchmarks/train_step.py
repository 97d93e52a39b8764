"""Whole training steps (forward, loss, backward, SGD step), dense vs masked vs engine sparse vs engine auto.

Targets (issue 15), batch 128, ratios = dense step time / engine step time, measured in this one
process (interleaved medians): ResNet-20 ×4 at 95 % >= 1.5× and at 98 % >= 2.5× (ERK and uniform);
MLP 784-1024-1024-10 at 95 % >= 2×; ``engine: auto`` never below 0.95× on any model and sparsity.
The ideal ratio (dense MACs over kept MACs) is printed beside each measured one.

    python benchmarks/train_step.py [--models mlp,resnet20,resnet20x4,vgg16] [--sparsity 0.95,0.98]
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from _verdict import verdict
from randsparse.accel.train_bench import bench_step
from randsparse.models import ModelSpec

MODELS = {
    "mlp": (ModelSpec("mlp", 10, 1, {"image_size": 28}), (1, 28, 28)),
    "resnet20": (ModelSpec("resnet20", 10, 3), (3, 32, 32)),
    "resnet20x4": (ModelSpec("resnet20", 10, 3, {"width": 4.0}), (3, 32, 32)),
    "vgg16": (ModelSpec("vgg16", 10, 3), (3, 32, 32)),
}
# (model, sparsity) -> minimum sparse/dense step ratio of the faster engine (sparse or auto)
TARGETS = {("resnet20x4", 0.95): 1.5, ("resnet20x4", 0.98): 2.5, ("mlp", 0.95): 2.0}


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=_list, default=list(MODELS))
    parser.add_argument("--sparsity", type=lambda t: [float(x) for x in _list(t)], default=[0.95, 0.98])
    parser.add_argument("--distributions", type=_list, default=["erk", "uniform"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, batch {args.batch}; median ms per step; ratios = dense / variant")
    print(
        f"{'model':11} {'dist':8} {'spars':>5} {'dense':>8} {'masked':>8} {'sparse':>8} {'auto':>8}"
        f" {'sparse×':>7} {'auto×':>6} {'ideal×':>6} {'auto layers':>11}"
    )
    targets: dict[str, bool] = {}
    for name in args.models:
        spec, shape = MODELS[name]
        for distribution in args.distributions:
            for sparsity in args.sparsity:
                row = bench_step(spec, shape, sparsity, distribution, args.batch, args.repeats, label=name)
                print(
                    f"{name:11} {distribution:8} {sparsity:5g} {row.dense_ms:8.1f} {row.masked_ms:8.1f}"
                    f" {row.sparse_ms:8.1f} {row.auto_ms:8.1f} {row.ratio('sparse'):6.2f}× {row.ratio('auto'):5.2f}×"
                    f" {row.ideal:5.1f}× {row.auto_sparse_layers:>5}/{row.layers} sparse",
                    flush=True,
                )
                where = f"{name} {distribution} {sparsity:g}"
                targets[f"auto >= 0.95× dense: {where} ({row.ratio('auto'):.2f}×)"] = row.ratio("auto") >= 0.95
                target = TARGETS.get((name, sparsity))
                if target is not None and (name != "mlp" or distribution == args.distributions[0]):
                    best = max(row.ratio("sparse"), row.ratio("auto"))
                    targets[f"step >= {target}× dense: {where} ({best:.2f}×)"] = best >= target
    return verdict(targets)


if __name__ == "__main__":
    sys.exit(main())

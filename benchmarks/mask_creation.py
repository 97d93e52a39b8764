"""Time and peak memory to draw ERK masks at 90 % sparsity for torchvision's wide_resnet50_2.

Targets (issue 2): under 2 s, and masks stored in at most 1 byte per weight. The model is built on
the meta device (shapes only), so what is measured is the density rule and the mask draw alone.

    python benchmarks/mask_creation.py [--model wide_resnet50_2] [--sparsity 0.9] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc

import torch

from _verdict import verdict
from randsparse.models import build
from randsparse.sparsity import MaskSet, layer_densities, prunable_shapes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wide_resnet50_2")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--distribution", default="erk")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with torch.device("meta"):
        model = build(args.model, num_classes=args.num_classes)
    shapes = prunable_shapes(model)
    weights = sum(torch.Size(s).numel() for s in shapes.values())

    times = []
    for seed in range(args.repeats):
        start = time.perf_counter()
        densities = layer_densities(shapes, 1.0 - args.sparsity, args.distribution)
        masks = MaskSet.random(shapes, densities, seed=seed)
        times.append(time.perf_counter() - start)
        del masks

    tracemalloc.start()
    masks = MaskSet.random(shapes, densities, seed=args.repeats)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stored = sum(m.numel() * m.element_size() for m in masks.values())

    print(f"model {args.model}: {len(shapes)} prunable layers, {weights:,} prunable weights")
    print(f"distribution {args.distribution} at sparsity {args.sparsity}: realised density {masks.density():.6f}")
    print(f"time to build masks (median of {args.repeats}): {statistics.median(times):.3f} s  (target < 2 s)")
    print(f"mask storage: {stored / 2**20:.1f} MiB = {stored / weights:.3f} bytes/weight  (target <= 1)")
    print(f"peak memory while drawing (tracemalloc): {peak / 2**20:.1f} MiB = {peak / weights:.3f} bytes/weight")
    return verdict(
        {"masks built in < 2 s": statistics.median(times) < 2, "mask storage <= 1 byte/weight": stored <= weights}
    )


if __name__ == "__main__":
    sys.exit(main())

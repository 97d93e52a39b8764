"""Seconds to compute SNIP / GraSP (/ SynFlow) ratios for ResNet-56 on one batch of 128 CIFAR-shaped images.

Target (issue 5): SNIP and GraSP ratios each under 30 s on 2 CPU cores. A ratio here is the whole
library call `plan_sparsity(model, 0.9, "<method>_ratio", data=batch)`: scores on a copy of the
model, global selection, and the random mask drawn at those layer densities. The methods run
interleaved, `--repeats` times each, in this one process; the median is printed next to the target.
GraSP's class-balanced sample is the whole batch (labels 0..9 in turn, 13 per class at most).
On a machine shared with other work, also run with --threads 1: torch's spin-waiting intra-op
threads can then cost more than they bring (see tests/conftest.py).

    python benchmarks/saliency_time.py [--model resnet56] [--batch 128] [--methods snip grasp] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import torch

from _verdict import verdict
from randsparse.models import build
from randsparse.sparsity import plan_sparsity

TARGET_S = {"snip": 30.0, "grasp": 30.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--methods", nargs="+", default=["snip", "grasp"], help="snip grasp synflow magnitude")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("randsparse").setLevel(logging.ERROR)  # the collapse guard's notes are not timings

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build(args.model, num_classes=10)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 3, 32, 32, generator=generator), torch.arange(args.batch) % 10)
    per_class = -(-args.batch // 10)
    options = {
        "snip": {"data": batch},
        "grasp": {"data": batch, "score_options": {"samples_per_class": per_class}},
        "synflow": {"input_shape": (3, 32, 32)},
        "magnitude": {},
    }

    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for _ in range(args.repeats):
        for method in args.methods:
            start = time.perf_counter()
            plan = plan_sparsity(model, args.sparsity, f"{method}_ratio", seed=0, **options[method])
            times[method].append(time.perf_counter() - start)
            assert abs(plan.kept - (1 - args.sparsity) * plan.params) <= len(plan.layers)

    print(f"{args.model}, batch {args.batch}x3x32x32, sparsity {args.sparsity}, {args.threads} thread(s)")
    targets = {}
    for method, seconds in times.items():
        median = statistics.median(seconds)
        target = TARGET_S.get(method)
        note = "" if target is None else f"  target < {target:g} s: {'ok' if median < target else 'MISSED'}"
        runs = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{method:>9}_ratio: median {median:6.2f} s  (runs: {runs}){note}")
        if target is not None:
            targets[f"{method}_ratio < {target:g} s"] = median < target
    return verdict(targets)


if __name__ == "__main__":
    sys.exit(main())

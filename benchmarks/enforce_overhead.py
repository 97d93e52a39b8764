"""Time ratio of a fixed-mask training step to a dense one (ResNet-20, batch 128, CPU).

Target (issue 2): masked / dense <= 1.05. Both steps run in this one process, interleaved, on the
same data, after warm-up; the ratio of the medians is printed.

    python benchmarks/enforce_overhead.py [--model resnet20] [--batch 128] [--steps 15] [--optimizer sgd]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from _verdict import verdict
from randsparse.models import build
from randsparse.sparsity import attach, plan_sparsity


def _optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    raise SystemExit(f"unknown optimizer {name!r} (sgd, adamw)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dense = build(args.model, num_classes=10)
    masked = build(args.model, num_classes=10)
    masked.load_state_dict(dense.state_dict())
    plan = plan_sparsity(masked, args.sparsity, "erk", seed=0)
    dense_opt, masked_opt = _optimizer(args.optimizer, dense), _optimizer(args.optimizer, masked)
    attach(masked, plan.masks, masked_opt)

    data = torch.randn(args.batch, 3, 32, 32)
    target = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(data), target).backward()
        optimizer.step()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step(dense, dense_opt)
        step(masked, masked_opt)
    dense_times, masked_times = [], []
    for _ in range(args.steps):  # interleaved, so drift in machine load hits both alike
        dense_times.append(step(dense, dense_opt))
        masked_times.append(step(masked, masked_opt))

    dense_ms = 1e3 * statistics.median(dense_times)
    masked_ms = 1e3 * statistics.median(masked_times)
    print(f"{args.model}, batch {args.batch}, {args.optimizer}, {args.threads} threads, sparsity {args.sparsity}")
    print(f"dense step  (median of {args.steps}): {dense_ms:.1f} ms")
    print(f"masked step (median of {args.steps}): {masked_ms:.1f} ms")
    print(f"ratio masked/dense: {masked_ms / dense_ms:.3f}  (target <= 1.05)")
    return verdict({"masked/dense step <= 1.05": masked_ms / dense_ms <= 1.05})


if __name__ == "__main__":
    sys.exit(main())

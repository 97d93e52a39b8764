"""Every registered model, exported at 0.5 and 0.95 sparsity and loaded back, computes what the masked model does.

Acceptance (issue 9): max |exported − masked| / max |masked| ≤ 1e-5 on a random batch, eval mode,
with the sparse kernels forced on every converted layer (``--mode sparse``) or as dispatched.

    python benchmarks/sparse_roundtrip_all.py [--mode sparse|auto] [--batch 2] [--size 32]
"""

from __future__ import annotations

import argparse
import sys

import torch

from _verdict import verdict
from randsparse.accel.bench import bench_spec, build_seeded, relative_error
from randsparse.accel.export import export_bytes, load
from randsparse.models import available_models
from randsparse.sparsity import plan_sparsity

TOLERANCE = 1e-5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sparse", "auto"), default="sparse")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="input side (image_size models keep 28)")
    args = parser.parse_args()
    worst = 0.0
    for name in available_models():
        spec = bench_spec(name)
        model = build_seeded(spec, seed=0)
        size = spec["options"].get("image_size", args.size)
        x = torch.randn(args.batch, spec["in_channels"], size, size, generator=torch.Generator().manual_seed(0))
        errors = []
        for sparsity in (0.5, 0.95):
            plan = plan_sparsity(model, sparsity, "erk", seed=0)
            masked = build_seeded(spec, seed=0)
            plan.masks.apply_(masked)
            loaded = load(export_bytes(masked, plan.masks, spec), mode=args.mode)
            with torch.no_grad():
                errors.append(relative_error(loaded(x), masked(x)))
        worst = max(worst, *errors)
        print(f"{name:18s} rel err at 0.5: {errors[0]:.1e}, at 0.95: {errors[1]:.1e}")
    return verdict({f"worst relative error {worst:.1e} <= {TOLERANCE}": worst <= TOLERANCE})


if __name__ == "__main__":
    sys.exit(main())

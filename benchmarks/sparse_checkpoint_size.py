"""Compressed checkpoint of a 95 %-sparse Wide ResNet-50-2 against its dense checkpoint.

Target (issue 9): exported file ≤ 15 % of `torch.save(model.state_dict())`. Random ERK masks, no
training needed. Prints the size with each mask encoding and the one `auto` picks per layer.

    python benchmarks/sparse_checkpoint_size.py [--model wide_resnet50_2] [--sparsity 0.95]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from _verdict import verdict
from randsparse.accel.bench import bench_spec, build_seeded, state_dict_bytes
from randsparse.accel.encoding import available_encodings
from randsparse.accel.export import export_bytes, export_model
from randsparse.sparsity import plan_sparsity

TARGET = 0.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wide_resnet50_2")
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--distribution", default="erk")
    args = parser.parse_args()
    spec = bench_spec(args.model, num_classes=1000)
    model = build_seeded(spec, seed=0)
    plan = plan_sparsity(model, args.sparsity, args.distribution, seed=0)
    plan.masks.apply_(model)
    dense = state_dict_bytes(model)
    print(f"{args.model}, {args.distribution} at sparsity {args.sparsity} (density {plan.density:.4f})")
    print(f"dense checkpoint (torch.save state_dict): {dense / 2**20:8.2f} MiB")
    for encoding in available_encodings():
        size = len(export_bytes(model, plan.masks, spec, encoding=encoding))
        print(f"exported, every layer {encoding:6s}:        {size / 2**20:8.2f} MiB = {size / dense:.4f} of dense")
    with tempfile.TemporaryDirectory() as tmp:
        summary = export_model(model, plan.masks, spec, Path(tmp) / "model.rsp")
    picked = Counter(layer.encoding for layer in summary.layers)
    print(f"exported, auto ({dict(picked)}):  {summary.bytes / 2**20:8.2f} MiB = {summary.bytes / dense:.4f} of dense")
    return verdict({f"exported {summary.bytes / dense:.4f} of dense <= {TARGET}": summary.bytes <= TARGET * dense})


if __name__ == "__main__":
    sys.exit(main())

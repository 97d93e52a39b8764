"""Training throughput of the real engine (`train.fit`), dense vs sparse, ResNet-20 on CIFAR-shaped data.

Target (issue 4): the sparse run within 5 % of the dense one (ratio >= 0.95). Both run in this one
process, alternated, each for one epoch of synthetic 3x32x32 images; the images/s that `fit`
records in metrics.jsonl are compared (medians over the repeats).

    python benchmarks/train_throughput.py [--model resnet20] [--images 2560] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from _verdict import verdict
from randsparse.train import apply_overrides, build_config, fit


def _config(model: str, images: int, batch: int, sparsity: float, distribution: str):
    data = {
        "model": {"name": model},
        "data": {
            "name": "synthetic",
            "batch_size": batch,
            "val_fraction": 0.0,
            "augment": True,
            "options": {"num_classes": 10, "channels": 3, "image_size": 32, "train_size": images, "test_size": 64},
        },
        "sparsity": {"sparsity": sparsity, "distribution": distribution},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "multistep", "milestones": [80, 120]},
        "epochs": 1,
        "device": "cpu",
    }
    return build_config(apply_overrides(data, []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=2560, help="training images per epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--distribution", default="erk")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.INFO)

    rates: dict[str, list[float]] = {"dense": [], "sparse": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for kind, sparsity in (("dense", 0.0), ("sparse", args.sparsity)):
                out = Path(tmp) / f"{kind}-{repeat}"
                fit(_config(args.model, args.images, args.batch, sparsity, args.distribution), out)
                row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
                rates[kind].append(row["images_per_second"])
    dense, sparse = statistics.median(rates["dense"]), statistics.median(rates["sparse"])
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, {args.images} images per epoch")
    print(f"dense  training: {dense:7.1f} images/s  (runs: {', '.join(f'{r:.1f}' for r in rates['dense'])})")
    print(
        f"sparse training: {sparse:7.1f} images/s  (sparsity {args.sparsity}, {args.distribution};"
        f" runs: {', '.join(f'{r:.1f}' for r in rates['sparse'])})"
    )
    print(f"ratio sparse/dense: {sparse / dense:.3f}  (target >= 0.95)")
    return verdict({"sparse/dense training speed >= 0.95": sparse / dense >= 0.95})


if __name__ == "__main__":
    sys.exit(main())

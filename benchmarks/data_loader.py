"""Images per second of one epoch of an augmented training loader (batch 128, workers 0), against per-item torchvision.

Target (issue 3): >= 20 000 images/s for Fashion-MNIST with augmentation on 2 CPU cores. Each round
iterates a full epoch of `randsparse.data` (batched crop/flip in tensor ops) and, interleaved in this
same process, a subsample of the usual per-item pipeline (torchvision v2 RandomCrop + flip +
ToDtype + Normalize in a plain DataLoader, on one intra-op thread as in a worker); the medians and
their ratio are printed.

    python benchmarks/data_loader.py [--dataset fashion_mnist|cifar10|synthetic] [--rounds 3] [--threads N]

A dataset that is not installed is replaced by `synthetic` data of the same shape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

from _verdict import verdict
from randsparse import data
from randsparse.data.datasets import one_intra_op_thread
from randsparse.errors import DatasetNotFoundError


class _PerItem(Dataset):
    """The usual pipeline: one uint8 image at a time through torchvision v2 transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.labels[i])


def _epoch(loader) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    for _, labels in loader:
        count += len(labels)
    return count, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "cifar10", "synthetic"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-items", type=int, default=8192, help="items per round of the per-item baseline")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torchvision.transforms import v2

    name = args.dataset
    options = {"crop_padding": 2, "hflip": True} if name == "fashion_mnist" else {}
    try:
        train = data.build(name, split="train", **options)
    except DatasetNotFoundError:
        shape = {"fashion_mnist": (1, 28, 60000), "cifar10": (3, 32, 50000), "synthetic": (1, 28, 60000)}[name]
        print(f"{name} not installed: synthetic data of the same shape instead")
        channels, size, n = shape
        padding, mode = (4, "reflect") if name == "cifar10" else (2, "zeros")
        train = data.build(
            "synthetic", split="train", channels=channels, image_size=size, train_size=n, crop_padding=padding,
            padding_mode=mode, hflip=True,
        )  # fmt: skip
    augmentation = train.augmentation
    assert augmentation is not None, "the benchmark measures an augmented loader"
    info = train.info
    size = info.image_size
    padding_mode = "constant" if augmentation.padding_mode == "zeros" else "reflect"
    per_item = v2.Compose(
        [
            v2.RandomCrop(size, padding=augmentation.crop_padding, padding_mode=padding_mode),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(info.mean), list(info.std)),
        ]
    )
    subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.baseline_items]
    baseline = _PerItem(train.images[subset], train.labels[subset], per_item)

    ours_rates, base_rates = [], []
    for round_ in range(args.rounds + 1):  # round 0 warms up
        loader = data.make_loader(train, args.batch, shuffle=True, seed=round_)
        count, seconds = _epoch(loader)
        with one_intra_op_thread():  # as in a DataLoader worker, and as our loader's own transforms run
            base_count, base_seconds = _epoch(DataLoader(baseline, args.batch, shuffle=True))
        if round_ > 0:
            ours_rates.append(count / seconds)
            base_rates.append(base_count / base_seconds)
    ours, base = statistics.median(ours_rates), statistics.median(base_rates)
    print(
        f"{info.name} {info.shape}, {len(train)} train images, batch {args.batch}, workers 0,"
        f" {torch.get_num_threads()} threads, augmentation {augmentation}"
    )
    print(f"randsparse.data loader: {ours:,.0f} images/s (rounds: {', '.join(f'{r:,.0f}' for r in ours_rates)})")
    print(f"per-item torchvision:   {base:,.0f} images/s")
    print(f"ratio: {ours / base:.1f}x; target >= 20,000 images/s: {'met' if ours >= 20000 else 'MISSED'}")
    return verdict({"loader >= 20,000 images/s": ours >= 20000})


if __name__ == "__main__":
    sys.exit(main())

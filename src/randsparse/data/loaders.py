"""`make_loader`: a `DataLoader` whose order and augmentation depend on its seed only.

Its batches come from the one seeded batch order (`EpochBatchSampler` over an `EpochSampler`, the
sampler training uses): every pass over the loader is the next epoch, whose order is a function
of (seed, epoch), and each batch carries the seed of its augmentation (`SeededIndices`), so the
batches are the same with 0, 1 or 8 workers and with persistent workers, epoch after epoch.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from randsparse.data.datasets import one_intra_op_thread
from randsparse.data.sampling import EpochBatchSampler, EpochSampler
from randsparse.errors import ConfigError, is_integer
from randsparse.seeding import seed_worker, seeded_generator


def collate(batch: list) -> Any:
    """`default_collate` on one intra-op thread: stacking a batch is small memory-bound work (`one_intra_op_thread`)."""
    with one_intra_op_thread():
        return default_collate(batch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A `DataLoader` over `dataset` whose batch order and augmentation are fixed by `seed`.

    `workers` > 0 uses persistent worker processes (seeded); `pin_memory` defaults to whether a
    CUDA device is present.
    """
    if not is_integer(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not is_integer(workers) or workers < 0:
        raise ConfigError(f"workers must be a non-negative integer, got {workers!r}")
    if not is_integer(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(dataset, Sized):
        raise ConfigError("make_loader needs a dataset with a length (a map-style dataset)")
    order = EpochSampler(len(dataset), seed, shuffle=shuffle)
    batches = EpochBatchSampler(order, batch_size, drop_last=drop_last, advance=True)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        collate_fn=collate,
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=seeded_generator(seed, "loader workers"),
    )

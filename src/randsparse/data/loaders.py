"""`make_loader`: a `DataLoader` whose order and augmentation depend on its seed only.

The order comes from a `torch.Generator` seeded with `seed`; each batch also carries a seed for
its augmentation (`SeededIndices`), drawn from a second generator, so the batches are the same
with 0, 1 or 8 workers and with persistent workers, epoch after epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
    get_worker_info,
)

from randsparse.data.datasets import SeededIndices, one_intra_op_thread
from randsparse.data.sets import seeded_generator
from randsparse.errors import ConfigError, is_integer


class SeededBatchSampler(Sampler[list[int]]):
    """Groups a sampler's indices into batches, each a `SeededIndices` with a fresh seed for its augmentation."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, generator: torch.Generator) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.generator = generator

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        # One seed per batch this pass can start (the last one may stay unused).
        seeds = iter(torch.randint(0, 2**62, (len(self) + 1,), generator=self.generator).tolist())
        batch = SeededIndices(seed=next(seeds))
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = SeededIndices(seed=next(seeds))
        if batch and not self.drop_last:
            yield batch


def collate(batch: list) -> Any:
    """`default_collate` on one intra-op thread: stacking a batch is small memory-bound work (`one_intra_op_thread`)."""
    with one_intra_op_thread():
        return default_collate(batch)


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's RNGs in a worker process from its torch seed (for third-party transforms)."""
    info = get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)


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
    sampler: Sampler[int]
    if shuffle:
        sampler = RandomSampler(dataset, generator=seeded_generator(seed, "loader order"))
    else:
        sampler = SequentialSampler(dataset)
    batches = SeededBatchSampler(sampler, batch_size, drop_last, seeded_generator(seed, "loader augmentation"))
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        collate_fn=collate,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=seeded_generator(seed, "loader workers"),
    )

"""The one seeded batch order: `EpochSampler` (a pure function of (seed, epoch)) and `EpochBatchSampler`.

Training, studies and `make_loader` all draw their batch order here. An epoch's order is a
permutation drawn from a generator seeded with ``mix(seed, epoch)``, so resuming part-way through
an epoch replays it exactly; each batch carries the seed of its augmentation (`SeededIndices`),
``mix(seed, epoch, step, rank)``, so batches do not depend on the number of loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from randsparse.data.datasets import SeededIndices
from randsparse.seeding import mix


class EpochSampler(Sampler[int]):
    """A fresh random order for every epoch, a pure function of (seed, epoch); can start part-way.

    With ``shuffle=False`` the order is the dataset's own (0 .. size-1) in every epoch.
    """

    def __init__(self, size: int, seed: int, *, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Order of epoch `epoch` (0-based), skipping its first `start` items."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.start, self.size))
        generator = torch.Generator().manual_seed(mix(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator)
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return self.size - self.start


class EpochBatchSampler(Sampler[list[int]]):
    """One process's batches of an epoch: `EpochSampler`'s order cut into global batches, one slice per process.

    A global batch holds ``batch_size x world_size`` items; process `rank` takes its `rank`-th slice
    of `batch_size`. So the union of the processes' batches at step k is the single-process batch at
    step k of the same global size, whatever the number of processes. Every batch carries the seed of
    its augmentation (`SeededIndices`), a function of (seed, epoch, step, rank): a mid-epoch resume
    replays the same augmentation, with any number of loader workers. Several processes need full
    global batches (`drop_last`), so that each one's gradient weighs as much as the others'.

    With ``advance=True`` every pass over the sampler is the next epoch (what `make_loader` uses);
    otherwise the caller chooses the epoch with `set_epoch` (what training does).
    """

    def __init__(
        self,
        order: EpochSampler,
        batch_size: int,
        *,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
        advance: bool = False,
    ) -> None:
        if world_size > 1 and not drop_last:
            raise ValueError("several processes need full global batches: drop_last=True")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.order = order
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.advance = advance
        self.start_step = 0
        self._passes = 0

    @property
    def global_batch_size(self) -> int:
        """Items per step over all processes."""
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in a whole epoch."""
        size, batch = self.order.size, self.global_batch_size
        return size // batch if self.drop_last else math.ceil(size / batch)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Batches of epoch `epoch` (0-based), from step `start_step` of it on."""
        self.start_step = start_step
        self.order.set_epoch(epoch, min(start_step * self.global_batch_size, self.order.size))

    def __iter__(self) -> Iterator[list[int]]:
        if self.advance:
            self.set_epoch(self._passes)
            self._passes += 1
        order = list(self.order)
        batch, first = self.global_batch_size, self.rank * self.batch_size
        for k in range(len(self)):
            step = self.start_step + k
            mine = order[k * batch : (k + 1) * batch][first : first + self.batch_size]
            yield SeededIndices(mine, seed=mix(self.order.seed, self.order.epoch, step, self.rank))

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_step, 0)

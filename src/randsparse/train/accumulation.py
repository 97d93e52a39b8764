"""Gradient accumulation: one optimizer step from several micro-batches (`optim.accumulate_steps`).

The loader hands each process ``data.batch_size x accumulate_steps`` examples per step (the same
examples, in the same order and with the same augmentation, as a run with that larger batch);
they are cut into `accumulate_steps` micro-batches whose losses are weighted by their share of the
examples, so the summed gradient is the gradient of the whole batch's mean loss. Under
DistributedDataParallel the gradients are all-reduced once, on the last micro-batch. BatchNorm
normalises over each micro-batch, as it does over each process's slice in a multi-process run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def first_micro_batch(inputs: torch.Tensor, targets: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first micro-batch `micro_batches` gives (the batch itself when `steps` is 1)."""
    if steps == 1:
        return inputs, targets
    return inputs.tensor_split(steps)[0], targets.tensor_split(steps)[0]


def micro_batches(
    net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, steps: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float, Any]]:
    """(inputs, targets, share of the batch, gradient-sync context) of each non-empty micro-batch.

    `steps` = 1 gives the batch itself with share 1.0 and no context; a batch smaller than `steps`
    (the last of an epoch) gives fewer micro-batches. The context holds back DDP's all-reduce on
    every micro-batch but the last.
    """
    if steps == 1:
        yield inputs, targets, 1.0, contextlib.nullcontext()
        return
    inner = getattr(net, "_orig_mod", net)  # under torch.compile
    total = targets.shape[0]
    parts = [(x, y) for x, y in zip(inputs.tensor_split(steps), targets.tensor_split(steps), strict=True) if len(y)]
    for index, (x, y) in enumerate(parts):
        last = index == len(parts) - 1
        sync = inner.no_sync() if isinstance(inner, DistributedDataParallel) and not last else contextlib.nullcontext()
        yield x, y, y.shape[0] / total, sync

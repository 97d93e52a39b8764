"""The SNIP scorer (Lee et al., 2019): connection sensitivity ``|dL/dw * w|``."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from randsparse.errors import ConfigError
from randsparse.sparsity.saliency.inputs import (
    Scores,
    ScoringInput,
    batch_statistics_mode,
    check_count,
    iter_batches,
    logger,
    logits,
    to_device,
    weight_grads,
)
from randsparse.sparsity.saliency.registry import register_scorer

_SNIP_REINIT = ("none", "xavier_normal")


@register_scorer("snip", needs_data=True)
def snip(inp: ScoringInput, num_batches: int = 1, batch_size: int = 128, reinit: str = "none") -> Scores:
    """SNIP (Lee et al., 2019): ``|dL/dw * w|``, the loss gradient averaged over `num_batches` batches.

    `batch_size` applies when `data` is a dataset; batch norm uses batch statistics. `reinit`:
    ``"none"`` scores the model's own weights; ``"xavier_normal"`` first redraws every prunable
    weight of the scoring copy from Xavier-normal (with the scoring generator, so scores stay
    reproducible), as the paper's SNIP code (VITA-Group/Random_Pruning, ``snip.py``) does. Raises
    `ConfigError` for another value.
    """
    check_count(num_batches, "num_batches")
    if reinit not in _SNIP_REINIT:
        raise ConfigError(f"snip: reinit must be one of {', '.join(_SNIP_REINIT)}, got {reinit!r}")
    if reinit == "xavier_normal":
        with torch.no_grad():
            for weight in inp.weights.values():
                drawn = nn.init.xavier_normal_(torch.empty(weight.shape), generator=inp.generator)
                weight.copy_(drawn)
    batch_statistics_mode(inp.model)
    names, weights = list(inp.weights), list(inp.weights.values())
    total = [torch.zeros_like(w) for w in weights]
    used = 0
    for x, y in itertools.islice(iter_batches(inp.data, batch_size, inp.generator), num_batches):
        x, y = to_device(inp, x, y)
        loss = F.cross_entropy(logits(inp.model, x, y), y)
        for acc, grad in zip(total, weight_grads(loss, weights), strict=True):
            acc.add_(grad)
        used += 1
    if used == 0:
        raise ConfigError("snip: the data holds no batch")
    if used < num_batches:
        logger.warning("snip: the data held %d batch(es), fewer than the %d asked for", used, num_batches)
    return {n: (g.div_(used) * w.detach()).abs() for n, g, w in zip(names, total, weights, strict=True)}

"""The SynFlow scorer (Tanaka et al., 2020): iterative, data-free synaptic-flow scores."""

from __future__ import annotations

import itertools
import math

import torch

from randsparse.errors import ConfigError
from randsparse.sparsity.distributions import check_density
from randsparse.sparsity.layers import owning_module
from randsparse.sparsity.masks import kept_count
from randsparse.sparsity.saliency.inputs import Scores, ScoringInput, check_count, first_input_shape, weight_grads
from randsparse.sparsity.saliency.registry import register_scorer
from randsparse.sparsity.selection import global_top_masks


@register_scorer("synflow", needs_data=False)
def synflow(inp: ScoringInput, density: float, rounds: int = 100) -> Scores:
    """SynFlow (Tanaka et al., 2020): iterative, data-free pruning by synaptic flow, to `density`.

    On absolute weights (and absolute batch-norm parameters and statistics, batch norm in eval
    mode), in float64 so that the flow does not overflow, the flow R is the sum of the outputs for
    an all-ones input of shape `input_shape`; a weight's score is ``|dR/dw * w|``. Each of
    `rounds` rounds scores the weights left and keeps the global top ``density ** (k / rounds)``
    (exponential schedule). Returns the last round's scores (pruned weights score 0), whose global
    top `density` fraction is SynFlow's mask; they are meant for selection at that density.
    """
    check_density(density)
    check_count(rounds, "rounds")
    shape = inp.input_shape
    if shape is None:
        if inp.data is None:
            raise ConfigError("synflow needs the input shape (C, H, W): give input_shape or data")
        shape = first_input_shape(inp.data)
    model = inp.model.double().eval()
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()
    weights = {n: getattr(*owning_module(model, n)) for n in inp.weights}
    names, params = list(weights), list(weights.values())
    base = [p.detach().clone() for p in params]
    masks = [torch.ones_like(p, dtype=torch.bool) for p in params]
    ones = torch.ones((1, *shape), dtype=torch.float64, device=inp.device)
    total = sum(p.numel() for p in params)
    scores: Scores = {}
    for round_ in range(1, rounds + 1):
        with torch.no_grad():
            for p, b, m in zip(params, base, masks, strict=True):
                p.copy_(b * m)
        flow = model(ones).sum()
        if not math.isfinite(float(flow.detach())):
            raise ConfigError("synflow: the synaptic flow overflowed even in float64; the model is too deep for it")
        grads = weight_grads(flow, params)
        scores = {n: (g * p.detach()).abs() for n, g, p in zip(names, grads, params, strict=True)}
        if round_ < rounds:
            keep = kept_count(density ** (round_ / rounds), total)
            top = global_top_masks(scores, keep)
            masks = [top[n].to(inp.device) for n in names]
    return scores

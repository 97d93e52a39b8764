"""The GraSP scorer (Wang et al., 2020): gradient-signal preservation ``w * (H g)`` on a class-balanced sample."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from randsparse.errors import ConfigError, is_real
from randsparse.sparsity.saliency.inputs import (
    Scores,
    ScoringInput,
    balanced,
    batch_statistics_mode,
    check_count,
    dataset_classes,
    iter_batches,
    logits,
    to_device,
    weight_grads,
)
from randsparse.sparsity.saliency.registry import register_scorer


@register_scorer("grasp", needs_data=True)
def grasp(
    inp: ScoringInput,
    temperature: float = 200.0,
    samples_per_class: int = 10,
    num_classes: int | None = None,
    batch_size: int = 128,
) -> Scores:
    """GraSP (Wang et al., 2020) on a class-balanced sample, negated so that higher is kept.

    GraSP's score is ``S = -w * (H g)``, with ``g`` the gradient and ``H`` the Hessian of the
    cross-entropy of ``logits / temperature`` over the sample, and it removes the highest S; this
    scorer returns ``-S = w * (H g)``, so that, as for every scorer, the highest are kept. The
    sample holds `samples_per_class` examples of each class; the number of classes is
    `num_classes`, else the dataset's (``classes`` or ``info.num_classes``), else the width of the
    model's output: never assumed. ``H g``
    is a Hessian-vector product (double backward), in chunks of `batch_size` examples; attention
    runs on PyTorch's math kernel, the one whose backward can itself be differentiated.
    """
    if not is_real(temperature) or not temperature > 0:
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    check_count(samples_per_class, "samples_per_class")
    model = inp.model
    batch_statistics_mode(model)
    batches = iter_batches(inp.data, batch_size, inp.generator)
    if num_classes is None:
        num_classes = dataset_classes(inp.data)
    if num_classes is None:
        first = next(batches, None)
        if first is None:
            raise ConfigError("grasp: the data holds no batch")
        with torch.no_grad():
            model.eval()
            num_classes = logits(model, first[0][:1].to(inp.device, inp.dtype)).shape[1]
            batch_statistics_mode(model)
        batches = itertools.chain([first], batches)
    check_count(num_classes, "num_classes")
    x, y = balanced(batches, num_classes, samples_per_class)
    count = y.numel()
    chunks = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    names, weights = list(inp.weights), list(inp.weights.values())

    def chunk_loss(cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
        """This chunk's share of the sample's mean loss, so chunk gradients add up to the sample's."""
        cx, cy = to_device(inp, cx, cy)
        # Attention's fused kernels have no double backward: the math kernel's graph does.
        with sdpa_kernel(SDPBackend.MATH):
            out = logits(model, cx, cy)
        return F.cross_entropy(out / temperature, cy, reduction="sum") / count

    if len(chunks) == 1:
        # One chunk: one forward serves both g and Hg (g is the detached gradient of the same graph).
        grads = weight_grads(chunk_loss(*chunks[0]), weights, create_graph=True)
        gradient = [grad.detach() for grad in grads]
        hessian_gradient = list(
            weight_grads(sum((grad * g).sum() for grad, g in zip(grads, gradient, strict=True)), weights)
        )
        return {n: w.detach() * hg for n, w, hg in zip(names, weights, hessian_gradient, strict=True)}
    gradient = [torch.zeros_like(w) for w in weights]
    for cx, cy in chunks:
        for acc, grad in zip(gradient, weight_grads(chunk_loss(cx, cy), weights), strict=True):
            acc.add_(grad)
    hessian_gradient = [torch.zeros_like(w) for w in weights]
    for cx, cy in chunks:
        grads = weight_grads(chunk_loss(cx, cy), weights, create_graph=True)
        inner = sum((grad * g).sum() for grad, g in zip(grads, gradient, strict=True))
        for acc, hg in zip(hessian_gradient, weight_grads(inner, weights), strict=True):
            acc.add_(hg)
    return {n: w.detach() * hg for n, w, hg in zip(names, weights, hessian_gradient, strict=True)}

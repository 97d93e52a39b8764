"""Saliency scores of pruning at initialization (SNIP, GraSP, SynFlow, magnitude), computed on a copy of a model.

`compute_scores` returns ``{prunable weight name: tensor of the weight's shape}`` on the CPU; a
higher score always means a more important weight, kept first. The model, its gradients, its
batch-norm statistics and the global RNG are left as they were: scorers work on a deep copy, draw
examples with their own generator, and run with dropout-like layers off. Scores are used in two
ways (`randsparse.sparsity.selection`): ratio mode, the registered ``<scorer>_ratio`` density
rules, which keep the per-layer densities and draw the mask at random within each layer; and
mask mode, `masks_from_scores`, which keeps the top-scored weights themselves.

Add a scorer with ``@register_scorer(name, needs_data=...)``: a function ``(ScoringInput,
**options) -> {name: scores}``; registering it also registers its ``<name>_ratio`` distribution.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset, default_collate

from randsparse.errors import ConfigError, is_integer, is_real
from randsparse.registry import Registry, check_options
from randsparse.sparsity.distributions import DensityRule, check_density, register_distribution
from randsparse.sparsity.layers import PrunableSelector, Shape, owning_module, prunable_parameters
from randsparse.sparsity.masks import kept_count, seed_from
from randsparse.sparsity.selection import global_top_masks, masks_from_scores, score_densities

__all__ = [
    "RATIO_SUFFIX",
    "ScoringInput",
    "available_scorers",
    "balanced_sample",
    "compute_scores",
    "iter_batches",
    "masks_from_scores",
    "ratio_method",
    "register_scorer",
    "scorer_needs_data",
    "scorer_options",
]

logger = logging.getLogger(__name__)

Scores = dict[str, torch.Tensor]
ScorerFn = Callable[..., Scores]

RATIO_SUFFIX = "_ratio"

# A class-balanced sample stops scanning after this many examples per example it wants.
_SCAN_FACTOR = 20


@dataclass(frozen=True)
class ScoringInput:
    """What a scorer works on: a private copy of the model, its prunable weights, and the data.

    `weights` are the copy's prunable parameters (requiring grad; every other parameter does
    not); `generator` is the only source of randomness a scorer may use.
    """

    model: nn.Module
    weights: dict[str, nn.Parameter]
    data: Any
    input_shape: tuple[int, ...] | None
    generator: torch.Generator

    @property
    def device(self) -> torch.device:
        """Where the model's weights live; inputs are moved there."""
        return next(iter(self.weights.values())).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights; inputs are cast to it."""
        return next(iter(self.weights.values())).dtype


@dataclass(frozen=True)
class _Scorer:
    name: str
    fn: ScorerFn
    needs_data: bool


_SCORERS: Registry[_Scorer] = Registry("scorer")


def register_scorer(name: str, *, needs_data: bool) -> Callable[[ScorerFn], ScorerFn]:
    """Decorator adding a scorer under `name`, and its ratio distribution ``<name>_ratio``."""

    def decorate(fn: ScorerFn) -> ScorerFn:
        _SCORERS.add(name, _Scorer(name, fn, needs_data))
        register_distribution(name + RATIO_SUFFIX)(_ratio_rule(name))
        return fn

    return decorate


def available_scorers() -> list[str]:
    """Names of every registered scorer, sorted."""
    return _SCORERS.names()


def _get_scorer(name: str) -> _Scorer:
    return _SCORERS[name]


def scorer_options(name: str) -> list[str]:
    """Keyword options the scorer `name` takes."""
    return list(inspect.signature(_get_scorer(name).fn).parameters)[1:]


def scorer_needs_data(name: str) -> bool:
    """True when the scorer `name` needs labelled examples (SNIP, GraSP); false when data-free."""
    return _get_scorer(name).needs_data


def ratio_method(distribution: str) -> str | None:
    """The scorer behind a ratio distribution (``"snip_ratio"`` -> ``"snip"``); None for any other rule."""
    if distribution.endswith(RATIO_SUFFIX) and distribution[: -len(RATIO_SUFFIX)] in _SCORERS:
        return distribution[: -len(RATIO_SUFFIX)]
    return None


def _ratio_rule(method: str) -> DensityRule:
    """The density rule ``<method>_ratio``: layer densities of the global top `method` scores."""

    def rule(
        shapes: dict[str, Shape],
        density: float,
        scores: dict[str, torch.Tensor],
        allow_collapse: bool = False,
        min_weights_per_output: int = 1,
        min_density: float = 0.0,
    ) -> dict[str, float]:
        return score_densities(shapes, density, scores, allow_collapse, min_weights_per_output, min_density)

    rule.__name__ = method + RATIO_SUFFIX
    rule.__doc__ = (
        f"Per-layer densities of the global top {method} scores (ratio mode); `scores` come from"
        f" ``compute_scores({method!r}, ...)``, and the collapse guard options are those of `score_densities`."
    )
    return rule


def compute_scores(
    method: str,
    model: nn.Module,
    data: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    selector: PrunableSelector | None = None,
    seed: int | torch.Generator = 0,
    **options: Any,
) -> Scores:
    """Scores of `method` for every prunable weight of `model` (higher = more important).

    `data` is a map-style `Dataset` of ``(input, label)`` examples (a random sample is drawn with
    `seed`), an iterable of ``(inputs, labels)`` batches (used in order; a `DataLoader` without a
    `generator` draws its worker seed from the global RNG), or one ``(inputs, labels)`` batch.
    `input_shape` is ``(C, H, W)`` (SynFlow's all-ones input; taken from `data` when omitted).
    `options` go to the scorer (see `scorer_options`).
    """
    scorer = _get_scorer(method)
    accepted = scorer_options(method)
    check_options(f"scorer {method!r}", options, accepted)
    params = inspect.signature(scorer.fn).parameters
    missing = [p for p in accepted if params[p].default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"scorer {method!r} needs option(s) {', '.join(missing)}")
    original = prunable_parameters(model, selector)
    if not original:
        raise ConfigError("the model has no prunable layers; nothing to score")
    if any(p.is_meta for p in original.values()):
        raise ConfigError(f"{method} scores need the model's real weights, but it lives on the meta device")
    if scorer.needs_data and data is None:
        raise ConfigError(f"{method} scores need labelled data (a dataset or batches of (inputs, labels))")
    generator = torch.Generator().manual_seed(seed_from(seed))
    work = copy.deepcopy(model)
    weights = prunable_parameters(work, selector)
    for param in work.parameters():
        param.requires_grad_(False)
    for weight in weights.values():
        weight.requires_grad_(True)
    shape = _check_input_shape(input_shape) if input_shape is not None else None
    scores = scorer.fn(ScoringInput(work, weights, data, shape, generator), **options)
    return {name: scores[name].detach().to("cpu") for name in weights}


def _check_input_shape(shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not all(is_integer(d) for d in shape):
        raise ConfigError(f"input_shape must be a sequence of positive integers such as (3, 32, 32), got {shape!r}")
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"input_shape must be a sequence of positive integers such as (3, 32, 32), got {shape!r}")
    return tuple(shape)


def _check_count(value: Any, name: str) -> int:
    if not is_integer(value) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Data: examples and batches, drawn without the global RNG.


def _is_dataset(data: Any) -> bool:
    return isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__")


def _is_one_batch(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(part, torch.Tensor) for part in data)
        and data[0].dim() >= 1
    )


def _pair(item: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) < 2 or not isinstance(item[0], torch.Tensor):
        raise ConfigError(f"data must give (inputs, labels) pairs, got {type(item).__name__}")
    labels = item[1] if isinstance(item[1], torch.Tensor) else torch.as_tensor(item[1])
    if labels.is_floating_point() or labels.is_complex():
        raise ConfigError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.reshape(-1).long()
    if labels.numel() != item[0].shape[0]:
        raise ConfigError(f"a batch of {item[0].shape[0]} inputs came with {labels.numel()} labels")
    return item[0], labels


def iter_batches(data: Any, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, labels)`` batches of `data`: a dataset in an order drawn from `generator`, else as given."""
    _check_count(batch_size, "batch_size")
    if _is_dataset(data):
        order = torch.randperm(len(data), generator=generator)
        for chunk in order.split(batch_size):
            yield _pair(default_collate(_items(data, chunk.tolist())))
    elif _is_one_batch(data):
        yield _pair(data)
    else:
        try:
            items = iter(data)
        except TypeError:
            raise ConfigError(f"data must be a dataset or an iterable of batches, got {type(data).__name__}") from None
        for item in items:
            yield _pair(item)


def _items(dataset: Dataset, indices: list[int]) -> list[Any]:
    """Examples at `indices`, fetched together where the dataset can (as `DataLoader` does)."""
    fetch = getattr(dataset, "__getitems__", None)
    return list(fetch(indices)) if fetch is not None else [dataset[i] for i in indices]


def _dataset_classes(data: Any) -> int | None:
    """Number of classes a dataset declares: torchvision's ``classes`` or randsparse's ``info.num_classes``."""
    if not _is_dataset(data):
        return None
    classes = getattr(data, "classes", None)
    if classes is not None:
        return len(classes)
    return getattr(getattr(data, "info", None), "num_classes", None)


def _first_input_shape(data: Any) -> tuple[int, ...]:
    if _is_dataset(data):
        if len(data) == 0:
            raise ConfigError("the dataset is empty")
        return tuple(_pair(default_collate(_items(data, [0])))[0].shape[1:])
    for inputs, _ in iter_batches(data, 1, torch.Generator()):
        return tuple(inputs.shape[1:])
    raise ConfigError("the data holds no batch")


def _balanced(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    counts = [0] * num_classes
    inputs, labels = [], []
    scanned, full = 0, 0
    limit = _SCAN_FACTOR * num_classes * per_class
    for x, y in batches:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise ConfigError(f"label {bad} lies outside the {num_classes} classes (0..{num_classes - 1})")
        take = []
        for index, label in enumerate(y.tolist()):
            if counts[label] < per_class:
                counts[label] += 1
                full += counts[label] == per_class
                take.append(index)
        if take:
            index = torch.tensor(take)
            inputs.append(x[index])
            labels.append(y[index])
        scanned += y.numel()
        if full == num_classes or scanned >= limit:
            break
    if not labels:
        raise ConfigError("the data holds no labelled example")
    short = sum(c < per_class for c in counts)
    if short:
        logger.warning(
            "class-balanced sample: %d of %d classes have fewer than %d examples among the %d scanned",
            short,
            num_classes,
            per_class,
            scanned,
        )
    return torch.cat(inputs), torch.cat(labels)


def balanced_sample(
    data: Any, num_classes: int, per_class: int, *, seed: int | torch.Generator = 0, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `per_class` examples of each of `num_classes` classes, as one ``(inputs, labels)`` batch.

    A dataset is scanned in an order drawn from `seed`, batches in their order; scanning stops once
    every class is full (or after 20 examples per wanted one, with a warning naming how many
    classes fell short). A label outside ``0..num_classes-1`` is an error.
    """
    _check_count(num_classes, "num_classes")
    _check_count(per_class, "samples per class")
    generator = torch.Generator().manual_seed(seed_from(seed))
    return _balanced(iter_batches(data, batch_size, generator), num_classes, per_class)


# ---------------------------------------------------------------------------------------------
# Model helpers.


def _batch_statistics_mode(model: nn.Module) -> None:
    """Evaluation mode (no dropout, no stochastic depth: nothing random), except batch norm on batch statistics."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()


def _logits(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    out = model(inputs)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"saliency scores need a model returning (batch, classes) logits, got {shape}")
    if labels is not None and labels.numel() and int(labels.max()) >= out.shape[1]:
        raise ConfigError(f"label {int(labels.max())} lies outside the model's {out.shape[1]} outputs")
    return out


def _to(inp: ScoringInput, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.to(inp.device, inp.dtype), y.to(inp.device)


def _grads(loss: torch.Tensor, weights: Sequence[torch.Tensor], create_graph: bool = False) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, weights, create_graph=create_graph, materialize_grads=True)


# ---------------------------------------------------------------------------------------------
# The scorers.


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
    _check_count(num_batches, "num_batches")
    if reinit not in _SNIP_REINIT:
        raise ConfigError(f"snip: reinit must be one of {', '.join(_SNIP_REINIT)}, got {reinit!r}")
    if reinit == "xavier_normal":
        with torch.no_grad():
            for weight in inp.weights.values():
                drawn = nn.init.xavier_normal_(torch.empty(weight.shape), generator=inp.generator)
                weight.copy_(drawn)
    _batch_statistics_mode(inp.model)
    names, weights = list(inp.weights), list(inp.weights.values())
    total = [torch.zeros_like(w) for w in weights]
    used = 0
    for x, y in itertools.islice(iter_batches(inp.data, batch_size, inp.generator), num_batches):
        x, y = _to(inp, x, y)
        loss = F.cross_entropy(_logits(inp.model, x, y), y)
        for acc, grad in zip(total, _grads(loss, weights), strict=True):
            acc.add_(grad)
        used += 1
    if used == 0:
        raise ConfigError("snip: the data holds no batch")
    if used < num_batches:
        logger.warning("snip: the data held %d batch(es), fewer than the %d asked for", used, num_batches)
    return {n: (g.div_(used) * w.detach()).abs() for n, g, w in zip(names, total, weights, strict=True)}


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
    is a Hessian-vector product (double backward), in chunks of `batch_size` examples.
    """
    if not is_real(temperature) or not temperature > 0:
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    _check_count(samples_per_class, "samples_per_class")
    model = inp.model
    _batch_statistics_mode(model)
    batches = iter_batches(inp.data, batch_size, inp.generator)
    if num_classes is None:
        num_classes = _dataset_classes(inp.data)
    if num_classes is None:
        first = next(batches, None)
        if first is None:
            raise ConfigError("grasp: the data holds no batch")
        with torch.no_grad():
            model.eval()
            num_classes = _logits(model, first[0][:1].to(inp.device, inp.dtype)).shape[1]
            _batch_statistics_mode(model)
        batches = itertools.chain([first], batches)
    _check_count(num_classes, "num_classes")
    x, y = _balanced(batches, num_classes, samples_per_class)
    count = y.numel()
    chunks = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    names, weights = list(inp.weights), list(inp.weights.values())

    def chunk_loss(cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
        """This chunk's share of the sample's mean loss, so chunk gradients add up to the sample's."""
        cx, cy = _to(inp, cx, cy)
        return F.cross_entropy(_logits(model, cx, cy) / temperature, cy, reduction="sum") / count

    if len(chunks) == 1:
        # One chunk: one forward serves both g and Hg (g is the detached gradient of the same graph).
        grads = _grads(chunk_loss(*chunks[0]), weights, create_graph=True)
        gradient = [grad.detach() for grad in grads]
        hessian_gradient = list(_grads(sum((grad * g).sum() for grad, g in zip(grads, gradient, strict=True)), weights))
        return {n: w.detach() * hg for n, w, hg in zip(names, weights, hessian_gradient, strict=True)}
    gradient = [torch.zeros_like(w) for w in weights]
    for cx, cy in chunks:
        for acc, grad in zip(gradient, _grads(chunk_loss(cx, cy), weights), strict=True):
            acc.add_(grad)
    hessian_gradient = [torch.zeros_like(w) for w in weights]
    for cx, cy in chunks:
        grads = _grads(chunk_loss(cx, cy), weights, create_graph=True)
        inner = sum((grad * g).sum() for grad, g in zip(grads, gradient, strict=True))
        for acc, hg in zip(hessian_gradient, _grads(inner, weights), strict=True):
            acc.add_(hg)
    return {n: w.detach() * hg for n, w, hg in zip(names, weights, hessian_gradient, strict=True)}


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
    _check_count(rounds, "rounds")
    shape = inp.input_shape
    if shape is None:
        if inp.data is None:
            raise ConfigError("synflow needs the input shape (C, H, W): give input_shape or data")
        shape = _first_input_shape(inp.data)
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
        grads = _grads(flow, params)
        scores = {n: (g * p.detach()).abs() for n, g, p in zip(names, grads, params, strict=True)}
        if round_ < rounds:
            keep = kept_count(density ** (round_ / rounds), total)
            top = global_top_masks(scores, keep)
            masks = [top[n].to(inp.device) for n in names]
    return scores


@register_scorer("magnitude", needs_data=False)
def magnitude(inp: ScoringInput) -> Scores:
    """Magnitude at initialization: ``|w|``."""
    return {n: w.detach().abs() for n, w in inp.weights.items()}

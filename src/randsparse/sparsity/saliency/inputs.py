"""What scorers work on: `ScoringInput` (model copy, weights, data) and the data and model helpers they share.

Examples and batches are drawn without the global RNG: a dataset is read in an order drawn from
the scorer's own generator, batches are used in their order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, default_collate

from randsparse.errors import ConfigError, is_integer
from randsparse.sparsity.masks import seed_from

logger = logging.getLogger("randsparse.sparsity.saliency")

Scores = dict[str, torch.Tensor]

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


def check_count(value: Any, name: str) -> int:
    """`value` if it is a positive integer, else a `ConfigError` naming `name`."""
    if not is_integer(value) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


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
    check_count(batch_size, "batch_size")
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


def dataset_classes(data: Any) -> int | None:
    """Number of classes a dataset declares: torchvision's ``classes`` or randsparse's ``info.num_classes``."""
    if not _is_dataset(data):
        return None
    classes = getattr(data, "classes", None)
    if classes is not None:
        return len(classes)
    return getattr(getattr(data, "info", None), "num_classes", None)


def first_input_shape(data: Any) -> tuple[int, ...]:
    """Shape of one input of `data` (without the batch dimension); `ConfigError` when it is empty."""
    if _is_dataset(data):
        if len(data) == 0:
            raise ConfigError("the dataset is empty")
        return tuple(_pair(default_collate(_items(data, [0])))[0].shape[1:])
    for inputs, _ in iter_batches(data, 1, torch.Generator()):
        return tuple(inputs.shape[1:])
    raise ConfigError("the data holds no batch")


def balanced(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `per_class` examples of each class from `batches`, in their order (see `balanced_sample`)."""
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
    check_count(num_classes, "num_classes")
    check_count(per_class, "samples per class")
    generator = torch.Generator().manual_seed(seed_from(seed))
    return balanced(iter_batches(data, batch_size, generator), num_classes, per_class)


def batch_statistics_mode(model: nn.Module) -> None:
    """Evaluation mode (no dropout, no stochastic depth: nothing random), except batch norm on batch statistics."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()


def logits(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """`model(inputs)`, checked to be (batch, classes) logits covering every label in `labels`."""
    out = model(inputs)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"saliency scores need a model returning (batch, classes) logits, got {shape}")
    if labels is not None and labels.numel() and int(labels.max()) >= out.shape[1]:
        raise ConfigError(f"label {int(labels.max())} lies outside the model's {out.shape[1]} outputs")
    return out


def to_device(inp: ScoringInput, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs `x` on the weights' device and dtype, labels `y` on their device."""
    return x.to(inp.device, inp.dtype), y.to(inp.device)


def weight_grads(
    loss: torch.Tensor, weights: Sequence[torch.Tensor], create_graph: bool = False
) -> tuple[torch.Tensor, ...]:
    """d`loss`/d`weights` (zeros for weights the loss does not reach), without touching ``.grad``."""
    return torch.autograd.grad(loss, weights, create_graph=create_graph, materialize_grads=True)

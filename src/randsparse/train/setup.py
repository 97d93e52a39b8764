"""From a `TrainConfig` to the objects a run trains: device, datasets, model, masks, batch order.

Each step is a plain function, so a notebook, the evaluation and the export build exactly what
training built.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from randsparse import data as datasets
from randsparse.data import EpochBatchSampler, EpochSampler
from randsparse.errors import ConfigError, first_line
from randsparse.evaluate.complexity import count_flops
from randsparse.models import ModelSpec
from randsparse.sparsity import MaskSet, PrunableSelector, load_custom_densities, plan_sparsity
from randsparse.sparsity.saliency import ratio_method
from randsparse.train.config import DataConfig, ModelConfig, SparsityConfig, TrainConfig
from randsparse.train.saved_masks import masks_of_file, masks_of_run

if TYPE_CHECKING:
    from randsparse.train.distributed import Distributed

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; a CUDA device that is absent is a `ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"not a device: {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} asked for, but MPS is not available here; use device=cpu or auto")
    return device


def configure_determinism(enabled: bool) -> None:
    """Deterministic kernels (bit-exact reruns) or the fastest ones."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and torch.cuda.is_available()


@dataclass
class Datasets:
    """Train, validation (None when `val_fraction` is 0) and test sets, and what they look like."""

    info: datasets.DatasetInfo
    train: Dataset
    val: Dataset | None
    test: Dataset


def _train_split(config: DataConfig, augment: bool) -> Dataset:
    return datasets.build(
        config.name,
        split="train",
        augment=augment,
        subset=config.subset,
        val_fraction=config.val_fraction,
        split_seed=config.split_seed,
        root=config.root,
        download=config.download,
        **config.options,
    )


def build_datasets(config: DataConfig) -> Datasets:
    """The run's datasets from its `data` section (a `DataConfig`)."""
    common = {"root": config.root, "download": config.download, **config.options}
    info = datasets.dataset_info(config.name, root=config.root, **config.options)
    split = {"val_fraction": config.val_fraction, "split_seed": config.split_seed}
    train = _train_split(config, config.augment)
    val = datasets.build(config.name, split="val", augment=False, **split, **common) if config.val_fraction else None
    test = datasets.build(config.name, split="test", augment=False, **common)
    if len(train) == 0:
        raise ConfigError(f"the training set of {config.name!r} is empty")
    return Datasets(info, train, val, test)


def score_dataset(config: DataConfig) -> Dataset:
    """The training images without augmentation: what saliency scores are taken on."""
    return _train_split(config, augment=False)


def build_model(config: ModelConfig, info: datasets.DatasetInfo) -> nn.Module:
    """The model of a `ModelConfig`, shaped for the dataset described by `info`."""
    return ModelSpec.from_config(config, info).build()


def check_model_input(model: nn.Module, input_shape: tuple[int, ...], name: str) -> None:
    """Refuse, before anything is written, a model that cannot take the data's inputs.

    One forward pass of shapes only (e.g. a VGG's four poolings need inputs of at least 16x16).
    """
    try:
        count_flops(model, input_shape)
    except RuntimeError as exc:
        reason = first_line(exc)
        raise ConfigError(
            f"model {name!r} cannot take this dataset's inputs of shape {tuple(input_shape)}: {reason}"
        ) from None


def draw_masks(
    config: SparsityConfig,
    model: nn.Module,
    seed: int,
    score_data: Dataset | None = None,
    input_shape: tuple | None = None,
) -> MaskSet | None:
    """Masks of a `SparsityConfig` for `model`; None for a dense run.

    A saved draw (`masks_file`, `masks_from_run`) is read and checked against `model` instead
    (`randsparse.train.saved_masks`; `MaskMismatchError` when it does not fit).

    Score-based rules (``snip_ratio`` ..., or ``prune:``) score a copy of `model` on `score_data`
    (the training set without augmentation) or, data-free, on `input_shape`.
    """
    if config.masks_file is not None or config.masks_from_run is not None:
        if config.masks_file is not None:
            return masks_of_file(config.masks_file, model)
        return masks_of_run(config.masks_from_run, model)
    if config.sparsity == 0.0:
        return None
    options = dict(config.options)
    if config.custom_file is not None:
        if "densities" in options:
            raise ConfigError("give the custom densities either in sparsity.options.densities or custom_file")
        options["densities"] = load_custom_densities(config.custom_file)
    selector = PrunableSelector(include=config.include, exclude=config.exclude, embeddings=config.prune_embeddings)
    plan = plan_sparsity(
        model,
        config.sparsity,
        config.distribution,
        seed,
        config.sampling,
        selector,
        mask_mode="scores" if config.prune else "random",
        data=score_data,
        input_shape=input_shape,
        score_options=config.score_options or None,
        **options,
    )
    return plan.masks


def needs_scores(config: SparsityConfig) -> bool:
    """True when a `SparsityConfig`'s masks come from saliency scores (and so may need data)."""
    return config.sparsity > 0 and ratio_method(config.distribution) is not None


def draw_masks_on_main(
    config: TrainConfig, model: nn.Module, input_shape: tuple[int, ...], dist: Distributed
) -> MaskSet | None:
    """The run's masks, drawn (or scored) once on rank 0 and sent, bit-packed, to every rank."""

    def draw() -> dict[str, Any] | None:
        score_data = None
        if needs_scores(config.sparsity):  # saliency scores are taken on un-augmented training images
            score_data = score_dataset(config.data)
        masks = draw_masks(config.sparsity, model, config.mask_seed, score_data, input_shape)
        return masks.state_dict() if masks is not None else None

    packed = dist.from_main(draw, "drawing the masks")
    return MaskSet.from_state_dict(packed) if packed is not None else None


def train_batches(config: TrainConfig, size: int, dist: Distributed) -> EpochBatchSampler:
    """This process's batch sampler; several processes take full global batches only.

    With `optim.accumulate_steps` k, each batch holds k micro-batches (`accumulation.micro_batches`).
    """
    batch = config.data.batch_size * config.optim.accumulate_steps
    if dist.active:
        if size < config.global_batch_size:
            raise ConfigError(
                f"the training set ({size} examples) is smaller than one global batch ({dist.world_size} processes"
                f" x data.batch_size {config.data.batch_size} x optim.accumulate_steps"
                f" {config.optim.accumulate_steps}); use fewer processes or a smaller data.batch_size"
            )
        drop_last = True
    else:
        drop_last = size >= 2 * batch  # full batches (BatchNorm), unless the set is tiny
    order = EpochSampler(size, config.seed)
    return EpochBatchSampler(order, batch, drop_last=drop_last, rank=dist.rank, world_size=dist.world_size)

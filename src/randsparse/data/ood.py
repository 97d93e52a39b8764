"""Out-of-distribution sets: the named OOD partners of each dataset, and the Gaussian / uniform noise sets.

An OOD set is fed to a model trained on dataset X by building it with `like=X`: it then has X's
channels, image size and normalisation. Noise sets take that shape from `like` and are generated
from a seed (labels are -1: they belong to no class).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from randsparse.data.registry import (
    Augmentation,
    DatasetInfo,
    ImageData,
    ImageTensor,
    Recipe,
    SourceSplit,
    get_entry,
    register_dataset,
)
from randsparse.errors import ConfigError, is_integer
from randsparse.seeding import seeded_generator

# The paper's OOD evaluation pairs (in-distribution -> OOD sets); any registered dataset may also be named.
OOD_PAIRS: dict[str, tuple[str, ...]] = {
    "cifar10": ("svhn", "cifar100"),
    "cifar100": ("svhn", "cifar10"),
    "fashion_mnist": ("mnist", "digits", "gaussian", "uniform"),
}

NOISE_LABEL = -1


def ood_sets(name: str) -> list[str]:
    """The named OOD partners of dataset `name` (empty when it has none; any dataset can still be used by name)."""
    get_entry(name)
    return list(OOD_PAIRS.get(name, ()))


def build_ood(
    in_distribution: str | DatasetInfo,
    ood_name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    normalize: bool = True,
    subset: int | None = None,
    **options: object,
) -> Dataset:
    """The test split of `ood_name`, unaugmented, looking like `in_distribution` (channels, size, normalisation)."""
    from randsparse.data.build import build

    return build(
        ood_name, root, "test", download, augment=False, normalize=normalize, subset=subset, like=in_distribution,
        **options,
    )  # fmt: skip


def _noise_recipe(name: str, like: DatasetInfo | None, size: int | None, seed: int, draw) -> Recipe:
    if like is None:
        raise ConfigError(f"dataset {name!r} needs like=<dataset> (the set whose shape and normalisation it imitates)")
    if size is None:
        size = like.test_size or 10000
    if not is_integer(size) or size < 1:
        raise ConfigError(f"{name}: size must be a positive integer, got {size!r}")
    if not is_integer(seed) or seed < 0:
        raise ConfigError(f"{name}: seed must be a non-negative integer, got {seed!r}")
    shape = like.shape

    def read(directory: Path | None, split: SourceSplit) -> ImageData:
        generator = seeded_generator(seed, f"{name} {split}")
        pixels = draw((size, *shape), generator)
        return ImageTensor(pixels, torch.full((size,), NOISE_LABEL, dtype=torch.int64))

    info = DatasetInfo(name, 0, like.channels, like.image_size, like.mean, like.std, size, size)
    return Recipe(info, read, Augmentation())


@register_dataset("gaussian", origin="generated")
def gaussian(
    like: DatasetInfo | None = None, size: int | None = None, seed: int = 0, mean: float = 0.5, std: float = 0.25
) -> Recipe:
    """Gaussian noise pixels N(mean, std) clipped to [0, 1], shaped like another dataset (OOD set)."""

    def draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        x = torch.randn(shape, generator=generator).mul_(std).add_(mean)
        return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    if not std >= 0:
        raise ConfigError(f"gaussian: std must be non-negative, got {std!r}")
    return _noise_recipe("gaussian", like, size, seed, draw)


@register_dataset("uniform", origin="generated")
def uniform(like: DatasetInfo | None = None, size: int | None = None, seed: int = 0) -> Recipe:
    """Uniform noise pixels in [0, 1] (all 256 levels equally likely), shaped like another dataset (OOD set)."""

    def draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)

    return _noise_recipe("uniform", like, size, seed, draw)

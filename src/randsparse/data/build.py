"""`build` and `dataset_info`: a registered dataset, located, split, subset, augmented and normalised.

The validation split is carved from the official training set by a permutation seeded with
`split_seed` alone, so "train" and "val" are disjoint, together cover the training set, and do not
change with `subset`, `augment` or `like`; the test set is only ever the official test set.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from randsparse.data.datasets import FileImageDataset, TensorImageDataset
from randsparse.data.lookup import find_directory
from randsparse.data.registry import DatasetEntry, DatasetInfo, ImageTensor, Recipe, get_entry
from randsparse.data.transforms import look_like
from randsparse.errors import ConfigError, is_integer, is_real
from randsparse.seeding import seeded_generator

SPLITS = ("train", "val", "test")


def _resolve_like(like: str | DatasetInfo | None) -> DatasetInfo | None:
    if like is None or isinstance(like, DatasetInfo):
        return like
    if isinstance(like, str):
        return dataset_info(like)
    raise ConfigError(f"like must be a dataset name or a DatasetInfo, got {type(like).__name__}")


def _recipe(
    entry: DatasetEntry,
    root: str | os.PathLike[str] | None,
    download: bool,
    like: DatasetInfo | None,
    options: dict[str, Any],
) -> tuple[Recipe, Any]:
    """The entry's recipe for `options`, and the folder holding its files (None for bundled/generated sets)."""
    directory = find_directory(entry.name, root, download) if entry.origin == "files" else None
    if entry.origin == "plugin" and root is not None:  # a plugin finds its own files under root
        directory = Path(root).expanduser()
    options = dict(options)
    for reserved in ("directory", "like"):
        if reserved in options:
            raise ConfigError(
                f"{reserved!r} is not a dataset option; pass {'root' if reserved == 'directory' else 'like'}="
            )
    if entry.takes("directory"):
        options["directory"] = directory
    if entry.takes("like"):
        options["like"] = like
    return entry.recipe(**options), directory


def dataset_info(name: str, root: str | os.PathLike[str] | None = None, **options: Any) -> DatasetInfo:
    """What `build(name, **options)` items look like: classes, channels, size, normalisation, split sizes.

    Needs no files, except for `image_folder`, whose classes are counted in `root`/train. Noise sets
    (`gaussian`, `uniform`) need `like=` (a name or a `DatasetInfo`).
    """
    entry = get_entry(name)
    like = _resolve_like(options.pop("like", None))
    if entry.takes("directory"):
        return _recipe(entry, root, False, like, options)[0].info
    return entry.recipe(**options, **({"like": like} if entry.takes("like") else {})).info


def _check_args(split: str, val_fraction: float, split_seed: int, subset: int | None) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not is_real(val_fraction) or not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    if not is_integer(split_seed) or split_seed < 0:
        raise ConfigError(f"split_seed must be a non-negative integer, got {split_seed!r}")
    if subset is not None and (not is_integer(subset) or subset < 1):
        raise ConfigError(f"subset must be a positive integer, got {subset!r}")


def split_indices(size: int, split: str, val_fraction: float, split_seed: int) -> torch.Tensor:
    """Sorted indices into the official training set (`size` examples) that form `split` ("train" or "val").

    The first `round(val_fraction * size)` positions of a permutation seeded by `split_seed` are
    the validation set, the rest the training set.
    """
    n_val = round(val_fraction * size)
    order = torch.randperm(size, generator=seeded_generator(split_seed, "validation split"))
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return chosen.sort().values


def _select(size: int, split: str, val_fraction: float, split_seed: int, subset: int | None, name: str) -> torch.Tensor:
    index = torch.arange(size) if split == "test" else split_indices(size, split, val_fraction, split_seed)
    if len(index) == 0:
        hint = " (val_fraction is 0)" if split == "val" and val_fraction == 0 else ""
        raise ConfigError(f"the {split} split of {name!r} is empty{hint}")
    if subset is not None:
        if subset > len(index):
            raise ConfigError(f"subset={subset} is larger than the {split} split of {name!r} ({len(index)} examples)")
        pick = torch.randperm(len(index), generator=seeded_generator(split_seed, f"subset {split}"))[:subset]
        index = index[pick.sort().values]
    return index


def build(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    download: bool = False,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    augment: bool | None = None,
    normalize: bool = True,
    subset: int | None = None,
    like: str | DatasetInfo | None = None,
    **options: Any,
) -> TensorImageDataset | FileImageDataset:
    """Dataset `name`'s `split` ("train" = training set minus the validation part, "val", "test").

    Items are (float32 C×H×W, int label). `augment` None augments "train" only; `normalize=False`
    returns pixels in [0, 1] (the statistics stay in `.info.mean`/`.info.std`); `subset=N` keeps N
    examples drawn with `split_seed`; `like` (a name or `DatasetInfo`) converts the images to that
    dataset's channels and size and normalises them with its statistics (how OOD sets are fed to a
    model). `options` go to the dataset (e.g. `crop_padding`, `image_size`, `train_size`). The
    returned dataset has `.info` (what its items look like) and `.labels` (int64).
    """
    entry = get_entry(name)
    _check_args(split, val_fraction, split_seed, subset)
    target = _resolve_like(like)
    recipe, directory = _recipe(entry, root, download, target, options)
    data = recipe.read(directory, "test" if split == "test" else "train")
    info = recipe.info
    if target is not None:
        info = dataclasses.replace(
            info, channels=target.channels, image_size=target.image_size, mean=target.mean, std=target.std
        )
    index = _select(len(data.labels), split, val_fraction, split_seed, subset, name)
    augmentation = recipe.augmentation if (split == "train" if augment is None else augment) else None
    mean, std = (info.mean, info.std) if normalize else (None, None)
    seed = seeded_generator(split_seed, f"augmentation {split}").initial_seed()
    if isinstance(data, ImageTensor):
        images = data.images[index]
        if target is not None:
            images = look_like(images, target.channels, target.image_size)
        return TensorImageDataset(
            images, data.labels[index], info, augmentation=augmentation, mean=mean, std=std, seed=seed
        )
    source = recipe.info
    return FileImageDataset(
        [data.paths[i] for i in index.tolist()],
        data.labels[index],
        info,
        train_view=augmentation is not None,
        hflip=recipe.augmentation.hflip,
        image_size=source.image_size,
        resize=recipe.resize or source.image_size,
        channels=source.channels,
        look=(target.channels, target.image_size) if target is not None else None,
        mean=mean,
        std=std,
        seed=seed,
    )


def carve_sizes(size: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) sizes `build` gives a training set of `size` examples."""
    n_val = round(val_fraction * size)
    return size - n_val, n_val

"""The dataset registry: what each dataset is (`DatasetInfo`), how to read it (`Recipe`), where it lives.

A dataset is registered by decorating a *factory*: a function of the dataset's options (keyword
arguments with defaults) returning a `Recipe`. Facts that do not depend on the options (the folder
names it is stored under, the files that must be there, the Debian package and the torchvision
downloader that provide it) go to the decorator, so `locate` can look for a dataset without
knowing any option.

A dataset of the user's own needs no registration (resolved by `get_entry` on first use):

- ``data.name: "package.module:factory"``, an import path to a factory as above: a function of
  keyword options (from ``data.options``) returning a `Recipe`. If it takes a ``directory``
  parameter it gets ``data.root`` / ``--data-dir`` as a `Path` (None when not given), and a
  ``like`` parameter the `DatasetInfo` to look like (see `build`); no lookup is made for it;
- a name an installed package registers under the entry-point group ``randsparse.data``
  (`ENTRY_POINT_GROUP`): the entry point's object is such a factory, or a module that registers
  the name itself with `register_dataset` when imported (then with its own lookup facts).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from randsparse.errors import ConfigError, PluginError, UnknownNameError, is_integer
from randsparse.plugins import entry_point_names, is_import_path, load_entry_point, load_import_path
from randsparse.registry import Registry

# "plugin": a factory given by import path or entry point; it finds its own data (root is passed on).
Origin = Literal["files", "bundled", "generated", "plugin"]
SourceSplit = Literal["train", "test"]


@dataclass(frozen=True)
class DatasetInfo:
    """What the items of a dataset look like once `build` returns them.

    `image_size` is H == W of the returned images; `mean`/`std` (one value per channel, on pixels
    scaled to [0, 1]) are the normalisation `build(normalize=True)` applies. `train_size` and
    `test_size` count the official training set (before the validation split is carved from it)
    and the test set, when known without reading the files.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int | None = None
    test_size: int | None = None

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"dataset {self.name!r}: mean {self.mean} and std {self.std} need one value per channel"
                f" ({self.channels})"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"dataset {self.name!r}: std must be positive, got {self.std}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one item."""
        return (self.channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class Augmentation:
    """The random training-time transforms of a dataset (applied when `build(augment=True)`).

    In-memory sets: a random crop of the image padded by `crop_padding` pixels on each side
    (`padding_mode` "zeros" or "reflect") and a horizontal flip with probability 1/2 if `hflip`.
    Image-folder sets always take a random resized crop when augmenting, plus the flip if `hflip`.
    """

    crop_padding: int = 0
    padding_mode: Literal["zeros", "reflect"] = "zeros"
    hflip: bool = False

    def __post_init__(self) -> None:
        if not is_integer(self.crop_padding) or self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be a non-negative integer, got {self.crop_padding!r}")
        if self.padding_mode not in ("zeros", "reflect"):
            raise ConfigError(f"padding_mode must be 'zeros' or 'reflect', got {self.padding_mode!r}")

    @property
    def is_identity(self) -> bool:
        """True when the augmentation changes nothing (no crop, no flip)."""
        return self.crop_padding == 0 and not self.hflip


@dataclass(frozen=True)
class ImageTensor:
    """A split held in memory: `images` uint8 N×C×H×W, `labels` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class ImageFiles:
    """A split kept on disk: one image file per example, decoded when the item is read."""

    paths: tuple[str, ...]
    labels: torch.Tensor
    classes: tuple[str, ...]


ImageData = ImageTensor | ImageFiles
Reader = Callable[[Path | None, SourceSplit], ImageData]


@dataclass(frozen=True)
class Recipe:
    """A dataset with its options fixed: its info, how to read a split, how to augment it.

    `read(directory, split)` gets the dataset's located directory (None for bundled or generated
    sets) and "train" or "test". `resize` is for image-folder sets: the shorter side an evaluation
    image is resized to before the centre crop of `info.image_size`.
    """

    info: DatasetInfo
    read: Reader
    augmentation: Augmentation = field(default_factory=Augmentation)
    resize: int | None = None


Factory = Callable[..., Recipe]
Downloader = Callable[[Path], None]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its factory and the option-independent facts about where it lives."""

    name: str
    factory: Factory
    origin: Origin
    dirnames: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]
    package: str | None
    download: Downloader | None
    how_to_get: str
    bundled_path: Callable[[], Path] | None = None

    @property
    def description(self) -> str:
        """First line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def options(self) -> list[str]:
        """Names of the options the factory takes (`directory` and `like` are filled in by `build`)."""
        return [p for p in inspect.signature(self.factory).parameters if p not in ("directory", "like")]

    def takes(self, parameter: str) -> bool:
        """Whether the factory has a parameter of that name."""
        return parameter in inspect.signature(self.factory).parameters

    def recipe(self, **options: Any) -> Recipe:
        """Call the factory, turning an option it does not take into a `ConfigError` naming those it does."""
        unknown = sorted(set(options) - set(inspect.signature(self.factory).parameters))
        if unknown:
            raise ConfigError(
                f"dataset {self.name!r} does not take option(s) {', '.join(unknown)}"
                f" (it takes: {', '.join(self.options) or 'no options'})"
            )
        return self.factory(**options)


# Installed packages register dataset factories under this entry-point group, named after the
# package whose registry it extends (as ``randsparse.models`` is for models).
ENTRY_POINT_GROUP = "randsparse.data"


def _resolve(name: str) -> DatasetEntry | None:
    """The entry of a dataset that was never registered: an import path or an entry point."""
    if is_import_path(name):
        return _plugin_entry(name, load_import_path("dataset", name))
    found = load_entry_point("dataset", ENTRY_POINT_GROUP, name)
    if found is None:
        error = UnknownNameError("dataset", name, available_datasets())
        error.args = (f"{error}; or an import path <package.module:factory>",)
        raise error
    if name in _ENTRIES:  # the plugin's module registered the name itself when imported
        return _ENTRIES[name]
    return _plugin_entry(name, found)


def _plugin_entry(name: str, factory: object) -> DatasetEntry:
    if not callable(factory):
        raise PluginError(f"dataset plugin {name!r} is a {type(factory).__name__}, not a factory of options -> Recipe")

    def checked(**options: Any) -> Recipe:
        recipe = factory(**options)
        if not isinstance(recipe, Recipe):
            raise PluginError(f"dataset plugin {name!r} returned a {type(recipe).__name__}, not a randsparse Recipe")
        return recipe

    checked.__signature__ = inspect.signature(factory)  # type: ignore[attr-defined]
    checked.__doc__ = inspect.getdoc(factory)
    return DatasetEntry(name, checked, "plugin", (), (), None, None, "")


_ENTRIES: Registry[DatasetEntry] = Registry("dataset", _resolve)


def register_dataset(
    name: str,
    *,
    origin: Origin = "files",
    dirnames: tuple[str, ...] = (),
    files: tuple[str | tuple[str, ...], ...] = (),
    package: str | None = None,
    download: Downloader | None = None,
    how_to_get: str = "",
    bundled_path: Callable[[], Path] | None = None,
) -> Callable[[Factory], Factory]:
    """Decorator adding a dataset factory to the registry under `name`.

    `dirnames`: folder names (relative, may contain '/') the dataset is stored under inside a data
    directory; `files`: paths that must exist inside the dataset's folder, each given as one name or
    a tuple of accepted spellings (e.g. with and without '.gz'); `package`: the Debian package that
    installs it under /usr/share/datasets; `download(base)`: fetches it into `base` so it lands in
    one of `dirnames`; `how_to_get`: what to tell a user when neither exists; `bundled_path()`: for
    data shipped inside an installed package, the file it is read from (shown by `data list`).
    """

    def decorate(factory: Factory) -> Factory:
        required = tuple((f,) if isinstance(f, str) else tuple(f) for f in files)
        _ENTRIES.add(
            name,
            DatasetEntry(name, factory, origin, tuple(dirnames), required, package, download, how_to_get, bundled_path),
        )
        return factory

    return decorate


def available_datasets() -> list[str]:
    """Names of every registered dataset and of those installed packages register (entry points), sorted."""
    return sorted({*_ENTRIES.names(), *entry_point_names(ENTRY_POINT_GROUP)})


def get_entry(name: str) -> DatasetEntry:
    """The entry of `name` (registered, an entry point, or an import path ``package.module:factory``).

    Raises `UnknownNameError` listing the known datasets, or `PluginError` when a plugin cannot be
    imported or is not a factory.
    """
    return _ENTRIES[name]

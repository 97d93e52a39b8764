"""The registered datasets: MNIST family (IDX), CIFAR-10/100, SVHN, ImageNet and any image folder, digits, synthetic.

Normalisation constants follow the paper's code (Liu et al., 2022, after Dettmers' sparselearning):
CIFAR-10 uses its customary (0.2023, 0.1994, 0.2010) std and reflection padding, CIFAR-100 its
per-channel statistics and zero padding. `digits` and `synthetic` compute theirs from their
training split, so they are exact for whatever options are chosen.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from randsparse.data.formats import (
    folder_classes,
    read_cifar_batches,
    read_idx_pair,
    read_image_folder,
    read_svhn_mat,
)
from randsparse.data.lookup import find_file
from randsparse.data.registry import (
    Augmentation,
    DatasetInfo,
    Downloader,
    ImageData,
    ImageTensor,
    Reader,
    Recipe,
    SourceSplit,
    register_dataset,
)
from randsparse.data.transforms import resize_square
from randsparse.errors import ConfigError, FileFormatError, is_integer, is_real
from randsparse.seeding import seeded_generator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _torchvision_download(class_name: str, subdir: str | None = None, splits: tuple[str, ...] = ()) -> Downloader:
    """A downloader calling `torchvision.datasets.<class_name>(root, download=True)` (per split if given)."""

    def download(base: Path) -> None:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, class_name)
        root = base / subdir if subdir else base
        if splits:
            for split in splits:
                dataset_class(root=str(root), split=split, download=True)
        else:
            for train in (True, False):
                dataset_class(root=str(root), train=train, download=True)

    return download


# ---------------------------------------------------------------------------------------------- IDX


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _spellings(stem: str) -> tuple[str, ...]:
    dotted = stem.replace("-idx", ".idx")  # some mirrors write train-images.idx3-ubyte
    return (f"{stem}.gz", stem, f"{dotted}.gz", dotted)


_IDX_REQUIRED = tuple(_spellings(stem) for pair in _IDX_FILES.values() for stem in pair)


def _read_idx_split(directory: Path | None, split: SourceSplit) -> ImageData:
    assert directory is not None
    images_stem, labels_stem = _IDX_FILES[split]
    images = find_file(directory, _spellings(images_stem))
    labels = find_file(directory, _spellings(labels_stem))
    if images is None or labels is None:
        raise FileFormatError(f"{directory} lacks {images_stem} or {labels_stem} (.gz or not)")
    return read_idx_pair(images, labels)


def _mnist_like(name: str, mean: float, std: float, crop_padding: int, hflip: bool) -> Recipe:
    info = DatasetInfo(name, 10, 1, 28, (mean,), (std,), 60000, 10000)
    return Recipe(info, _read_idx_split, Augmentation(crop_padding, "zeros", hflip))


@register_dataset(
    "fashion_mnist",
    dirnames=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    files=_IDX_REQUIRED,
    package="dataset-fashion-mnist",
    download=_torchvision_download("FashionMNIST"),
)
def fashion_mnist(crop_padding: int = 0, hflip: bool = False) -> Recipe:
    """Fashion-MNIST: 28×28 gray clothing images, 10 classes (IDX files); crop/flip optional."""
    return _mnist_like("fashion_mnist", 0.2860, 0.3530, crop_padding, hflip)


@register_dataset(
    "mnist",
    dirnames=("mnist", "MNIST/raw"),
    files=_IDX_REQUIRED,
    download=_torchvision_download("MNIST"),
)
def mnist(crop_padding: int = 0, hflip: bool = False) -> Recipe:
    """MNIST: 28×28 gray handwritten digits, 10 classes (IDX files)."""
    return _mnist_like("mnist", 0.1307, 0.3081, crop_padding, hflip)


# -------------------------------------------------------------------------------------------- CIFAR


def _cifar_reader(train_files: tuple[str, ...], test_files: tuple[str, ...], label_key: str) -> Reader:
    def read(directory: Path | None, split: SourceSplit) -> ImageData:
        assert directory is not None
        names = train_files if split == "train" else test_files
        return read_cifar_batches([directory / n for n in names], label_key)

    return read


_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


@register_dataset(
    "cifar10",
    dirnames=("cifar-10-batches-py", "cifar10", "cifar-10"),
    files=(*_CIFAR10_TRAIN, "test_batch"),
    download=_torchvision_download("CIFAR10"),
)
def cifar10(crop_padding: int = 4, padding_mode: str = "reflect", hflip: bool = True) -> Recipe:
    """CIFAR-10: 32×32 RGB, 10 classes (python pickle batches); pad-4 random crop and flip."""
    info = DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 50000, 10000)
    reader = _cifar_reader(_CIFAR10_TRAIN, ("test_batch",), "labels")
    return Recipe(info, reader, Augmentation(crop_padding, padding_mode, hflip))  # type: ignore[arg-type]


@register_dataset(
    "cifar100",
    dirnames=("cifar-100-python", "cifar100", "cifar-100"),
    files=("train", "test"),
    download=_torchvision_download("CIFAR100"),
)
def cifar100(crop_padding: int = 4, padding_mode: str = "zeros", hflip: bool = True) -> Recipe:
    """CIFAR-100: 32×32 RGB, 100 fine classes (python pickle files); pad-4 random crop and flip."""
    info = DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 50000, 10000)
    reader = _cifar_reader(("train",), ("test",), "fine_labels")
    return Recipe(info, reader, Augmentation(crop_padding, padding_mode, hflip))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- SVHN


@register_dataset(
    "svhn",
    dirnames=("svhn", "SVHN"),
    files=("train_32x32.mat", "test_32x32.mat"),
    download=_torchvision_download("SVHN", subdir="svhn", splits=("train", "test")),
)
def svhn(extra: bool = False, crop_padding: int = 0, hflip: bool = False) -> Recipe:
    """SVHN cropped digits: 32×32 RGB, 10 classes (.mat files); `extra=True` adds extra_32x32.mat to train."""

    def read(directory: Path | None, split: SourceSplit) -> ImageData:
        assert directory is not None
        if split == "test":
            return read_svhn_mat(directory / "test_32x32.mat")
        parts = [read_svhn_mat(directory / "train_32x32.mat")]
        if extra:
            parts.append(read_svhn_mat(directory / "extra_32x32.mat"))
        return ImageTensor(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))

    info = DatasetInfo(
        "svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), None if extra else 73257, 26032
    )
    return Recipe(info, read, Augmentation(crop_padding, "zeros", hflip))


# ------------------------------------------------------------------------------------- image folders


def _folder_reader(directory: Path | None, split: SourceSplit) -> ImageData:
    assert directory is not None
    classes = folder_classes(directory / "train")
    folder = directory / ("train" if split == "train" else "val")
    if split == "test" and not any(p.is_dir() for p in folder.iterdir()):
        raise FileFormatError(f"{folder} must hold one folder per class, like train/ (e.g. ImageNet's valprep layout)")
    return read_image_folder(folder, classes)


def _folder_sizes(image_size: int, resize: int | None) -> int:
    _positive_int("image_size", image_size)
    resize = image_size if resize is None else _positive_int("resize", resize)
    if resize < image_size:
        raise ConfigError(f"resize ({resize}) must be at least image_size ({image_size}) for the centre crop")
    return resize


@register_dataset(
    "imagenet",
    dirnames=("imagenet", "ILSVRC2012", "imagenet-1k"),
    files=("train", "val"),
    how_to_get="download ILSVRC2012 from image-net.org and lay it out as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
)
def imagenet(image_size: int = 224, resize: int = 256, hflip: bool = True) -> Recipe:
    """ImageNet-1k from train/ and val/ class folders; RandomResizedCrop 224 / Resize 256 + CenterCrop 224."""
    resize = _folder_sizes(image_size, resize)
    info = DatasetInfo("imagenet", 1000, 3, image_size, IMAGENET_MEAN, IMAGENET_STD, None, None)
    return Recipe(info, _folder_reader, Augmentation(0, "zeros", hflip), resize=resize)


@register_dataset(
    "image_folder",
    files=("train", "val"),
    how_to_get="pass root=/--data-dir DIR, a folder holding train/<class>/<image> and val/<class>/<image>",
)
def image_folder(
    directory: Path | None = None,
    image_size: int = 224,
    resize: int | None = 256,
    hflip: bool = True,
    channels: int = 3,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Recipe:
    """Any train/ + val/ folder of class sub-folders of images; ImageNet transforms and statistics by default."""
    resize = _folder_sizes(image_size, resize)
    if channels not in (1, 3):
        raise ConfigError(f"image_folder channels must be 1 or 3, got {channels!r}")
    mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if channels == 3 else (0.5,))
    std = tuple(std) if std is not None else (IMAGENET_STD if channels == 3 else (0.25,))
    num_classes = len(folder_classes(directory / "train")) if directory is not None else 0
    info = DatasetInfo("image_folder", num_classes, channels, image_size, mean, std, None, None)
    return Recipe(info, _folder_reader, Augmentation(0, "zeros", hflip), resize=resize)


# ------------------------------------------------------------------------------------------- digits


_DIGITS_TEST_FRACTION = 0.2  # digits has no official split: a fixed seeded 20 % is its test set


@functools.lru_cache(maxsize=4)
def _digits_splits(image_size: int) -> dict[str, ImageTensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(np.asarray(bunch.images) * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    images = resize_square(torch.from_numpy(pixels).unsqueeze(1), image_size)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    order = torch.randperm(len(labels), generator=seeded_generator(0, "digits test split"))
    n_test = round(_DIGITS_TEST_FRACTION * len(labels))
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    return {
        "train": ImageTensor(images[train], labels[train]),
        "test": ImageTensor(images[test], labels[test]),
    }


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N×C×H×W images, on the [0, 1] scale."""
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255
    std = x.std(dim=1).clamp_min(1e-3)
    return tuple(x.mean(dim=1).tolist()), tuple(std.tolist())


def _digits_path() -> Path:
    from sklearn import datasets

    return Path(datasets.__file__).parent / "data" / "digits.csv.gz"


@register_dataset("digits", origin="bundled", bundled_path=_digits_path)
def digits(image_size: int = 8, crop_padding: int = 0, hflip: bool = False) -> Recipe:
    """scikit-learn's bundled 8×8 handwritten digits (1797), 10 classes; image_size=28 resizes them."""
    _positive_int("image_size", image_size)
    splits = _digits_splits(image_size)
    mean, std = _channel_stats(splits["train"].images)
    info = DatasetInfo("digits", 10, 1, image_size, mean, std, len(splits["train"].labels), len(splits["test"].labels))
    return Recipe(info, lambda directory, split: splits[split], Augmentation(crop_padding, "zeros", hflip))


# ---------------------------------------------------------------------------------------- synthetic


@functools.lru_cache(maxsize=4)
def _synthetic_split(
    split: str, num_classes: int, channels: int, image_size: int, size: int, seed: int, noise: float
) -> ImageTensor:
    """Smooth images: a class prototype plus `noise` times as strong a random pattern, both on a coarse grid.

    Prototypes are shared by every split (same seed); the per-example noise lives on the same coarse
    grid as the signal, so it cannot be averaged away pixel by pixel and `noise` sets how hard the
    task is. A little pixel grain is added after upsampling.
    """
    coarse = max(2, math.ceil(image_size / 4))
    g = seeded_generator(seed, "synthetic prototypes")
    prototypes = torch.randn(num_classes, channels, coarse, coarse, generator=g, dtype=torch.float64)
    g = seeded_generator(seed, f"synthetic {split}")
    labels = (torch.arange(size) % num_classes)[torch.randperm(size, generator=g)]
    x = prototypes[labels] + noise * torch.randn(size, channels, coarse, coarse, generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x / math.sqrt(1 + noise**2) + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    pixels = (0.5 + 0.15 * x).clamp(0, 1).mul(255).round().to(torch.uint8)
    return ImageTensor(pixels, labels)


@register_dataset("synthetic", origin="generated")
def synthetic(
    num_classes: int = 10,
    channels: int = 1,
    image_size: int = 28,
    train_size: int = 1000,
    test_size: int = 200,
    seed: int = 0,
    noise: float = 2.0,
    crop_padding: int = 0,
    padding_mode: str = "zeros",
    hflip: bool = False,
) -> Recipe:
    """A learnable random task of any shape, for tests: each class a smooth random pattern, plus noise."""
    for name, value in (("num_classes", num_classes), ("channels", channels), ("image_size", image_size)):
        _positive_int(name, value)
    _positive_int("train_size", train_size, 0)
    _positive_int("test_size", test_size, 0)
    _positive_int("seed", seed, 0)
    if not is_real(noise) or not math.isfinite(noise) or noise < 0:
        raise ConfigError(f"noise must be a finite non-negative number, got {noise!r}")
    sizes = {"train": train_size, "test": test_size}

    def read(directory: Path | None, split: SourceSplit) -> ImageData:
        return _synthetic_split(split, num_classes, channels, image_size, sizes[split], seed, float(noise))

    if train_size > 0:
        mean, std = _channel_stats(read(None, "train").images)
    else:
        mean, std = (0.5,) * channels, (0.15,) * channels
    info = DatasetInfo("synthetic", num_classes, channels, image_size, mean, std, train_size, test_size)
    return Recipe(info, read, Augmentation(crop_padding, padding_mode, hflip))  # type: ignore[arg-type]

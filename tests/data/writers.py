"""Writers of tiny dataset files in each real on-disk format (IDX, CIFAR pickles, SVHN .mat, PNG folders).

They write what the original distributions ship, byte for byte in layout, so the readers are tested
against the formats and not against themselves. Each returns the arrays it wrote.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dims, then the data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_dir(
    directory: Path, n_train: int = 40, n_test: int = 12, gz: bool = True, seed: int = 0, size: int = 28
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An MNIST-layout folder: four IDX files (gzipped or not) with random images and labels 0..9."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(directory / IDX_NAMES[split][0], images, gz)
        write_idx(directory / IDX_NAMES[split][1], labels, gz)
        written[split] = (images, labels)
    return written


def cifar_batch(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, num_classes, n)]
    return data, labels


def write_pickle(path: Path, obj: object, protocol: int) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def write_cifar10_dir(directory: Path, per_batch: int = 6, n_test: int = 8, seed: int = 0, protocol: int = 2):
    """A cifar-10-batches-py folder: data_batch_1..5 and test_batch, dicts of 'data' (N×3072) and 'labels'.

    Keys are bytes, as Python 2's pickles of the original files decode under encoding='bytes'.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        data, labels = cifar_batch(rng, per_batch, 10)
        write_pickle(
            directory / f"data_batch_{i}",
            {b"batch_label": b"training batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * per_batch},
            protocol,
        )
        train_x.append(data)
        train_y += labels
    data, labels = cifar_batch(rng, n_test, 10)
    write_pickle(directory / "test_batch", {b"labels": labels, b"data": data}, protocol)
    write_pickle(directory / "batches.meta", {b"label_names": [b"airplane"] * 10}, protocol)
    return {"train": (np.concatenate(train_x), np.array(train_y)), "test": (data, np.array(labels))}


def write_cifar100_dir(directory: Path, n_train: int = 30, n_test: int = 10, seed: int = 0, protocol: int = 4):
    """A cifar-100-python folder: 'train' and 'test' dicts with 'data', 'fine_labels' (0..99), 'coarse_labels'."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data, fine = cifar_batch(rng, n, 100)
        coarse = [f // 5 for f in fine]
        write_pickle(directory / split, {"data": data, "fine_labels": fine, "coarse_labels": coarse}, protocol)
        written[split] = (data, np.array(fine))
    return written


def write_svhn_dir(directory: Path, n_train: int = 20, n_test: int = 10, seed: int = 0):
    """An SVHN folder: train_32x32.mat and test_32x32.mat with X (32×32×3×N uint8) and y (N×1, digit 0 stored as 10)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        savemat(directory / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, digits)
    return written


def write_image_folder(
    directory: Path, classes: tuple[str, ...] = ("ant", "bee", "cat"), per_class: dict[str, int] | None = None,
    size: tuple[int, int] = (20, 24), mode: str = "RGB", seed: int = 0,
) -> dict[str, list[tuple[Path, int]]]:  # fmt: skip
    """train/<class>/*.png and val/<class>/*.png with random pixels; returns (path, class index) per split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 4, "val": 2}
    written: dict[str, list[tuple[Path, int]]] = {}
    for split, n in per_class.items():
        written[split] = []
        for label, name in enumerate(classes):
            folder = directory / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[0], size[1], 3) if mode == "RGB" else size
                path = folder / f"{i:03d}.png"
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
                written[split].append((path, label))
    return written

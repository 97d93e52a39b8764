"""Readers of the on-disk dataset formats: IDX (MNIST family), CIFAR python pickles, SVHN `.mat`, image folders.

Each reader checks what it reads and turns a corrupt, truncated or foreign file into a
`FileFormatError` naming the file; what it returns is an `ImageTensor` (uint8 N×C×H×W images,
int64 labels) or, for image folders, an `ImageFiles` list decoded item by item.
"""

from __future__ import annotations

import functools
import gzip
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from randsparse.data.registry import ImageFiles, ImageTensor
from randsparse.errors import FileFormatError

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); multi-byte values are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when it is gzip-compressed (whatever its name)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise FileFormatError(f"cannot read {path}: {exc}") from exc
    return raw


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (`.gz` or not) as a NumPy array of its header's shape and type.

    Decoded files are kept (up to 8, keyed by path, size and modification time) because building
    the train, val and test splits reads the same files again; the caller gets its own copy.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise FileFormatError(f"cannot read {path}: {exc}") from exc
    return _read_idx_cached(path, stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: Path, mtime_ns: int, size: int) -> np.ndarray:
    raw = read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise FileFormatError(f"{path} is not an IDX file (its first bytes are not an IDX magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise FileFormatError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise FileFormatError(
            f"{path}: the IDX header announces shape {shape} ({expected} bytes of data) but the file holds"
            f" {len(raw) - header} bytes (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_pair(images_path: Path, labels_path: Path) -> ImageTensor:
    """An IDX image file (N×H×W uint8) and its label file (N uint8) as one split."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise FileFormatError(
            f"{images_path}: expected N×H×W unsigned bytes, got {images.dtype} of shape {images.shape}"
        )
    if labels.ndim != 1:
        raise FileFormatError(f"{labels_path}: expected one label per image, got shape {labels.shape}")
    if len(labels) != len(images):
        raise FileFormatError(f"{labels_path} holds {len(labels)} labels but {images_path} holds {len(images)} images")
    return ImageTensor(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only: a data file must not run arbitrary code."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):  # pickles written before NumPy 2 renamed numpy.core
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise FileFormatError(f"{path} is not a readable CIFAR python batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise FileFormatError(f"{path} is not a CIFAR python batch (holds a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_cifar_batches(paths: list[Path], label_key: str) -> ImageTensor:
    """CIFAR python-format batches (dicts with `data` N×3072 uint8 and `label_key`) concatenated as one split."""
    images, labels = [], []
    for path in paths:
        batch = _load_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise FileFormatError(f"{path}: a CIFAR batch needs keys 'data' and {label_key!r}, found {sorted(batch)}")
        data = np.asarray(batch["data"])
        target = np.asarray(batch[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise FileFormatError(f"{path}: 'data' must be N×3072 unsigned bytes, got {data.dtype} {data.shape}")
        if target.ndim != 1 or len(target) != len(data) or not np.issubdtype(target.dtype, np.integer):
            raise FileFormatError(f"{path}: {label_key!r} must hold one integer per image ({len(data)})")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(target.astype(np.int64)))
    return ImageTensor(torch.cat(images), torch.cat(labels))


def read_svhn_mat(path: Path) -> ImageTensor:
    """An SVHN cropped-digits `.mat` file (X: 32×32×3×N uint8, y: N×1 with 10 meaning digit 0)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise FileFormatError(f"{path}: unsupported .mat version ({exc}); SVHN ships MATLAB v5 files") from exc
    except (OSError, EOFError, ValueError, TypeError, MatReadError, zlib.error) as exc:
        raise FileFormatError(f"{path} is not a readable .mat file: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise FileFormatError(f"{path}: an SVHN .mat file needs variables 'X' and 'y'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise FileFormatError(f"{path}: 'X' must be H×W×3×N unsigned bytes with N = len(y), got {x.dtype} {x.shape}")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise FileFormatError(f"{path}: SVHN labels must lie in 0..10, found {labels.min()}..{labels.max()}")
    labels[labels == 10] = 0  # SVHN stores digit 0 as class 10
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return ImageTensor(images, torch.from_numpy(labels))


def folder_classes(directory: Path) -> list[str]:
    """The class folders of an image folder (`directory/<class>/...`), sorted."""
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(directory)[0]
    except FileNotFoundError as exc:
        raise FileFormatError(f"{directory} holds no class folders (expected {directory}/<class>/<image>)") from exc


def read_image_folder(directory: Path, classes: list[str]) -> ImageFiles:
    """The image files under `directory/<class>/`, labelled by the position of their class in `classes`.

    A class folder that `classes` does not list is an error (an evaluation folder must not hold
    classes the training folder lacks); a listed class may be absent.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    present = folder_classes(directory)
    extra = sorted(set(present) - set(classes))
    if extra:
        raise FileFormatError(
            f"{directory} has class folders missing from the training folder: {', '.join(extra[:5])}"
            + (" ..." if len(extra) > 5 else "")
        )
    index = {c: i for i, c in enumerate(classes)}
    samples = make_dataset(directory, index, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise FileFormatError(f"{directory} holds no image files ({', '.join(IMG_EXTENSIONS)})")
    paths = tuple(p for p, _ in samples)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return ImageFiles(paths, labels, tuple(classes))


def decode_image(path: str, mode: str) -> torch.Tensor:
    """One image file as a uint8 C×H×W tensor in PIL mode `mode` ("L" or "RGB")."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert(mode))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise FileFormatError(f"cannot decode image {path}: {exc}") from exc

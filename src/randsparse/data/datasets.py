"""The `Dataset`s `build` returns: in-memory uint8 images, or image files decoded per item.

Items are `(float32 C×H×W, int label)`. Both classes implement `__getitems__`, which the
`DataLoader` calls with a whole batch of indices: in-memory sets augment and normalise the batch
in a few tensor ops. A batch from `EpochBatchSampler` (training, `make_loader`) carries its own
seed (`SeededIndices.seed`), so an item's augmentation depends on the loader's seed and the batch
order only, never on the number of workers; plain indexing draws from the dataset's own generator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import Dataset

from randsparse.data.formats import decode_image
from randsparse.data.registry import Augmentation, DatasetInfo
from randsparse.data.transforms import (
    crop_flip,
    folder_eval_view,
    folder_train_view,
    look_like,
    normalizer,
    to_float,
)

Item = tuple[torch.Tensor, int]


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one thread, as `DataLoader` workers always do.

    A batch's transforms are a handful of small memory-bound ops: extra intra-op threads only add
    synchronisation, and when the cores are shared each parallel op waits for a descheduled thread
    (measured 20-70 ms instead of 2 ms a Fashion-MNIST batch on 2 busy cores). The setting is
    restored on exit; within a `DataLoader` the loading never overlaps the training step.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SeededIndices(list):
    """A batch of indices with the seed its augmentation draws from (set by `EpochBatchSampler`)."""

    def __init__(self, indices: Sequence[int] = (), seed: int | None = None) -> None:
        super().__init__(indices)
        self.seed = seed


class _SeededDataset(Dataset[Item]):
    """Shared by both dataset classes: info, labels, the generator for plain indexing."""

    info: DatasetInfo
    labels: torch.Tensor

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._own_generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def _generator(self, indices: Any) -> torch.Generator:
        seed = getattr(indices, "seed", None)
        if seed is not None:
            return torch.Generator().manual_seed(seed)
        if self._own_generator is None:
            self._own_generator = torch.Generator().manual_seed(self._seed)
        return self._own_generator

    def __getstate__(self) -> dict[str, Any]:  # torch.Generator state is not needed in a copy
        state = self.__dict__.copy()
        state["_own_generator"] = None
        return state

    def __getitem__(self, index: int) -> Item:
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for a dataset of {size} items")
        return self.__getitems__([index % size])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        raise NotImplementedError


class TensorImageDataset(_SeededDataset):
    """Images held in memory as uint8 N×C×H×W; augmentation and normalisation run per batch as tensor ops.

    `augmentation` None means none; `mean`/`std` None returns pixels in [0, 1].
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DatasetInfo,
        *,
        augmentation: Augmentation | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.info = info
        self.augmentation = None if augmentation is None or augmentation.is_identity else augmentation
        self._scale, self._shift = normalizer(mean, std, images.shape[1])

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        with one_intra_op_thread():
            batch = self.images.index_select(0, index)
            if self.augmentation is not None:
                batch = crop_flip(batch, self.augmentation, self._generator(indices))
            images = to_float(batch, self._scale, self._shift)
        return list(zip(images.unbind(0), self.labels.index_select(0, index).tolist(), strict=True))


class FileImageDataset(_SeededDataset):
    """Image files decoded per item (ImageNet-style folders).

    Training view: random resized crop to `image_size` (+ flip if `hflip`); evaluation view: shorter
    side to `resize`, centre crop `image_size`. `look` = (channels, size) converts the result to
    another dataset's look; `mean`/`std` None returns pixels in [0, 1].
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: torch.Tensor,
        info: DatasetInfo,
        *,
        train_view: bool,
        hflip: bool,
        image_size: int,
        resize: int,
        channels: int,
        look: tuple[int, int] | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = tuple(paths)
        self.labels = labels.to(torch.int64)
        self.info = info
        self.train_view = train_view
        self._hflip = hflip
        self._image_size = image_size
        self._resize = resize
        self._mode = "L" if channels == 1 else "RGB"
        self._look = look
        out_channels = look[0] if look else channels
        self._scale, self._shift = normalizer(mean, std, out_channels)

    def _view(self, i: int, generator: torch.Generator) -> torch.Tensor:
        image = decode_image(self.paths[i], self._mode)
        if self.train_view:
            image = folder_train_view(image, self._image_size, self._hflip, generator)
        else:
            image = folder_eval_view(image, self._image_size, self._resize)
        if self._look is not None:
            image = look_like(image, *self._look)
        return to_float(image, self._scale, self._shift)

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        generator = self._generator(indices)
        return [(self._view(int(i), generator), int(self.labels[int(i)])) for i in indices]

"""`make_loader`: order and augmentation fixed by the seed, whatever the number of workers; each item once an epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from randsparse import data
from randsparse.errors import ConfigError
from tests.data.writers import write_image_folder


def epochs(loader, count: int = 2) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(count)]


def same(a, b) -> bool:
    """Whether two lists of (images, labels) batches are identical."""
    if len(a) != len(b):
        return False
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


@pytest.fixture
def augmented():
    return data.build("synthetic", split="train", train_size=200, crop_padding=2, hflip=True, val_fraction=0)


def test_same_seed_gives_the_same_batches_epoch_after_epoch(augmented) -> None:
    a = epochs(data.make_loader(augmented, 32, shuffle=True, seed=3))
    b = epochs(data.make_loader(augmented, 32, shuffle=True, seed=3))
    assert same(a[0], b[0]) and same(a[1], b[1])
    assert not same(a[0], a[1])  # a new order and new augmentation each epoch


def test_another_seed_gives_another_order(augmented) -> None:
    a = [y for _, y in data.make_loader(augmented, 50, shuffle=True, seed=0)]
    b = [y for _, y in data.make_loader(augmented, 50, shuffle=True, seed=1)]
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_each_epoch_visits_every_item_once() -> None:
    dataset = data.build("synthetic", split="train", train_size=100, val_fraction=0, augment=False)
    loader = data.make_loader(dataset, 16, shuffle=True, seed=0)
    for _ in range(2):
        images = torch.cat([x for x, _ in loader])
        assert len(images) == 100
        matches = (images[:, None] == torch.stack([dataset[i][0] for i in range(100)])[None]).flatten(2).all(2)
        assert (matches.sum(0) >= 1).all()


def test_unshuffled_loader_keeps_dataset_order() -> None:
    dataset = data.build("synthetic", split="test", test_size=30)
    labels = torch.cat([y for _, y in data.make_loader(dataset, 8, shuffle=False, seed=0)])
    assert labels.tolist() == dataset.labels.tolist()


def test_drop_last_drops_the_partial_batch(augmented) -> None:
    loader = data.make_loader(augmented, 64, shuffle=True, seed=0, drop_last=True)
    sizes = [len(y) for _, y in loader]
    assert sizes == [64, 64, 64] and len(loader) == 3
    assert len(data.make_loader(augmented, 64, shuffle=True, seed=0)) == 4


def test_workers_do_not_change_the_batches(augmented) -> None:
    single = epochs(data.make_loader(augmented, 32, shuffle=True, seed=7, workers=0))
    parallel = epochs(data.make_loader(augmented, 32, shuffle=True, seed=7, workers=2))
    assert same(single[0], parallel[0]) and same(single[1], parallel[1])


def test_file_dataset_batches_are_reproducible(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "f", size=(12, 12), per_class={"train": 3, "val": 1})
    dataset = data.build("image_folder", tmp_path / "f", "train", image_size=8, resize=8, val_fraction=0)
    a = epochs(data.make_loader(dataset, 4, shuffle=True, seed=0), 1)
    b = epochs(data.make_loader(dataset, 4, shuffle=True, seed=0), 1)
    assert same(a[0], b[0]) and a[0][0][0].shape == (4, 3, 8, 8)


def test_pin_memory_defaults_to_cuda_availability(augmented) -> None:
    assert data.make_loader(augmented, 8, shuffle=False, seed=0).pin_memory == torch.cuda.is_available()
    assert data.make_loader(augmented, 8, shuffle=False, seed=0, pin_memory=False).pin_memory is False


def test_workers_are_persistent(augmented) -> None:
    assert data.make_loader(augmented, 8, shuffle=False, seed=0, workers=1).persistent_workers
    assert not data.make_loader(augmented, 8, shuffle=False, seed=0).persistent_workers


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"batch_size": 2.5}, {"workers": -1}, {"seed": -3}], ids=lambda k: next(iter(k))
)
def test_bad_loader_arguments_are_config_errors(augmented, kwargs: dict) -> None:
    arguments = {"batch_size": 8, "shuffle": True, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        data.make_loader(augmented, **arguments)


def test_loader_batches_are_the_training_sampler_batches_epoch_after_epoch() -> None:
    """One seeded batch order: pass k of `make_loader` is epoch k of training's `EpochBatchSampler`."""
    dataset = data.build("synthetic", split="train", train_size=100, val_fraction=0, augment=False)
    loader = data.make_loader(dataset, 16, shuffle=True, seed=5)
    batches = data.EpochBatchSampler(data.EpochSampler(100, 5), 16, drop_last=False)
    for epoch in range(2):
        batches.set_epoch(epoch)
        expected = [(list(b), b.seed) for b in batches]
        assert [y.tolist() for _, y in loader] == [dataset.labels[i].tolist() for i, _ in expected]
    assert len({seed for _, seed in expected}) == len(expected)  # a seed of its own for each batch

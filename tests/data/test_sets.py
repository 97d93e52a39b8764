"""Bundled and generated sets (digits, synthetic, noise) and the OOD pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from randsparse import data
from randsparse.data.ood import NOISE_LABEL
from randsparse.errors import ConfigError, UnknownNameError


def images_of(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_synthetic_task_is_learnable_by_a_small_mlp_in_a_few_epochs() -> None:
    train = data.build("synthetic", split="train", val_fraction=0)
    test = data.build("synthetic", split="test")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = data.make_loader(train, 64, shuffle=True, seed=0)
    for _ in range(3):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        x = images_of(test)
        accuracy = (model(x).argmax(1) == test.labels).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance is 0.1


@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 28, 10), (3, 9, 4), (2, 1, 2)])
def test_synthetic_has_any_shape_and_balanced_labels(channels: int, size: int, classes: int) -> None:
    info = data.dataset_info("synthetic", channels=channels, image_size=size, num_classes=classes, train_size=40)
    assert info.shape == (channels, size, size) and info.num_classes == classes
    train = data.build(
        "synthetic", split="train", val_fraction=0, channels=channels, image_size=size, num_classes=classes,
        train_size=40,
    )  # fmt: skip
    assert train[0][0].shape == (channels, size, size)
    assert torch.bincount(train.labels, minlength=classes).tolist() == [40 // classes] * classes


def test_synthetic_depends_on_its_seed_only() -> None:
    a, b = images_of(data.build("synthetic", split="test")), images_of(data.build("synthetic", split="test"))
    c = images_of(data.build("synthetic", split="test", seed=1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_synthetic_info_statistics_are_those_of_its_training_set() -> None:
    train = data.build("synthetic", split="train", val_fraction=0, normalize=False, augment=False, channels=3)
    x = images_of(train)
    info = train.info
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.tensor(info.mean, dtype=torch.float32), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.tensor(info.std, dtype=torch.float32), atol=1e-4, rtol=0)
    normalised = images_of(data.build("synthetic", split="train", val_fraction=0, augment=False, channels=3))
    assert normalised.mean().abs() < 1e-3 and (normalised.std() - 1).abs() < 1e-2


@pytest.mark.parametrize("bad", [{"num_classes": 0}, {"image_size": -1}, {"noise": -1.0}, {"seed": -1}])
def test_bad_synthetic_options_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        data.dataset_info("synthetic", **bad)


def test_digits_splits_and_resize() -> None:
    info = data.dataset_info("digits")
    assert info.train_size + info.test_size == 1797 and info.shape == (1, 8, 8)
    test = data.build("digits", split="test", image_size=28, normalize=False)
    assert test[0][0].shape == (1, 28, 28) and len(test) == info.test_size
    assert set(test.labels.tolist()) == set(range(10))
    x = images_of(test)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9  # 0..16 rescaled to the full range


def test_digits_test_split_is_fixed_and_disjoint_from_train() -> None:
    train = images_of(data.build("digits", split="train", val_fraction=0, augment=False, split_seed=5))
    test = images_of(data.build("digits", split="test", split_seed=9))
    assert torch.equal(test, images_of(data.build("digits", split="test")))
    assert len(train) + len(test) == 1797
    assert not (test.flatten(1)[:, None] == train.flatten(1)[None]).all(2).any(1).all()


@pytest.mark.parametrize("name", ["gaussian", "uniform"])
def test_noise_sets_take_their_shape_and_statistics_from_like(name: str) -> None:
    dataset = data.build(name, split="test", like="cifar10", size=64)
    assert len(dataset) == 64 and dataset[0][0].shape == (3, 32, 32)
    assert dataset.info.mean == data.dataset_info("cifar10").mean
    assert set(dataset.labels.tolist()) == {NOISE_LABEL}
    raw = images_of(data.build(name, split="test", like="fashion_mnist", size=64, normalize=False))
    assert raw.shape == (64, 1, 28, 28) and raw.min() >= 0 and raw.max() <= 1


@pytest.mark.parametrize("name", ["gaussian", "uniform"])
def test_noise_sets_are_seeded(name: str) -> None:
    a = images_of(data.build(name, split="test", like="fashion_mnist", size=16))
    b = images_of(data.build(name, split="test", like="fashion_mnist", size=16))
    c = images_of(data.build(name, split="test", like="fashion_mnist", size=16, seed=1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_pixel_distributions() -> None:
    uniform = images_of(data.build("uniform", split="test", like="fashion_mnist", size=500, normalize=False))
    gaussian = images_of(data.build("gaussian", split="test", like="fashion_mnist", size=500, normalize=False))
    assert abs(uniform.mean().item() - 0.5) < 0.01 and abs(uniform.std().item() - 0.2887) < 0.01
    assert abs(gaussian.mean().item() - 0.5) < 0.01 and abs(gaussian.std().item() - 0.25) < 0.02


@pytest.mark.parametrize("name", ["gaussian", "uniform"])
def test_noise_sets_without_like_say_what_they_need(name: str) -> None:
    with pytest.raises(ConfigError, match="like="):
        data.build(name, split="test")
    with pytest.raises(ConfigError, match="like="):
        data.dataset_info(name)


def test_named_ood_pairs_follow_the_paper() -> None:
    assert data.ood_sets("cifar10") == ["svhn", "cifar100"]
    assert data.ood_sets("cifar100") == ["svhn", "cifar10"]
    assert data.ood_sets("fashion_mnist") == ["mnist", "digits", "gaussian", "uniform"]
    assert data.ood_sets("synthetic") == []
    for partners in data.OOD_PAIRS.values():
        assert set(partners) <= set(data.available_datasets())
    with pytest.raises(UnknownNameError):
        data.ood_sets("nope")


def test_build_ood_feeds_resized_digits_to_a_fashion_mnist_model() -> None:
    ood = data.build_ood("fashion_mnist", "digits")
    assert ood[0][0].shape == (1, 28, 28)
    assert ood.info.mean == data.dataset_info("fashion_mnist").mean and ood.augmentation is None
    assert len(ood) == data.dataset_info("digits").test_size

"""The real Fashion-MNIST where installed (Debian's dataset-fashion-mnist or $RANDSPARSE_DATA): sizes, labels, stats."""

from __future__ import annotations

import pytest
import torch

from randsparse import data

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def located() -> data.Location:
    location = data.locate("fashion_mnist")
    if not location.found:
        pytest.skip(
            "real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or set $RANDSPARSE_DATA);"
            f" looked in {', '.join(str(p) for p in location.looked)}"
        )
    return location


@pytest.fixture(scope="module")
def full_train(located: data.Location) -> data.TensorImageDataset:
    return data.build("fashion_mnist", split="train", val_fraction=0.0, augment=False, normalize=False)


def test_real_fashion_mnist_has_60000_train_and_10000_test_images_labelled_0_to_9(full_train) -> None:
    train = full_train
    test = data.build("fashion_mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    x, y = test[0]
    assert x.shape == (1, 28, 28) and 0 <= y <= 9


def test_real_fashion_mnist_default_split_is_54000_train_6000_val(located: data.Location) -> None:
    assert len(data.build("fashion_mnist", split="train")) == 54000
    assert len(data.build("fashion_mnist", split="val")) == 6000


def test_real_fashion_mnist_statistics_match_the_normalisation_constants(full_train) -> None:
    pixels = full_train.images.double() / 255
    info = data.dataset_info("fashion_mnist")
    assert pixels.mean().item() == pytest.approx(info.mean[0], abs=5e-4)
    assert pixels.std().item() == pytest.approx(info.std[0], abs=5e-4)

"""`data.build` on small files in each real format: shapes, labels, normalisation, splits, subsets, `like`, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from randsparse import data
from randsparse.errors import ConfigError, DatasetNotFoundError, FileFormatError, UnknownNameError
from tests.data.writers import (
    write_cifar10_dir,
    write_cifar100_dir,
    write_image_folder,
    write_mnist_dir,
    write_svhn_dir,
)


def stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a dataset as (images, labels), read through `__getitem__` one by one."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


# name, folder it is written to, writer, expected item shape, number of classes
FORMATS = {
    "mnist_gz": ("mnist", "mnist", lambda d: write_mnist_dir(d, gz=True), (1, 28, 28), 10),
    "mnist_raw": ("mnist", "mnist", lambda d: write_mnist_dir(d, gz=False), (1, 28, 28), 10),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", write_mnist_dir, (1, 28, 28), 10),
    "cifar10": ("cifar10", "cifar-10-batches-py", write_cifar10_dir, (3, 32, 32), 10),
    "cifar100": ("cifar100", "cifar-100-python", write_cifar100_dir, (3, 32, 32), 100),
    "svhn": ("svhn", "svhn", write_svhn_dir, (3, 32, 32), 10),
}


@pytest.fixture(params=list(FORMATS))
def written(request: pytest.FixtureRequest, tmp_path: Path):
    name, folder, writer, shape, classes = FORMATS[request.param]
    arrays = writer(tmp_path / folder)
    return name, tmp_path, arrays, shape, classes


def raw_test_images(name: str, arrays) -> np.ndarray:
    """The test split as written, in N×C×H×W uint8."""
    x, _ = arrays["test"]
    if name in ("mnist", "fashion_mnist"):
        return x[:, None]
    if name == "svhn":
        return x.transpose(3, 2, 0, 1)
    return x.reshape(-1, 3, 32, 32)


def test_each_format_gives_float_items_of_the_dataset_shape_and_label_range(written) -> None:
    name, root, _, shape, classes = written
    info = data.dataset_info(name)
    assert info.shape == shape and info.num_classes == classes
    for split in data.SPLITS:
        dataset = data.build(name, root, split)
        x, y = dataset[0]
        assert x.dtype == torch.float32 and tuple(x.shape) == shape
        assert isinstance(y, int)
        labels = dataset.labels
        assert int(labels.min()) >= 0 and int(labels.max()) < classes
        assert dataset.info == info


def test_each_format_test_split_holds_the_written_pixels_and_labels_in_file_order(written) -> None:
    name, root, arrays, _, _ = written
    images, labels = stack(data.build(name, root, "test", normalize=False))
    expected = torch.from_numpy(raw_test_images(name, arrays)).float() / 255
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    assert labels.tolist() == [int(v) for v in arrays["test"][1]]


def test_each_format_normalises_with_its_info_statistics(written) -> None:
    name, root, _, _, _ = written
    raw, _ = stack(data.build(name, root, "test", normalize=False))
    normalised, _ = stack(data.build(name, root, "test"))
    info = data.dataset_info(name)
    mean = torch.tensor(info.mean).reshape(-1, 1, 1)
    std = torch.tensor(info.std).reshape(-1, 1, 1)
    torch.testing.assert_close(normalised, (raw - mean) / std, atol=1e-5, rtol=1e-5)


def test_each_format_train_and_val_partition_the_training_files(written) -> None:
    name, root, arrays, _, _ = written
    n = len(arrays["train"][1])
    train = data.build(name, root, "train", val_fraction=0.25, augment=False, normalize=False)
    val = data.build(name, root, "val", val_fraction=0.25, normalize=False)
    assert (len(train), len(val)) == data.carve_sizes(n, 0.25) == (n - round(0.25 * n), round(0.25 * n))
    everything, labels = stack(data.build(name, root, "train", val_fraction=0.0, augment=False, normalize=False))
    train_x, train_y = stack(train)
    val_x, val_y = stack(val)
    train_index = data.split_indices(n, "train", 0.25, 0)
    val_index = data.split_indices(n, "val", 0.25, 0)
    assert torch.equal(train_x, everything[train_index]) and torch.equal(val_x, everything[val_index])
    assert train_y.tolist() == labels[train_index].tolist() and val_y.tolist() == labels[val_index].tolist()


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 500),
    fraction=st.floats(0, 0.99),
    seed=st.integers(0, 2**31),
)
def test_validation_split_is_disjoint_from_train_and_covers_the_training_set(size, fraction, seed) -> None:
    train = data.split_indices(size, "train", fraction, seed)
    val = data.split_indices(size, "val", fraction, seed)
    assert len(val) == round(fraction * size)
    assert sorted(train.tolist() + val.tolist()) == list(range(size))
    assert torch.equal(val, data.split_indices(size, "val", fraction, seed))  # fixed by the seed


def test_validation_split_changes_with_the_split_seed() -> None:
    assert not torch.equal(data.split_indices(1000, "val", 0.1, 0), data.split_indices(1000, "val", 0.1, 1))


def test_split_seed_zero_and_one_give_different_but_each_reproducible_synthetic_val_sets() -> None:
    a = data.build("synthetic", split="val", split_seed=0)
    b = data.build("synthetic", split="val", split_seed=0)
    c = data.build("synthetic", split="val", split_seed=1)
    assert torch.equal(stack(a)[0], stack(b)[0])
    assert not torch.equal(stack(a)[0], stack(c)[0])


def test_subset_keeps_n_examples_of_the_split_reproducibly() -> None:
    full_x, _ = stack(data.build("synthetic", split="train", augment=False))
    sub = data.build("synthetic", split="train", subset=50, augment=False)
    again = data.build("synthetic", split="train", subset=50, augment=False)
    assert len(sub) == 50
    sub_x, _ = stack(sub)
    assert torch.equal(sub_x, stack(again)[0])
    matches = (sub_x[:, None] == full_x[None]).flatten(2).all(2)  # each subset item is one train item
    assert (matches.sum(1) >= 1).all()


def test_subset_does_not_move_examples_between_train_and_val() -> None:
    val = stack(data.build("synthetic", split="val"))[0]
    val_of_subset_run = stack(data.build("synthetic", split="val", subset=20))[0]
    assert ((val_of_subset_run[:, None] == val[None]).flatten(2).all(2).sum(1) == 1).all()


def test_augment_defaults_to_train_only() -> None:
    options = {"crop_padding": 4, "hflip": True}
    plain_train = stack(data.build("synthetic", split="train", augment=False, **options))[0]
    train = stack(data.build("synthetic", split="train", **options))[0]
    assert not torch.equal(train, plain_train)
    for split in ("val", "test"):
        plain = stack(data.build("synthetic", split=split, augment=False, **options))[0]
        assert torch.equal(stack(data.build("synthetic", split=split, **options))[0], plain)
    assert not torch.equal(stack(data.build("synthetic", split="test", augment=True, **options))[0], plain)


def test_augmented_items_are_reproducible_from_a_fresh_build() -> None:
    a = data.build("synthetic", split="train", crop_padding=3, hflip=True)
    b = data.build("synthetic", split="train", crop_padding=3, hflip=True)
    assert torch.equal(stack(a)[0], stack(b)[0])


def test_cifar10_uses_reflect_padding_and_cifar100_zero_padding_by_default(tmp_path: Path) -> None:
    write_cifar10_dir(tmp_path / "cifar-10-batches-py")
    write_cifar100_dir(tmp_path / "cifar-100-python")
    ten = data.build("cifar10", tmp_path, "train")
    hundred = data.build("cifar100", tmp_path, "train")
    assert ten.augmentation == data.Augmentation(4, "reflect", True)
    assert hundred.augmentation == data.Augmentation(4, "zeros", True)


def test_like_converts_gray_28_to_rgb_32_with_the_targets_statistics(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "mnist")
    raw = stack(data.build("mnist", tmp_path, "test", like="cifar10", normalize=False))[0]
    assert raw.shape[1:] == (3, 32, 32)
    assert torch.equal(raw[:, 0], raw[:, 1]) and torch.equal(raw[:, 1], raw[:, 2])  # gray repeated
    assert float(raw.min()) >= 0 and float(raw.max()) <= 1
    normalised = data.build("mnist", tmp_path, "test", like="cifar10")
    target = data.dataset_info("cifar10")
    assert normalised.info.shape == (3, 32, 32) and normalised.info.mean == target.mean
    assert normalised.info.num_classes == 10 and normalised.info.name == "mnist"
    mean, std = torch.tensor(target.mean).reshape(-1, 1, 1), torch.tensor(target.std).reshape(-1, 1, 1)
    torch.testing.assert_close(stack(normalised)[0], (raw - mean) / std, atol=1e-5, rtol=1e-5)


def test_like_converts_rgb_32_to_gray_28(tmp_path: Path) -> None:
    write_svhn_dir(tmp_path / "svhn")
    dataset = data.build("svhn", tmp_path, "test", like="fashion_mnist")
    assert dataset[0][0].shape == (1, 28, 28)
    assert dataset.info.std == data.dataset_info("fashion_mnist").std


def test_like_accepts_a_dataset_info() -> None:
    target = data.DatasetInfo("custom", 5, 3, 12, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    dataset = data.build("synthetic", split="test", like=target)
    assert dataset[0][0].shape == (3, 12, 12)
    assert dataset.info.mean == target.mean


def test_options_reach_the_dataset_and_unknown_ones_name_the_accepted(tmp_path: Path) -> None:
    assert data.build("synthetic", split="test", image_size=9, channels=2)[0][0].shape == (2, 9, 9)
    with pytest.raises(ConfigError, match="crop_padding"):
        data.build("synthetic", split="test", nonsense=1)


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as excinfo:
        data.build("imagenet22k")
    for name in ("cifar10", "fashion_mnist", "synthetic", "svhn"):
        assert name in str(excinfo.value)


@pytest.mark.parametrize(
    ("kwargs", "mentioned"),
    [
        ({"split": "validation"}, "split"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"split": "val", "val_fraction": 0.0}, "val_fraction is 0"),
        ({"subset": 0}, "subset"),
        ({"subset": 10**6}, "larger"),
        ({"split_seed": -1}, "split_seed"),
        ({"like": 3}, "like"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, mentioned: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(mentioned)):
        data.build("synthetic", **kwargs)


def test_missing_fashion_mnist_names_every_place_looked_and_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_data_dirs: Path
) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as excinfo:
        data.build("fashion_mnist", root=tmp_path / "mine")
    message = str(excinfo.value)
    assert "\n" not in message
    for place in (tmp_path / "mine", tmp_path / "env" / "fashion-mnist", isolated_data_dirs / "fashion-mnist"):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--download" in message


def test_missing_dataset_is_also_a_file_not_found_error() -> None:
    with pytest.raises(FileNotFoundError):
        data.build("cifar10")


def test_truncated_file_through_build_is_a_format_error_naming_it(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "mnist", gz=False)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FileFormatError, match="t10k-images-idx3-ubyte"):
        data.build("mnist", tmp_path, "test")


def test_dataset_indexing_follows_python_rules() -> None:
    dataset = data.build("synthetic", split="test", test_size=5)
    assert torch.equal(dataset[-1][0], dataset[4][0])
    with pytest.raises(IndexError):
        dataset[5]


# ------------------------------------------------------------------------------------- image folders


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "pets", size=(20, 24), per_class={"train": 5, "val": 2})
    return tmp_path / "pets"


def test_image_folder_counts_classes_and_uses_val_as_the_test_split(folder: Path) -> None:
    info = data.dataset_info("image_folder", root=folder, image_size=16, resize=18)
    assert info.num_classes == 3 and info.shape == (3, 16, 16)
    test = data.build("image_folder", folder, "test", image_size=16, resize=18)
    assert len(test) == 6 and sorted(set(test.labels.tolist())) == [0, 1, 2]
    train = data.build("image_folder", folder, "train", image_size=16, resize=18, val_fraction=0.2)
    val = data.build("image_folder", folder, "val", image_size=16, resize=18, val_fraction=0.2)
    assert (len(train), len(val)) == (12, 3)
    assert not set(train.paths) & set(val.paths)


def test_image_folder_eval_view_is_resize_then_centre_crop(folder: Path) -> None:
    from PIL import Image
    from torchvision.transforms.v2 import functional as tvf

    test = data.build("image_folder", folder, "test", image_size=16, resize=18, normalize=False)
    x, _ = test[0]
    with Image.open(test.paths[0]) as image:
        expected = tvf.center_crop(tvf.resize(tvf.pil_to_tensor(image.convert("RGB")), 18, antialias=True), [16, 16])
    torch.testing.assert_close(x, expected.float() / 255, atol=1e-6, rtol=0)


def test_image_folder_train_view_is_a_random_resized_crop_of_the_right_size(folder: Path) -> None:
    train = data.build("image_folder", folder, "train", image_size=16, resize=18, val_fraction=0)
    eval_view = data.build("image_folder", folder, "train", image_size=16, resize=18, val_fraction=0, augment=False)
    x, _ = train[0]
    assert x.shape == (3, 16, 16)
    assert not torch.equal(stack(train)[0], stack(eval_view)[0])


def test_image_folder_gray_and_like(folder: Path) -> None:
    gray = data.build("image_folder", folder, "test", image_size=16, resize=16, channels=1)
    assert gray[0][0].shape == (1, 16, 16)
    assert gray.info.mean == (0.5,)
    like = data.build("image_folder", folder, "test", image_size=16, resize=16, like="fashion_mnist")
    assert like[0][0].shape == (1, 28, 28) and like.info.mean == data.dataset_info("fashion_mnist").mean


def test_imagenet_reads_an_imagenet_layout_under_the_data_dir(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imagenet", classes=("n01440764", "n01443537"), size=(30, 40))
    info = data.dataset_info("imagenet")
    assert (info.num_classes, info.image_size, info.mean) == (1000, 224, (0.485, 0.456, 0.406))
    test = data.build("imagenet", tmp_path, "test", image_size=24, resize=28)
    assert test[0][0].shape == (3, 24, 24)
    assert test.info.num_classes == 1000


def test_flat_val_folder_is_refused_with_the_expected_layout(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imagenet", per_class={"train": 1})
    (tmp_path / "imagenet" / "val").mkdir()
    (tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(FileFormatError, match="one folder per class"):
        data.build("imagenet", tmp_path, "test")


def test_image_folder_without_root_says_to_pass_one() -> None:
    with pytest.raises(DatasetNotFoundError, match="root"):
        data.build("image_folder")

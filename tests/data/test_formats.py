"""Readers of IDX, CIFAR pickle, SVHN .mat and image-folder files: contents, and one clear error per bad file."""

from __future__ import annotations

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from randsparse.data.formats import (
    decode_image,
    read_cifar_batches,
    read_idx,
    read_idx_pair,
    read_image_folder,
    read_svhn_mat,
)
from randsparse.errors import FileFormatError
from tests.data.writers import (
    idx_bytes,
    write_cifar10_dir,
    write_cifar100_dir,
    write_idx,
    write_image_folder,
    write_pickle,
    write_svhn_dir,
)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_round_trips_shape_and_values(tmp_path: Path, gz: bool) -> None:
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, gz)
    out = read_idx(path)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def test_idx_reads_big_endian_int32(tmp_path: Path) -> None:
    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "ints-idx1"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), [1, -2, 70000])


def test_idx_pair_gives_n_1_h_w_images_and_int64_labels(tmp_path: Path) -> None:
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    labels = np.array([3, 9], dtype=np.uint8)
    data = read_idx_pair(write_idx(tmp_path / "i", images, True), write_idx(tmp_path / "l", labels, False))
    assert data.images.shape == (2, 1, 4, 4) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [3, 9]
    assert torch.equal(data.images[1, 0], torch.from_numpy(images[1]))


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 3, 3), np.uint8))[:-5])
    return path


def _truncated_gzip(tmp_path: Path) -> Path:
    path = tmp_path / "t-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((40, 28, 28), np.uint8)))[:-30])
    return path


def _not_idx(tmp_path: Path) -> Path:
    path = tmp_path / "readme-idx3-ubyte"
    path.write_text("this is a text file\n")
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty-idx3-ubyte"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("make", [_truncated, _truncated_gzip, _not_idx, _empty])
def test_bad_idx_file_is_a_format_error_naming_it(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(FileFormatError, match=re.escape(path.name)):
        read_idx(path)


def test_idx_pair_with_different_counts_is_refused(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "i", np.zeros((3, 2, 2), np.uint8), False)
    labels = write_idx(tmp_path / "l", np.zeros(2, np.uint8), False)
    with pytest.raises(FileFormatError, match="2 labels"):
        read_idx_pair(images, labels)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches_concatenate_in_file_order(tmp_path: Path, protocol: int) -> None:
    written = write_cifar10_dir(tmp_path, per_batch=3, n_test=2, protocol=protocol)
    data = read_cifar_batches([tmp_path / f"data_batch_{i}" for i in range(1, 6)], "labels")
    x, y = written["train"]
    assert data.images.shape == (15, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == y.tolist()
    # Row-major 3072 = 3 channel planes of 32×32: channel 1, row 2, column 5 is byte 1024 + 2*32 + 5.
    assert int(data.images[4, 1, 2, 5]) == int(x[4, 1024 + 2 * 32 + 5])


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100_dir(tmp_path, n_train=7, n_test=3)
    data = read_cifar_batches([tmp_path / "train"], "fine_labels")
    assert data.labels.tolist() == written["train"][1].tolist()
    assert data.images.shape == (7, 3, 32, 32)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    write_pickle(path, {"data": np.zeros((1, 3072), np.uint8), "labels": [_Exploit()]}, 4)
    with pytest.raises(FileFormatError, match=r"refusing to load builtins\.print"):
        read_cifar_batches([path], "labels")


def test_cifar_batch_without_labels_names_the_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    write_pickle(path, {"data": np.zeros((2, 3072), np.uint8)}, 4)
    with pytest.raises(FileFormatError, match="'labels'"):
        read_cifar_batches([path], "labels")


def test_cifar_batch_with_wrong_row_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    write_pickle(path, {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, 4)
    with pytest.raises(FileFormatError, match="N×3072"):
        read_cifar_batches([path], "labels")


def test_truncated_cifar_batch_is_a_format_error(tmp_path: Path) -> None:
    write_cifar10_dir(tmp_path)
    path = tmp_path / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(FileFormatError, match="data_batch_2"):
        read_cifar_batches([path], "labels")


def test_svhn_maps_label_10_to_digit_0_and_transposes_to_n_c_h_w(tmp_path: Path) -> None:
    written = write_svhn_dir(tmp_path, n_train=12)
    data = read_svhn_mat(tmp_path / "train_32x32.mat")
    x, digits = written["train"]
    assert data.images.shape == (12, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == digits.tolist()
    assert data.labels.min() == 0 and data.labels.max() == 9
    assert int(data.images[7, 2, 3, 4]) == int(x[3, 4, 2, 7])  # X is H×W×C×N


def test_corrupt_mat_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "test_32x32.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(200)))
    with pytest.raises(FileFormatError, match=r"test_32x32\.mat"):
        read_svhn_mat(path)


def test_mat_file_without_svhn_variables_is_refused(tmp_path: Path) -> None:
    from scipy.io import savemat

    path = tmp_path / "train_32x32.mat"
    savemat(path, {"images": np.zeros((2, 2), np.uint8)})
    with pytest.raises(FileFormatError, match="'X' and 'y'"):
        read_svhn_mat(path)


def test_image_folder_lists_files_with_class_indices(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path, classes=("b", "a"), per_class={"train": 2})
    data = read_image_folder(tmp_path / "train", ["a", "b"])
    assert data.classes == ("a", "b")
    assert sorted(zip(data.paths, data.labels.tolist(), strict=True)) == sorted(
        (str(p), 1 - label)
        for p, label in written["train"]  # written in order b, a
    )


def test_image_folder_val_class_unknown_to_train_is_refused(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=("a", "b", "c"), per_class={"val": 1})
    with pytest.raises(FileFormatError, match="c"):
        read_image_folder(tmp_path / "val", ["a", "b"])


def test_decode_image_gives_uint8_c_h_w(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path, per_class={"train": 1}, size=(5, 7))
    path = str(written["train"][0][0])
    assert decode_image(path, "RGB").shape == (3, 5, 7)
    gray = decode_image(path, "L")
    assert gray.shape == (1, 5, 7) and gray.dtype == torch.uint8


def test_undecodable_image_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    with pytest.raises(FileFormatError, match=r"broken\.png"):
        decode_image(str(path), "RGB")


def test_unpickler_accepts_pickles_that_name_numpy_core(tmp_path: Path) -> None:
    # Pickles written before NumPy 2 reference numpy.core.multiarray; they must still load.
    data = np.arange(3072, dtype=np.uint8).reshape(1, 3072) % 251
    raw = pickle.dumps({"data": data, "labels": [4]}, protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in raw
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    out = read_cifar_batches([path], "labels")
    assert out.labels.tolist() == [4]
    assert torch.equal(out.images.reshape(1, -1), torch.from_numpy(data))

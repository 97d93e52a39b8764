"""Offline-first lookup: root, then $RANDSPARSE_DATA, then the system folder, then the cache; download only if asked."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torchvision.datasets

from randsparse import data
from randsparse.errors import DatasetNotFoundError
from tests.data.writers import write_mnist_dir


def test_root_may_be_the_datasets_own_folder(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "anything")
    location = data.locate("fashion_mnist", tmp_path / "anything")
    assert (location.found, location.origin, location.path) == (True, "root", tmp_path / "anything")


def test_root_may_be_a_folder_of_datasets(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "FashionMNIST" / "raw")  # torchvision's layout
    location = data.locate("fashion_mnist", tmp_path)
    assert location.path == tmp_path / "FashionMNIST" / "raw" and location.origin == "root"


def test_lookup_order_is_root_then_env_then_system_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_data_dirs: Path
) -> None:
    cache = tmp_path / "cache" / "randsparse" / "data" / "fashion-mnist"
    system = isolated_data_dirs / "fashion-mnist"
    env = tmp_path / "env" / "fashion-mnist"
    root = tmp_path / "root"
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    for directory in (cache, system, env, root):
        write_mnist_dir(directory, n_train=2, n_test=1)
    expected = [(root, "root"), (env, "$RANDSPARSE_DATA"), (system, "system"), (cache, "cache")]
    for directory, origin in expected:
        location = data.locate("fashion_mnist", root if directory == root else None)
        assert (location.path, location.origin) == (directory, origin)
        for path in directory.iterdir():
            path.unlink()  # remove it: the next place in the order is found


def test_env_var_may_list_several_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist_dir(tmp_path / "b" / "mnist", n_train=2, n_test=1)
    monkeypatch.setenv(data.ENV_VAR, f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert data.locate("mnist").path == tmp_path / "b" / "mnist"


def test_missing_dataset_lists_every_folder_looked_in_order(tmp_path: Path, isolated_data_dirs: Path) -> None:
    location = data.locate("mnist", tmp_path)
    assert not location.found and location.origin == "missing" and location.path is None
    assert location.looked[:3] == (tmp_path, tmp_path / "mnist", tmp_path / "MNIST" / "raw")
    assert isolated_data_dirs / "mnist" in location.looked


def test_incomplete_folder_is_not_found(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert not data.locate("mnist", tmp_path).found


def test_bundled_and_generated_sets_are_always_found() -> None:
    digits = data.locate("digits")
    assert digits.origin == "bundled" and digits.path is not None and digits.path.exists()
    for name in ("synthetic", "gaussian", "uniform"):
        assert data.locate(name).origin == "generated" and data.locate(name).found


class _FakeFashionMNIST:
    """Stands in for torchvision's downloader: writes the files where torchvision would."""

    calls: list[tuple[str, bool]] = []  # noqa: RUF012  (shared on purpose: records calls across instances)

    def __init__(self, root: str, train: bool, download: bool) -> None:
        assert download
        self.calls.append((root, train))
        write_mnist_dir(Path(root) / "FashionMNIST" / "raw", n_train=20, n_test=10, gz=True)


@pytest.fixture
def fake_download(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    _FakeFashionMNIST.calls = []
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _FakeFashionMNIST)
    return _FakeFashionMNIST.calls


def test_download_runs_only_when_asked_and_lands_where_lookup_finds_it(tmp_path: Path, fake_download) -> None:
    with pytest.raises(DatasetNotFoundError):
        data.build("fashion_mnist", tmp_path, "test")
    assert fake_download == []
    dataset = data.build("fashion_mnist", tmp_path, "test", download=True)
    assert len(dataset) == 10
    assert fake_download == [(str(tmp_path), True), (str(tmp_path), False)]
    assert data.locate("fashion_mnist", tmp_path).path == tmp_path / "FashionMNIST" / "raw"
    data.build("fashion_mnist", tmp_path, "train", download=True)
    assert len(fake_download) == 2  # found now: no second download


def test_download_without_root_goes_to_the_cache(tmp_path: Path, fake_download) -> None:
    data.build("fashion_mnist", split="test", download=True)
    assert fake_download[0][0] == str(tmp_path / "cache" / "randsparse" / "data")
    assert data.locate("fashion_mnist").origin == "cache"


def test_failed_download_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError, match=r"download into .* failed: .*no network"):
        data.build("cifar10", tmp_path, download=True)


def test_dataset_without_a_downloader_is_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"image-net\.org"):
        data.build("imagenet", tmp_path, download=True)

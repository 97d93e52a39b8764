"""The dataset registry: a decorated factory is a dataset `build`, `locate` and `data list` know."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from randsparse import data
from randsparse.data import registry
from randsparse.data.registry import ImageTensor
from randsparse.errors import ConfigError


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_ENTRIES", registry._ENTRIES.copy())


def test_a_registered_file_dataset_is_located_and_built(scratch_registry, tmp_path: Path) -> None:
    def read(directory: Path | None, split: str) -> ImageTensor:
        array = np.load(directory / f"{split}.npy")
        return ImageTensor(torch.from_numpy(array), torch.arange(len(array)) % 2)

    @data.register_dataset("tiny", dirnames=("tiny",), files=("train.npy", "test.npy"))
    def tiny(crop_padding: int = 0) -> data.Recipe:
        """Two-class 4×4 RGB toy set stored as .npy."""
        info = data.DatasetInfo("tiny", 2, 3, 4, (0.5,) * 3, (0.25,) * 3, 10, 4)
        return data.Recipe(info, read, data.Augmentation(crop_padding))

    (tmp_path / "tiny").mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        np.save(tmp_path / "tiny" / f"{split}.npy", rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8))
    assert "tiny" in data.available_datasets()
    assert data.locate("tiny", tmp_path).path == tmp_path / "tiny"
    assert len(data.build("tiny", tmp_path, "test")) == 4
    assert len(data.build("tiny", tmp_path, "train", val_fraction=0.2)) == 8
    assert data.build("tiny", tmp_path, crop_padding=1).augmentation == data.Augmentation(1)
    assert registry.get_entry("tiny").description == "Two-class 4×4 RGB toy set stored as .npy."


def test_registering_a_name_twice_is_refused(scratch_registry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        data.register_dataset("mnist")(lambda: None)


def test_dataset_info_rejects_statistics_of_the_wrong_length() -> None:
    with pytest.raises(ConfigError, match="one value per channel"):
        data.DatasetInfo("x", 10, 3, 32, (0.5,), (0.2,))
    with pytest.raises(ConfigError, match="positive"):
        data.DatasetInfo("x", 10, 1, 32, (0.5,), (0.0,))


def test_every_registered_dataset_describes_itself_and_its_options() -> None:
    for name in data.available_datasets():
        entry = registry.get_entry(name)
        assert entry.description, name
        assert "directory" not in entry.options and "like" not in entry.options

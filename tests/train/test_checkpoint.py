"""Checkpoint files and RNG states."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from randsparse.errors import FileFormatError
from randsparse.train.checkpoint import (
    Progress,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)


def _payload() -> dict:
    return {
        "config_hash": "abc",
        "model": {"w": torch.ones(2)},
        "progress": Progress(epoch=2, history=[{"epoch": 1}]).to_dict(),
        "rng": rng_states(),
    }


def test_rng_states_round_trip_for_torch_numpy_and_python() -> None:
    states = rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_checkpoint_round_trips_through_the_safe_loader(tmp_path) -> None:
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, _payload())
    state = load_checkpoint(path)
    assert state["config_hash"] == "abc"
    assert Progress.from_dict(state["progress"]).epoch == 2
    restore_rng_states(state["rng"])


def test_missing_checkpoint_is_named(tmp_path) -> None:
    with pytest.raises(FileFormatError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize("content", [b"", b"garbage bytes", None], ids=["empty", "garbage", "truncated"])
def test_corrupt_checkpoint_is_a_file_format_error(tmp_path, content) -> None:
    path = tmp_path / "last.pt"
    if content is None:
        save_checkpoint(path, _payload())
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match="corrupt or unreadable"):
        load_checkpoint(path)


def test_foreign_and_incomplete_files_are_refused(tmp_path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(FileFormatError, match="not a randsparse checkpoint"):
        load_checkpoint(foreign)
    incomplete = tmp_path / "incomplete.pt"
    save_checkpoint(incomplete, {"config_hash": "x"})
    with pytest.raises(FileFormatError, match="incomplete"):
        load_checkpoint(incomplete)

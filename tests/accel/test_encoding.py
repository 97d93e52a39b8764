"""Mask encodings of the export format: exact round trips, the smallest pick, corrupt payloads refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from randsparse.accel.encoding import available_encodings, decode_mask, encode_mask, payload_bytes
from randsparse.errors import FileFormatError, UnknownNameError

SHAPES = [(1,), (7,), (3, 5), (16, 3, 3, 3), (10, 1024), (4, 2, 1, 9)]


def _mask(shape: tuple[int, ...], density: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) < density


@pytest.mark.parametrize("encoding", ["bitmap", "delta", "csr"])
@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from(SHAPES),
    density=st.sampled_from([0.0, 0.001, 0.05, 0.3, 0.9, 1.0]),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_every_encoding_round_trips_any_mask_exactly(encoding: str, shape, density: float, seed: int) -> None:
    mask = _mask(shape, density, seed)
    used, payload = encode_mask(mask, encoding)
    assert used == encoding
    decoded = decode_mask(used, payload, shape, int(mask.sum()))
    assert decoded.shape == mask.shape
    assert torch.equal(decoded, mask)


@pytest.mark.parametrize("gap", [1, 254, 255, 256, 510, 511, 1000])
def test_delta_encodes_gaps_around_the_escape_limit(gap: int) -> None:
    mask = torch.zeros(3 * gap + 5, dtype=torch.bool)
    mask[[gap - 1, 2 * gap - 1, 3 * gap - 1]] = True
    _, payload = encode_mask(mask, "delta")
    assert torch.equal(decode_mask("delta", payload, tuple(mask.shape), 3), mask)


@pytest.mark.parametrize("density", [0.002, 0.05, 0.5])
def test_auto_picks_the_smallest_encoding(density: float) -> None:
    mask = _mask((256, 576), density, 0)
    used, payload = encode_mask(mask, "auto")
    sizes = {name: payload_bytes(encode_mask(mask, name)[1]) for name in available_encodings()}
    assert payload_bytes(payload) == min(sizes.values())
    assert sizes[used] == min(sizes.values())


def test_bitmap_wins_when_dense_and_delta_when_sparse() -> None:
    assert encode_mask(_mask((64, 576), 0.5, 1))[0] == "bitmap"
    assert encode_mask(_mask((64, 576), 0.05, 1))[0] == "delta"


def test_unknown_encoding_is_a_named_error() -> None:
    with pytest.raises(UnknownNameError, match="zip"):
        encode_mask(torch.ones(3, dtype=torch.bool), "zip")
    with pytest.raises(FileFormatError, match="zip"):
        decode_mask("zip", {}, (3,), 3)


@pytest.mark.parametrize(
    ("encoding", "payload", "kept"),
    [
        ("bitmap", {"bits": torch.zeros(1, dtype=torch.uint8)}, 0),  # 100 weights need 13 bytes
        ("bitmap", {"bits": torch.zeros(13, dtype=torch.int32)}, 0),  # wrong dtype
        ("bitmap", {}, 0),  # missing entry
        ("delta", {"gaps": torch.tensor([1, 1], dtype=torch.uint8)}, 3),  # 2 positions, not 3
        ("delta", {"gaps": torch.tensor([200, 0, 0], dtype=torch.uint8)}, 0),  # escapes only, but fine count
        ("delta", {"gaps": torch.tensor([255, 255], dtype=torch.uint8)}, 2),  # position 509 beyond 100
        ("csr", {"crow": torch.tensor([0, 2], dtype=torch.int32), "col": torch.tensor([1, 2], dtype=torch.int16)}, 2),
        (
            "csr",
            {"crow": torch.tensor([0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]), "col": torch.tensor([1, 10], dtype=torch.int16)},
            2,
        ),  # column 10 of 10
        (
            "csr",
            {"crow": torch.tensor([0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]), "col": torch.tensor([3, 3], dtype=torch.int16)},
            2,
        ),  # a column twice
    ],
)
def test_corrupt_payloads_raise_file_format_error(encoding: str, payload: dict, kept: int) -> None:
    shape = (10, 10)
    if encoding == "delta" and kept == 0:  # [200, 0, 0]: valid stream with no weight; claim one
        kept = 1
    with pytest.raises(FileFormatError):
        decode_mask(encoding, payload, shape, kept)


def test_delta_is_about_one_byte_per_kept_weight_at_five_percent() -> None:
    mask = _mask((512, 4608), 0.05, 3)
    kept = int(mask.sum())
    size = payload_bytes(encode_mask(mask, "delta")[1])
    assert kept <= size <= 1.01 * kept
    assert size < np.ceil(mask.numel() / 8)

"""Tensor transforms against torchvision's reference ops: batched crop/flip, normalisation, conversions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as tvf

from randsparse.data import transforms
from randsparse.data.registry import Augmentation
from randsparse.data.transforms import (
    convert_channels,
    crop_flip,
    normalizer,
    random_resized_crop_box,
    resize_square,
    to_float,
)
from randsparse.errors import ConfigError


def reference_views(image: torch.Tensor, augmentation: Augmentation) -> list[torch.Tensor]:
    """Every image torchvision's pad + crop (+ flip) can make from `image`: the allowed outputs."""
    p = augmentation.crop_padding
    h, w = image.shape[-2:]
    mode = "constant" if augmentation.padding_mode == "zeros" else "reflect"
    padded = tvf.pad(image, [p, p, p, p], padding_mode=mode) if p else image
    views = []
    for top in range(2 * p + 1):
        for left in range(2 * p + 1):
            crop = tvf.crop(padded, top, left, h, w)
            views.append(crop)
            if augmentation.hflip:
                views.append(tvf.horizontal_flip(crop))
    return views


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    channels=st.sampled_from([1, 3]),
    h=st.integers(5, 9),
    w=st.integers(5, 9),
    padding=st.integers(0, 4),
    mode=st.sampled_from(["zeros", "reflect"]),
    hflip=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_crop_flip_output_is_one_of_torchvisions_pad_crop_flip_views(n, channels, h, w, padding, mode, hflip, seed):
    augmentation = Augmentation(padding, mode, hflip)
    images = torch.randint(0, 256, (n, channels, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = crop_flip(images, augmentation, torch.Generator().manual_seed(seed))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for image, result in zip(images, out, strict=True):
        assert any(torch.equal(result, view) for view in reference_views(image, augmentation))


def test_crop_flip_draws_every_offset_and_both_orientations() -> None:
    # A single bright pixel in a dark image reveals each output's offset and orientation.
    n, size, p = 4000, 7, 2
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, 0, 3, 1] = 255
    out = crop_flip(images, Augmentation(p, "zeros", True), torch.Generator().manual_seed(0))
    visible = out.flatten(1).argmax(1)[out.flatten(1).amax(1) > 0]
    positions = {(int(i) // size, int(i) % size) for i in visible}
    # rows 3 + dy for dy in -2..2; columns 1 + dx or, flipped, 5 - dx
    expected = {(3 + dy, c) for dy in range(-p, p + 1) for dx in range(-p, p + 1) for c in (1 + dx, 5 - dx)}
    expected = {(r, c) for r, c in expected if 0 <= r < size and 0 <= c < size}
    assert positions == expected


def test_crop_flip_is_deterministic_given_the_generator() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    augmentation = Augmentation(3, "reflect", True)
    a = crop_flip(images, augmentation, torch.Generator().manual_seed(5))
    b = crop_flip(images, augmentation, torch.Generator().manual_seed(5))
    c = crop_flip(images, augmentation, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_identity_augmentation_returns_the_batch_untouched() -> None:
    images = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    assert crop_flip(images, Augmentation(), torch.Generator()) is images


def test_reflect_padding_wider_than_the_image_is_refused() -> None:
    with pytest.raises(ConfigError, match="reflect"):
        crop_flip(torch.zeros(1, 1, 3, 3, dtype=torch.uint8), Augmentation(3, "reflect"), torch.Generator())


@pytest.mark.parametrize("kwargs", [{"crop_padding": -1}, {"crop_padding": 1.5}, {"padding_mode": "edge"}])
def test_bad_augmentation_is_a_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Augmentation(**kwargs)


def test_to_float_matches_torchvisions_to_dtype_and_normalize() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    expected = tvf.normalize(tvf.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
    torch.testing.assert_close(to_float(images, *normalizer(mean, std, 3)), expected, atol=1e-5, rtol=1e-5)
    raw = to_float(images, *normalizer(None, None, 3))
    torch.testing.assert_close(raw, images.float() / 255, atol=1e-6, rtol=0)


def test_gray_to_rgb_repeats_and_back_is_the_same_gray() -> None:
    gray = torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8)
    rgb = convert_channels(gray, 3)
    assert rgb.shape == (2, 3, 6, 6) and all(torch.equal(rgb[:, c : c + 1], gray) for c in range(3))
    assert (convert_channels(rgb, 1).int() - gray.int()).abs().max() <= 1


def test_unsupported_channel_conversion_is_refused() -> None:
    with pytest.raises(ConfigError, match="channels"):
        convert_channels(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), 3)


def test_resize_in_chunks_equals_one_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    whole = resize_square(images, 28)
    monkeypatch.setattr(transforms, "_CHUNK", 3)
    assert whole.shape == (10, 1, 28, 28) and torch.equal(resize_square(images, 28), whole)


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_random_resized_crop_box_lies_inside_the_image(h: int, w: int, seed: int) -> None:
    top, left, bh, bw = random_resized_crop_box(h, w, torch.Generator().manual_seed(seed))
    assert top >= 0 and left >= 0 and bh > 0 and bw > 0
    assert top + bh <= h and left + bw <= w


def test_random_resized_crop_box_follows_scale_and_ratio_on_a_large_image() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        _, _, bh, bw = random_resized_crop_box(1000, 1000, generator)
        assert 0.08 * 1e6 * 0.97 <= bh * bw <= 1e6
        assert 3 / 4 - 0.02 <= bw / bh <= 4 / 3 + 0.02 or math.isclose(bh * bw, 1e6, rel_tol=0.05)

"""Image transforms as tensor ops: batched crop/flip on uint8, normalisation, conversion to another set's look.

Random transforms draw from an explicit `torch.Generator`, never the global RNG. The batched
crop-and-flip picks each image's window out of one padded batch, so a batch of 128 Fashion-MNIST
images costs a few hundred microseconds, with no PIL round trip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from randsparse.data.registry import Augmentation
from randsparse.errors import ConfigError


def _tvf() -> Any:
    """torchvision's functional transforms, imported on first use (importing torchvision takes seconds)."""
    from torchvision.transforms.v2 import functional

    return functional


# Images converted per chunk when resizing a whole in-memory set: bounds the float temporaries.
_CHUNK = 4096


def crop_flip(images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """A random `crop_padding`-padded crop and optional horizontal flip of each image of a uint8 N×C×H×W batch.

    Equivalent to padding each image by `p` pixels (zeros, or reflection without repeating the
    edge), taking an H×W crop at a uniformly random offset in [0, 2p] on each axis, then flipping it
    with probability 1/2. Every crop is a window of one padded batch (`unfold` views), so the batch
    is copied once, by a single indexing op.
    """
    if augmentation.is_identity or images.shape[0] == 0:
        return images
    n, _, h, w = images.shape
    p = augmentation.crop_padding
    if augmentation.padding_mode == "reflect" and p >= min(h, w):
        raise ConfigError(f"reflect padding of {p} needs images larger than {p} pixels, got {h}×{w}")
    mode = "constant" if augmentation.padding_mode == "zeros" else "reflect"
    source = torch.nn.functional.pad(images, (p, p, p, p), mode=mode) if p else images
    top, left = torch.randint(0, 2 * p + 1, (2, n), generator=generator) if p else torch.zeros(2, n, dtype=torch.int64)
    batch = torch.arange(n)
    if not augmentation.hflip:
        return source.unfold(2, h, 1).unfold(3, w, 1)[batch, :, top, left]
    flip = (torch.rand(n, generator=generator) < 0.5).long()
    both = torch.stack([source, source.flip(3)])  # 2×N×C×(H+2p)×(W+2p)
    # Flipping the crop at `left` is cropping the flipped padded image at 2p - left.
    left = torch.where(flip.bool(), 2 * p - left, left)
    return both.unfold(3, h, 1).unfold(4, w, 1)[flip, batch, :, top, left]


def normalizer(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each C×1×1, with `uint8 * scale + shift` = `(x / 255 - mean) / std`.

    Without statistics (`mean` or `std` None) the pair maps uint8 to `x / 255`, pixels in [0, 1].
    """
    if mean is None or std is None:
        return torch.full((channels, 1, 1), 1 / 255), torch.zeros(channels, 1, 1)
    m = torch.tensor(mean, dtype=torch.float64).reshape(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).reshape(-1, 1, 1)
    return (1 / (255 * s)).float(), (-m / s).float()


def to_float(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 images (…×C×H×W) to normalised float32, in two fused tensor ops."""
    return torch.addcmul(shift, images.float(), scale)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 …×C×H×W images with `channels` channels: gray repeated to RGB, RGB to gray by ITU-R 601 luma."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
    if have == 3 and channels == 1:
        return _tvf().rgb_to_grayscale(images, num_output_channels=1)
    raise ConfigError(f"cannot convert images with {have} channels to {channels} channels (only gray <-> RGB)")


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 …×C×H×W images resized to size×size (bilinear, antialiased), chunk by chunk for large sets."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    if images.ndim == 3:
        return _tvf().resize(images, [size, size], antialias=True)
    chunks = [_tvf().resize(chunk, [size, size], antialias=True) for chunk in images.split(_CHUNK)]
    return torch.cat(chunks) if chunks else images.new_empty((0, images.shape[1], size, size))


def look_like(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 images converted to `channels` channels and size×size pixels."""
    return resize_square(convert_channels(images, channels), size)


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style random crop: area fraction in `scale`, aspect ratio in `ratio`.

    Tries 10 draws (as torchvision's RandomResizedCrop does), then falls back to the largest
    centred crop whose aspect ratio lies in `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def folder_train_view(image: torch.Tensor, size: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Training view of a decoded uint8 C×H×W image: random resized crop to size×size, then maybe a flip."""
    top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], generator)
    out = _tvf().resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if hflip and bool(torch.rand((), generator=generator) < 0.5):
        out = out.flip(-1)
    return out


def folder_eval_view(image: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    """Evaluation view of a decoded uint8 C×H×W image: shorter side to `resize`, then a centred size×size crop."""
    return _tvf().center_crop(_tvf().resize(image, resize, antialias=True), [size, size])

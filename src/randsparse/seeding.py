"""Seeds: every derived seed and random stream of the package, and the seeding of the global RNGs.

One home for seed derivation, so that a seed means the same thing everywhere. Three derivations
exist because their values are pinned (masks, data splits and data order must never change):

- `mix` combines integers (seed, epoch, step, rank ...) into one 63-bit seed (training data order,
  per-batch augmentation seeds, per-rank streams);
- `derive` / `seeded_generator` give the seed / `torch.Generator` of one named purpose (data
  splits, synthetic and noise sets, loader workers);
- `layer_generator` gives a layer's NumPy mask stream, `SeedSequence([seed, sha256(name)])`.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from torch.utils.data import get_worker_info

from randsparse.errors import ConfigError, is_integer

_GOLDEN = 0x9E3779B97F4A7C15


def mix(*values: int) -> int:
    """Combine non-negative integers into one 63-bit seed (different inputs give unrelated streams).

    A boost-style ``hash_combine`` over the 64-bit golden ratio, reduced mod 2**63.
    """
    seed = _GOLDEN
    for value in values:
        seed = (seed ^ (value + _GOLDEN + (seed << 6) + (seed >> 2))) % 2**63
    return seed


def derive(seed: int, purpose: str) -> int:
    """A 63-bit seed for one `purpose` (e.g. ``"validation split"``) from `seed`; independent across purposes."""
    state = np.random.SeedSequence([seed, *purpose.encode()]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def seeded_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU `torch.Generator` for one `purpose`, seeded with `derive(seed, purpose)`."""
    return torch.Generator().manual_seed(derive(seed, purpose))


def layer_generator(seed: int, name: str) -> np.random.Generator:
    """The random stream of layer `name` under `seed`: independent of every other layer (NumPy PCG64)."""
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:16], "little")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, name_key])))


def seed_from(seed: int | torch.Generator) -> int:
    """A non-negative integer seed; a `torch.Generator` is advanced once to provide it.

    Raises `ConfigError` for anything else (a negative number, a bool, a float).
    """
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed).item())
    if not is_integer(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def seed_python_and_numpy(seed: int) -> None:
    """Seed Python's `random` and NumPy's global RNG (NumPy takes the seed mod 2**32)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs a training process uses (model init, augmentation, dropout): Python, NumPy, torch."""
    seed_python_and_numpy(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """`worker_init_fn`: seed Python's and NumPy's RNGs in a DataLoader worker from its torch seed (for transforms)."""
    info = get_worker_info()
    seed_python_and_numpy(info.seed if info is not None else torch.initial_seed())

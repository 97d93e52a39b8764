"""`MaskSet`: named boolean masks (True = weight kept), drawn at random, saved compactly.

Each layer's mask comes from its own random stream, derived from the seed and the layer's name,
so adding or removing another layer never changes it, and the draw happens on the CPU so it does
not depend on the device either.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from randsparse.errors import ConfigError, FileFormatError, MaskMismatchError, first_line, is_integer
from randsparse.seeding import layer_generator, seed_from
from randsparse.sparsity.layers import Shape, owning_module
from randsparse.storage import atomic_torch_save, read_torch

Sampling = Literal["exact", "bernoulli"]
SAMPLING_MODES: tuple[str, ...] = ("exact", "bernoulli")

_STATE_FORMAT = "randsparse.maskset/packbits-v1"


def kept_count(density: float, size: int) -> int:
    """Number of weights an exact draw keeps in a layer of `size` weights at `density`."""
    return min(size, max(0, round(density * size)))


# Elements per block when drawing: bounds the temporary memory of a draw to a few MiB per layer.
_BLOCK = 1 << 20


def _draw_exact(rng: np.random.Generator, size: int, keep: int) -> np.ndarray:
    """Uniformly random boolean vector with exactly `keep` True entries.

    Draw i.i.d. Bernoulli(keep/size), then drop (or add) the surplus at random among the set
    (unset) positions. Every step treats positions symmetrically, so the result is uniform over
    all subsets of size `keep`; it costs O(size) with small constants, unlike a full permutation,
    and beyond the mask itself only O(block + surplus) memory.
    """
    if keep == 0:
        return np.zeros(size, dtype=bool)
    if keep == size:
        return np.ones(size, dtype=bool)
    mask = _draw_bernoulli(rng, size, keep / size)
    surplus = int(np.count_nonzero(mask)) - keep
    if surplus != 0:
        flip_value = surplus > 0  # drop set positions, or set dropped ones
        candidates = keep + surplus if flip_value else size - keep - surplus
        ranks = np.sort(rng.choice(candidates, size=abs(surplus), replace=False))
        mask[_positions_of_ranks(mask, flip_value, ranks)] = not flip_value
    return mask


def _positions_of_ranks(mask: np.ndarray, value: bool, ranks: np.ndarray) -> np.ndarray:
    """Positions of the `ranks`-th (sorted, 0-based) entries of `mask` equal to `value`, block by block."""
    positions = []
    seen = 0
    cursor = 0
    for start in range(0, mask.size, _BLOCK):
        block = mask[start : start + _BLOCK]
        count = int(np.count_nonzero(block)) if value else block.size - int(np.count_nonzero(block))
        end = int(np.searchsorted(ranks, seen + count, side="left"))
        if end > cursor:
            local = np.flatnonzero(block) if value else np.flatnonzero(~block)
            positions.append(start + local[ranks[cursor:end] - seen])
            cursor = end
        seen += count
    return np.concatenate(positions)


def _draw_bernoulli(rng: np.random.Generator, size: int, density: float) -> np.ndarray:
    """Per-element Bernoulli(density) draw, as the paper's code does (count is random)."""
    mask = np.empty(size, dtype=bool)
    for start in range(0, size, _BLOCK):
        stop = min(size, start + _BLOCK)
        np.less(rng.random(stop - start, dtype=np.float32), density, out=mask[start:stop])
    return mask


@dataclass(frozen=True)
class LayerSummary:
    """One row of a mask summary: what a layer is and how much of it is kept."""

    name: str
    shape: Shape
    params: int
    kept: int

    @property
    def density(self) -> float:
        """Fraction of this layer's weights kept."""
        return self.kept / self.params if self.params else 0.0


class MaskSet(Mapping[str, torch.Tensor]):
    """Ordered mapping from prunable weight name to a boolean mask of the weight's shape."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self._masks: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"mask {name!r} must be a bool tensor")
            self._masks[name] = mask

    # Mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} layers, density={self.density():.6f})"

    @classmethod
    def random(
        cls,
        shapes: Mapping[str, Shape],
        densities: Mapping[str, float],
        seed: int | torch.Generator,
        sampling: Sampling = "exact",
    ) -> MaskSet:
        """Draw a random mask per layer at the given densities.

        `sampling="exact"` keeps ``round(density * size)`` positions chosen uniformly without
        replacement (of each block, for a `LayerShape` whose geometry stacks `blocks` projections:
        q, k and v of an attention's ``in_proj_weight`` keep ``round(density * E²)`` each);
        ``"bernoulli"`` keeps each weight independently with probability `density`.
        """
        if sampling not in SAMPLING_MODES:
            raise ConfigError(f"unknown sampling {sampling!r}; known: {', '.join(SAMPLING_MODES)}")
        for name in shapes:
            if name not in densities:
                raise ConfigError(f"no density given for layer {name!r}")
            if not (0.0 <= densities[name] <= 1.0):
                raise ConfigError(f"density of layer {name!r} must lie in [0, 1], got {densities[name]!r}")
        base = seed_from(seed)
        masks: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            size = math.prod(shape)
            rng = layer_generator(base, name)
            if sampling == "exact":
                # A weight stacking projections (q, k, v of an attention) keeps the exact count of
                # each: its blocks are drawn one after the other from the layer's stream.
                blocks = getattr(getattr(shape, "geometry", None), "blocks", 1)
                block = size // blocks
                parts = [_draw_exact(rng, block, kept_count(densities[name], block)) for _ in range(blocks)]
                flat = parts[0] if blocks == 1 else np.concatenate(parts)
            else:
                flat = _draw_bernoulli(rng, size, densities[name])
            masks[name] = torch.from_numpy(flat).reshape(shape)
        return cls(masks)

    @classmethod
    def ones(cls, shapes: Mapping[str, Shape]) -> MaskSet:
        """All-kept masks: the dense network expressed as a mask set."""
        return cls({n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()})

    @property
    def shapes(self) -> dict[str, Shape]:
        """`{name: shape}` of the masks."""
        return {n: tuple(m.shape) for n, m in self._masks.items()}

    def summary(self) -> list[LayerSummary]:
        """Per-layer name, shape, size and kept count, in order."""
        return [LayerSummary(n, tuple(m.shape), m.numel(), int(m.count_nonzero())) for n, m in self._masks.items()]

    def num_params(self) -> int:
        """Number of prunable weights covered by the masks."""
        return sum(m.numel() for m in self._masks.values())

    def num_kept(self) -> int:
        """Number of weights the masks keep."""
        return sum(int(m.count_nonzero()) for m in self._masks.values())

    def density(self) -> float:
        """Realised global density over the masked weights."""
        total = self.num_params()
        return self.num_kept() / total if total else 0.0

    def to(self, device: torch.device | str) -> MaskSet:
        """The same masks on `device`."""
        return MaskSet({n: m.to(device) for n, m in self._masks.items()})

    def equal(self, other: Mapping[str, torch.Tensor]) -> bool:
        """True when `other` holds the same names, in the same order, with identical masks."""
        return list(self) == list(other) and all(torch.equal(m.cpu(), other[n].cpu()) for n, m in self._masks.items())

    # Persistence: bit-packed, about size/8 bytes per layer.
    def state_dict(self) -> dict[str, Any]:
        """Compact, `torch.save`-able form: shapes plus bit-packed masks."""
        return {
            "format": _STATE_FORMAT,
            "masks": {
                n: {
                    "shape": list(m.shape),
                    "bits": torch.from_numpy(np.packbits(m.detach().cpu().numpy().reshape(-1))),
                }
                for n, m in self._masks.items()
            },
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> MaskSet:
        """Rebuild a mask set written by `state_dict`; malformed input is a `MaskMismatchError`."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise MaskMismatchError("not a randsparse mask state (missing or unknown 'format')")
        entries = state.get("masks")
        if not isinstance(entries, Mapping):
            raise MaskMismatchError("mask state has no 'masks' mapping")
        masks: dict[str, torch.Tensor] = {}
        for name, entry in entries.items():
            try:
                if not isinstance(name, str):
                    raise TypeError(f"layer name {name!r} is not a string")
                if not isinstance(entry, Mapping):
                    raise TypeError("entry is not a mapping")
                raw_shape = entry["shape"]
                if not isinstance(raw_shape, (list, tuple)) or not all(is_integer(d) and d >= 0 for d in raw_shape):
                    raise ValueError(f"shape {raw_shape!r} is not a list of non-negative integers")
                shape = tuple(raw_shape)
                bits = entry["bits"]
                if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or bits.dim() != 1:
                    raise TypeError("'bits' is not a 1-D uint8 tensor")
                size = math.prod(shape)
                if bits.numel() != (size + 7) // 8:
                    raise ValueError("bit count does not match the shape")
                flat = np.unpackbits(bits.cpu().numpy(), count=size).astype(bool)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise MaskMismatchError(f"corrupt mask entry {name!r}: {first_line(exc)}") from None
            masks[name] = torch.from_numpy(flat).reshape(shape)
        return cls(masks)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace these masks by those in `state` (as written by `state_dict`)."""
        self._masks = dict(MaskSet.from_state_dict(state)._masks)

    # Relation to a model
    def validate(self, model: nn.Module, expected: Iterable[str] | None = None) -> None:
        """Raise `MaskMismatchError` naming the first layer whose name or shape does not fit.

        With `expected` (e.g. the model's prunable layers), the masks must cover exactly those
        names: a model layer without a mask is a mismatch too.
        """
        params = dict(model.named_parameters(remove_duplicate=False))
        if expected is not None:
            expected = list(expected)
            for name in expected:
                if name not in self._masks:
                    raise MaskMismatchError(
                        f"the model's prunable layer {name!r} has no mask (the masks cover"
                        f" {len(self)} layers, the model has {len(expected)})"
                    )
            wanted = set(expected)
            for name in self._masks:
                if name not in wanted and name in params:
                    raise MaskMismatchError(f"mask for {name!r}, which is not a prunable layer of the model")
        for name, mask in self._masks.items():
            if name not in params:
                raise MaskMismatchError(f"mask for {name!r}, but the model has no such parameter")
            if tuple(params[name].shape) != tuple(mask.shape):
                raise MaskMismatchError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, but the model's parameter"
                    f" has shape {tuple(params[name].shape)}"
                )

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero every pruned weight of `model` in place (after validating the fit)."""
        self.validate(model)
        for name, mask in self._masks.items():
            module, attr = owning_module(model, name)
            weight = getattr(module, attr)
            weight.mul_(mask.to(weight.device))
        return model


_FILE_KEY = "randsparse_masks"
FILE_KIND = "masks"  # the kind sealed into the file (see randsparse.storage)
# Metadata keys `save_masks` callers write, and the types a reader may rely on.
_METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "distribution": (str,),
    "mask_mode": (str,),
    "sampling": (str,),
    "sparsity": (int, float),
    "seed": (int,),
    "include": (str,),  # regexes of PrunableSelector
    "exclude": (str,),
}


def save_masks(masks: MaskSet, path: str | Path, **metadata: Any) -> None:
    """Write `masks` (bit-packed) and JSON-like `metadata` to `path` atomically, sealed with its checksum."""
    atomic_torch_save({_FILE_KEY: masks.state_dict(), "metadata": metadata}, path, kind=FILE_KIND)


def load_masks(path: str | Path) -> tuple[MaskSet, dict[str, Any]]:
    """Read a mask file written by `save_masks`: the masks and their metadata.

    Raises `FileFormatError` naming the file when it is missing, damaged (checksum mismatch), not a
    mask file, or holds malformed masks (negative or non-integer shapes, wrong bit counts) or
    metadata of the wrong type (e.g. a string where a list of layer patterns belongs).
    """
    path = Path(path)
    content, kind = read_torch(path, "mask file")
    if not isinstance(content, dict) or _FILE_KEY not in content or kind not in (None, FILE_KIND):
        raise FileFormatError(f"{str(path)!r} is not a randsparse mask file")
    try:
        masks = MaskSet.from_state_dict(content[_FILE_KEY])
    except MaskMismatchError as exc:
        raise FileFormatError(f"mask file {str(path)!r} is corrupt: {exc}") from None
    metadata = content.get("metadata")
    metadata = {} if metadata is None else metadata
    problem = _metadata_problem(metadata)
    if problem:
        raise FileFormatError(f"mask file {str(path)!r} has bad metadata: {problem}")
    return masks, dict(metadata)


def _metadata_problem(metadata: Any) -> str | None:
    """What is wrong with a mask file's metadata, or None."""
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        return "not a mapping of names to values"
    for key, types in _METADATA_TYPES.items():
        value = metadata.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            return f"{key!r} is a {type(value).__name__}, not {' or '.join(t.__name__ for t in types)}"
    return None

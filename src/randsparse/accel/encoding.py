"""On-disk encodings of a pruned weight's positions: a registry of mask codecs and the smallest-pick rule.

A pruned weight is stored as its kept values (row-major order, the weight's own dtype) plus one
of these encodings of *where* they are:

- ``bitmap``: one bit per weight (`numpy.packbits`): ``numel / 8`` bytes whatever the density.
- ``delta``: one byte per kept weight holding the gap to the previous one (1..255), plus one
  escape byte (0 = "skip 255") per 255 positions of longer gaps: about ``kept`` bytes when the
  density is above 1/255, i.e. ``8 · density`` bits per weight.
- ``csr``: row pointers (int32) and per-row column indices in the smallest integer type that
  holds them (int16 for rows up to 32 767 columns), with rows = the weight's first dimension.

Per weight, the bitmap costs 1 bit, delta about ``8 · density`` bits and CSR ``16 · density`` bits
plus the row pointers: the bitmap is smallest above a density of 1/8, delta below it, and CSR only
at extreme sparsity (below about 1/255, where delta's escape bytes add up); CSR is also the form
other tools read. ``auto`` picks the smallest for each layer, which is what
`randsparse.accel.export_model` writes by default. Values are never rounded: the exported model
computes exactly what the masked one does. Decoding
checks every invariant and raises `FileFormatError` on a corrupt payload.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from randsparse.errors import FileFormatError, UnknownNameError
from randsparse.registry import Registry

Payload = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Codec:
    """How one encoding turns a flat boolean mask into tensors and back."""

    name: str
    encode: Callable[[np.ndarray, tuple[int, ...]], Payload]
    decode: Callable[[Mapping[str, torch.Tensor], tuple[int, ...], int], np.ndarray]


_CODECS: Registry[Codec] = Registry("encoding")


def register_encoding(name: str) -> Callable[[type], type]:
    """Class decorator adding a codec (a class with static `encode` and `decode`) under `name`."""

    def decorate(cls: type) -> type:
        _CODECS.add(name, Codec(name, cls.encode, cls.decode))
        return cls

    return decorate


def available_encodings() -> list[str]:
    """Names of the registered encodings (``auto`` picks among them)."""
    return _CODECS.names()


def codec(name: str) -> Codec:
    """The codec registered as `name`."""
    if name not in _CODECS:
        raise UnknownNameError("encoding", name, [*_CODECS, "auto"])
    return _CODECS[name]


def payload_bytes(payload: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the tensors of an encoded payload (container overhead aside)."""
    return sum(t.numel() * t.element_size() for t in payload.values())


def encode_mask(mask: torch.Tensor, encoding: str = "auto") -> tuple[str, Payload]:
    """Encode `mask` with `encoding`, or with the smallest registered one for ``"auto"``."""
    flat = mask.detach().cpu().reshape(-1).numpy().astype(bool, copy=False)
    shape = tuple(int(d) for d in mask.shape)
    if encoding != "auto":
        return encoding, codec(encoding).encode(flat, shape)
    best: tuple[str, Payload] | None = None
    for name in available_encodings():
        payload = _CODECS[name].encode(flat, shape)
        if best is None or payload_bytes(payload) < payload_bytes(best[1]):
            best = (name, payload)
    assert best is not None
    return best


def decode_mask(encoding: str, payload: Mapping[str, torch.Tensor], shape: tuple[int, ...], kept: int) -> torch.Tensor:
    """The boolean mask of `shape` with `kept` True entries that `payload` encodes."""
    try:
        found = _CODECS[encoding]
    except KeyError:
        raise FileFormatError(f"unknown mask encoding {encoding!r}") from None
    try:
        flat = found.decode(payload, shape, kept)
    except FileFormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise FileFormatError(f"corrupt {encoding} payload: {exc}") from None
    if flat.dtype != np.bool_ or flat.size != int(np.prod(shape)) or int(np.count_nonzero(flat)) != kept:
        raise FileFormatError(f"corrupt {encoding} payload: it does not describe {kept} kept weights of shape {shape}")
    return torch.from_numpy(flat).reshape(shape)


def _array(payload: Mapping[str, torch.Tensor], key: str, dtypes: tuple[torch.dtype, ...]) -> np.ndarray:
    tensor = payload[key]
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in dtypes or tensor.dim() != 1:
        raise FileFormatError(f"payload entry {key!r} must be a 1-D tensor of {', '.join(map(str, dtypes))}")
    return tensor.numpy()


@register_encoding("bitmap")
class Bitmap:
    """One bit per weight."""

    @staticmethod
    def encode(flat: np.ndarray, shape: tuple[int, ...]) -> Payload:
        return {"bits": torch.from_numpy(np.packbits(flat))}

    @staticmethod
    def decode(payload: Mapping[str, torch.Tensor], shape: tuple[int, ...], kept: int) -> np.ndarray:
        bits = _array(payload, "bits", (torch.uint8,))
        size = int(np.prod(shape))
        if bits.size != (size + 7) // 8:
            raise FileFormatError(f"bitmap holds {bits.size} bytes, a weight of shape {shape} needs {(size + 7) // 8}")
        return np.unpackbits(bits, count=size).astype(bool)


_GAP_LIMIT = 255


@register_encoding("delta")
class Delta:
    """Gaps between kept positions in bytes; 0 is an escape meaning "advance 255, no weight here"."""

    @staticmethod
    def encode(flat: np.ndarray, shape: tuple[int, ...]) -> Payload:
        positions = np.flatnonzero(flat)
        gaps = np.diff(positions, prepend=-1)
        escapes = (gaps - 1) // _GAP_LIMIT
        stream = np.zeros(int(escapes.sum()) + len(gaps), dtype=np.uint8)
        stream[np.cumsum(escapes + 1) - 1] = gaps - _GAP_LIMIT * escapes
        return {"gaps": torch.from_numpy(stream)}

    @staticmethod
    def decode(payload: Mapping[str, torch.Tensor], shape: tuple[int, ...], kept: int) -> np.ndarray:
        stream = _array(payload, "gaps", (torch.uint8,))
        size = int(np.prod(shape))
        steps = np.where(stream == 0, _GAP_LIMIT, stream).astype(np.int64)
        positions = np.cumsum(steps)[stream != 0] - 1
        if len(positions) != kept or (kept and positions[-1] >= size):
            raise FileFormatError(f"gap stream describes {len(positions)} positions, not {kept} within {size}")
        flat = np.zeros(size, dtype=bool)
        flat[positions] = True
        return flat


@register_encoding("csr")
class CSR:
    """Compressed sparse rows of the weight viewed as (shape[0], rest)."""

    @staticmethod
    def encode(flat: np.ndarray, shape: tuple[int, ...]) -> Payload:
        rows = shape[0] if shape else 1
        cols = flat.size // rows if rows else 0
        matrix = flat.reshape(rows, cols)
        crow = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(matrix.sum(axis=1), out=crow[1:])
        index_dtype = np.int16 if cols <= np.iinfo(np.int16).max + 1 else np.int32
        col = np.nonzero(matrix)[1].astype(index_dtype)
        crow_dtype = np.int32 if crow[-1] <= np.iinfo(np.int32).max else np.int64
        return {"crow": torch.from_numpy(crow.astype(crow_dtype)), "col": torch.from_numpy(col)}

    @staticmethod
    def decode(payload: Mapping[str, torch.Tensor], shape: tuple[int, ...], kept: int) -> np.ndarray:
        crow = _array(payload, "crow", (torch.int32, torch.int64)).astype(np.int64)
        col = _array(payload, "col", (torch.int16, torch.int32)).astype(np.int64)
        rows = shape[0] if shape else 1
        cols = int(np.prod(shape)) // rows if rows else 0
        counts = np.diff(crow)
        if len(crow) != rows + 1 or crow[0] != 0 or crow[-1] != kept or len(col) != kept or (counts < 0).any():
            raise FileFormatError("CSR row pointers do not match the weight's rows and kept count")
        if kept and (col.min() < 0 or col.max() >= cols):
            raise FileFormatError(f"CSR column index outside 0..{cols - 1}")
        matrix = np.zeros((rows, cols), dtype=bool)
        matrix[np.repeat(np.arange(rows), counts), col] = True
        return matrix.reshape(-1)

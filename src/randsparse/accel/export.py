"""Compressed sparse models: `export_model` writes one, `load` rebuilds a fast `nn.Module` from it.

The file is a `torch.save` archive (read back with ``weights_only=True``), sealed with a SHA-256
footer by `randsparse.storage.seal` (`torch.load` ignores it; `load` verifies it first), holding:

- ``format``: `FORMAT`, so a foreign or older file is refused with a clear message;
- ``model_spec``: what `randsparse.models.build` needs to rebuild the architecture
  (``{"name", "num_classes", "in_channels", "options"}``);
- ``dense``: every state-dict entry that is not a pruned weight (biases, BN, unpruned layers);
- ``sparse``: per pruned weight, its shape, dtype, kept count, kept values (row-major) and the
  positions in one of the encodings of `randsparse.accel.encoding` (smallest per layer by default).

`load` rebuilds the model, turns each pruned Linear and Conv2d into `SparseLinear` /
`SparseConv2d` (other pruned layers get their masked dense weight back) and returns it in eval
mode; its outputs equal the masked dense model's up to float32 summation order.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from randsparse.accel.dispatch import DispatchMode, check_mode, replace_module, set_dispatch
from randsparse.accel.encoding import decode_mask, encode_mask, payload_bytes
from randsparse.accel.sparse_conv import SparseConv2d
from randsparse.accel.sparse_linear import SparseLinear
from randsparse.errors import ConfigError, FileFormatError, RandsparseError, first_line, is_integer
from randsparse.models import ModelSpec
from randsparse.sparsity.layers import owning_module
from randsparse.sparsity.masks import MaskSet
from randsparse.storage import atomic_write_bytes, read_torch, seal

log = logging.getLogger(__name__)

FORMAT = "randsparse.sparse-model/v1"
FILE_KIND = "sparse-model"  # the kind sealed into the file (see randsparse.storage)


@dataclass(frozen=True)
class LayerExport:
    """How one pruned weight was stored."""

    name: str
    shape: tuple[int, ...]
    kept: int
    encoding: str
    index_bytes: int
    value_bytes: int


@dataclass(frozen=True)
class ExportSummary:
    """What `export_model` wrote: the file size and how each pruned layer was encoded."""

    path: Path | None
    bytes: int
    layers: list[LayerExport]


def check_model_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` normalised to ``{"name", "num_classes", "in_channels", "options"}``, or a `ConfigError`."""
    return ModelSpec.from_dict(spec).to_dict()


def _build(spec: Mapping[str, Any], device: str | torch.device) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # init is overwritten: spare the global RNG
        return ModelSpec.from_dict(spec).build(device)


def _check_fits(model: nn.Module, spec: dict[str, Any]) -> None:
    """Refuse a spec whose architecture does not have exactly `model`'s state-dict entries and shapes."""
    rebuilt = {name: tuple(t.shape) for name, t in _build(spec, "meta").state_dict().items()}
    mine = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, shape in mine.items():
        if rebuilt.get(name, shape) != shape:
            raise ConfigError(f"model_spec builds {name!r} with shape {rebuilt[name]}, the model has {shape}")
    absent = [name for name in mine if name not in rebuilt]
    if absent:
        raise ConfigError(f"model_spec {spec['name']!r} builds a model without {absent[0]!r}; is the spec the model's?")
    missing = sorted(rebuilt.keys() - mine.keys())
    if missing:
        raise ConfigError(f"model_spec builds entries the model lacks, e.g. {missing[0]!r}")


def export_state(
    model: nn.Module, masks: Mapping[str, torch.Tensor], model_spec: Mapping[str, Any], encoding: str = "auto"
) -> tuple[dict[str, Any], list[LayerExport]]:
    """The content of an export file (see the module docstring) and a per-layer summary."""
    spec = check_model_spec(model_spec)
    mask_set = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    mask_set.validate(model)
    _check_fits(model, spec)
    state = model.state_dict()
    dense = {name: tensor.detach().cpu().clone() for name, tensor in state.items() if name not in mask_set}
    sparse: dict[str, Any] = {}
    layers = []
    for name, mask in mask_set.items():
        weight = state[name].detach().cpu()
        mask = mask.cpu()
        used, payload = encode_mask(mask, encoding)
        values = weight[mask].contiguous().clone()  # row-major order of the kept positions
        sparse[name] = {
            "shape": list(weight.shape),
            "kept": int(values.numel()),
            "encoding": used,
            "payload": payload,
            "values": values,
        }
        layers.append(
            LayerExport(
                name,
                tuple(weight.shape),
                int(values.numel()),
                used,
                payload_bytes(payload),
                values.numel() * values.element_size(),
            )
        )
    content = {"format": FORMAT, "model_spec": spec, "dense": dense, "sparse": sparse}
    return content, layers


def _serialise(content: dict[str, Any]) -> bytes:
    """The file's bytes: `torch.save` of `content`, sealed with its checksum."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return seal(buffer.getvalue(), FILE_KIND)


def export_bytes(
    model: nn.Module, masks: Mapping[str, torch.Tensor], model_spec: Mapping[str, Any], encoding: str = "auto"
) -> bytes:
    """The export file of `model` with `masks` as bytes (what `export_model` writes)."""
    content, _ = export_state(model, masks, model_spec, encoding)
    return _serialise(content)


def export_model(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    model_spec: Mapping[str, Any],
    path: str | Path,
    encoding: str = "auto",
) -> ExportSummary:
    """Write `model` with `masks` applied as a compressed file at `path` (atomically).

    Pruned weights keep only their kept values plus an index (`encoding`: ``auto`` = smallest per
    layer, or a name from `randsparse.accel.encoding.available_encodings`); everything else is
    stored as is. `model_spec` must rebuild `model`'s architecture.
    """
    content, layers = export_state(model, masks, model_spec, encoding)
    data = _serialise(content)
    atomic_write_bytes(path, data)
    log.info("exported %s (%d bytes, %d pruned layers)", path, len(data), len(layers))
    return ExportSummary(Path(path), len(data), layers)


def _read(source: str | Path | bytes) -> dict[str, Any]:
    label = "the given bytes" if isinstance(source, bytes) else repr(str(source))
    content, kind = read_torch(source, "sparse model file")
    if not isinstance(content, dict) or content.get("format") != FORMAT or kind not in (None, FILE_KIND):
        found = content.get("format") if isinstance(content, dict) else None
        raise FileFormatError(
            f"{label} is not a randsparse sparse model (format {found!r}, expected {FORMAT!r});"
            " write one with `randsparse export` or randsparse.accel.export_model"
        )
    for key, kind in (("model_spec", dict), ("dense", dict), ("sparse", dict)):
        if not isinstance(content.get(key), kind):
            raise FileFormatError(f"sparse model file {label} has no valid {key!r} entry")
    for name, tensor in content["dense"].items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise FileFormatError(f"sparse model file {label}: dense entry {name!r} is not a tensor")
    if not all(isinstance(name, str) and isinstance(entry, dict) for name, entry in content["sparse"].items()):
        raise FileFormatError(f"sparse model file {label}: 'sparse' is not a mapping of names to entries")
    return content


def _decode_layer(name: str, entry: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked dense weight, mask) of one stored pruned layer."""
    try:
        raw_shape, kept, values = entry["shape"], entry["kept"], entry["values"]
        if not isinstance(raw_shape, (list, tuple)) or not all(is_integer(d) and d >= 0 for d in raw_shape):
            raise FileFormatError(f"shape {raw_shape!r} is not a list of non-negative integers")
        shape = tuple(raw_shape)
        if not (is_integer(kept) and kept >= 0):
            raise FileFormatError(f"kept count {kept!r} is not a non-negative integer")
        if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.numel() != kept:
            raise FileFormatError(f"values of {name!r} do not hold {kept} entries")
        mask = decode_mask(str(entry["encoding"]), entry["payload"], shape, kept)
    except FileFormatError as exc:
        raise FileFormatError(f"pruned layer {name!r}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(f"pruned layer {name!r} is malformed: {first_line(exc)}") from None
    if not values.is_floating_point():
        raise FileFormatError(f"pruned layer {name!r}: values are {values.dtype}, not floating point")
    weight = torch.zeros(shape, dtype=values.dtype)
    weight[mask] = values
    return weight, mask


def _empty_model(spec: dict[str, Any]) -> nn.Module:
    """The architecture with uninitialised memory (fast), or freshly built when that is not safe."""
    try:
        model = _build(spec, "meta")
    except RandsparseError as exc:
        raise FileFormatError(f"sparse model file names a model this randsparse cannot build: {exc}") from None
    except Exception:  # a builder that cannot run on meta: build it for real
        return _build(spec, "cpu")
    persistent = set(model.state_dict())
    for module_name, module in model.named_modules():
        for buffer in module._buffers:
            full = f"{module_name}.{buffer}" if module_name else buffer
            if full not in persistent:  # would stay uninitialised: build for real instead
                return _build(spec, "cpu")
    return model.to_empty(device="cpu")


def to_sparse(model: nn.Module, masks: Mapping[str, torch.Tensor], mode: DispatchMode = "auto") -> nn.Module:
    """A copy of `model` with each masked Linear / zero-padded Conv2d replaced by its sparse module.

    In ``dense`` mode nothing is wrapped: the copy keeps its plain layers, with `masks` applied.
    """
    mask_set = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    mask_set.validate(model)
    model = copy.deepcopy(model)
    if check_mode(mode) == "dense":
        return mask_set.apply_(model).eval()
    for name, mask in mask_set.items():
        _replace(model, name, mask, mode)
    return model.eval()


def _replace(model: nn.Module, weight_name: str, mask: torch.Tensor, mode: DispatchMode) -> bool:
    """Swap the module owning `weight_name` for its sparse version; False when it has none."""
    module, attr = owning_module(model, weight_name)
    if attr != "weight" or module is model:  # the root cannot be swapped in place: it stays dense
        return False
    sparse: nn.Module
    if type(module) is nn.Linear:
        sparse = SparseLinear.from_dense(module, mask, mode)
    elif type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        sparse = SparseConv2d.from_dense(module, mask, mode)
    else:
        return False
    replace_module(model, weight_name.rpartition(".")[0], sparse)
    return True


def load(source: str | Path | bytes, mode: DispatchMode = "auto") -> nn.Module:
    """Rebuild the model written by `export_model` (a path, or the bytes of such a file), in eval mode.

    Pruned Linear and Conv2d layers become `SparseLinear` / `SparseConv2d` running in `mode`
    (``auto``: each layer measures dense against sparse once per input shape and keeps the faster;
    `randsparse.accel.calibrate` then turns layers that stay dense back into plain layers), except
    in ``dense`` mode, where they stay the plain `nn.Linear` / `nn.Conv2d` with the masked weight.
    A missing, corrupt or foreign file raises `FileFormatError`.
    """
    content = _read(source)
    try:
        spec = check_model_spec(content["model_spec"])
    except ConfigError as exc:
        raise FileFormatError(f"sparse model file has a bad model_spec: {exc}") from None
    model = _empty_model(spec)
    dense = dict(content["dense"])
    expected = model.state_dict()
    unknown = sorted((set(dense) | set(content["sparse"])) - set(expected))
    if unknown:
        raise FileFormatError(f"sparse model file holds {unknown[0]!r}, which model {spec['name']!r} does not have")
    for name, tensor in dense.items():  # before load_state_dict, which would raise a RuntimeError
        if tuple(tensor.shape) != tuple(expected[name].shape) or tensor.dtype.is_complex:
            raise FileFormatError(
                f"sparse model file: {name!r} has shape {tuple(tensor.shape)}, model {spec['name']!r}"
                f" needs {tuple(expected[name].shape)}"
            )
    replaced: set[str] = set()
    for name, entry in content["sparse"].items():
        module, attr = owning_module(model, name)
        current = getattr(module, attr)
        stored = entry.get("shape")
        if not isinstance(stored, (list, tuple)) or tuple(stored) != tuple(current.shape):
            raise FileFormatError(f"pruned layer {name!r} has shape {stored!r}, the model {tuple(current.shape)}")
        weight, mask = _decode_layer(name, entry)
        if tuple(current.shape) != tuple(weight.shape):
            raise FileFormatError(
                f"pruned layer {name!r} has shape {tuple(weight.shape)}, the model {tuple(current.shape)}"
            )
        with torch.no_grad():
            current.copy_(weight)  # so the dense module is right if it is not replaced
        if mode != "dense" and _replace(model, name, mask, mode):  # dense: the plain layer, no wrapper
            replaced.add(name)
        else:
            dense[name] = weight
    own = {  # the sparse modules' CSR buffers come from the file's sparse entries, not its dense ones
        f"{module_name}.{buffer}"
        for module_name in (name.rpartition(".")[0] for name in replaced)
        for buffer in model.get_submodule(module_name)._buffers
    }
    try:
        missing, unexpected = model.load_state_dict(dense, strict=False)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied in
        raise FileFormatError(f"sparse model file does not fit the model: {first_line(exc)}") from None
    missing = [m for m in missing if m not in own]
    absent = sorted(set(missing) - set(content["sparse"]))
    if absent or unexpected:
        raise FileFormatError(
            f"sparse model file does not fit the model: missing {absent[:3]}, unexpected {unexpected[:3]}"
        )
    set_dispatch(model, mode)
    return model.eval()


__all__ = [
    "FORMAT",
    "ExportSummary",
    "LayerExport",
    "check_model_spec",
    "export_bytes",
    "export_model",
    "export_state",
    "load",
    "to_sparse",
]

"""Model complexity that counts only the weights that remain: parameters, MACs per layer, memory.

Conventions (RigL's, so numbers compare with the sparse-training literature):

- A *MAC* is one multiply-accumulate of a Conv (any dimension, any groups, transposed too) or Linear
  weight with an input value; per sample (batch of one). Biases, normalisation, activations and
  pooling are not counted. A dense layer costs ``weight.numel() × positions`` MACs, where positions is
  the number of output positions the weight slides over (input positions for a transposed conv);
  the sparse cost is ``kept × positions``, where kept is the number of weights the mask keeps.
- With `masks` (a `MaskSet` or ``{weight name: bool tensor}``), the masks say what is kept and every
  unmasked parameter counts as dense. Without masks, a weight's actual non-zeros count as kept;
  weights on the ``meta`` device have no values and count as dense.
- Shapes come from one forward pass on the ``meta`` device (no memory, no compute), so even
  ImageNet-sized models are counted in milliseconds; a model whose forward cannot run there (e.g.
  data-dependent control flow) is run once on zeros instead, without touching its state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from randsparse.errors import ConfigError, is_integer
from randsparse.evaluate.inference import eval_mode
from randsparse.sparsity.layers import PrunableSelector, prunable_parameters
from randsparse.sparsity.masks import MaskSet

log = logging.getLogger(__name__)

Masks = MaskSet | Mapping[str, torch.Tensor]

# Modules whose weight MACs are counted. `_ConvNd` covers Conv1d/2d/3d and the transposed convs.
COUNTED_MODULES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a (possibly masked) model.

    `total`: every parameter, shared ones once. `prunable`: the prunable weights (those the masks
    cover, or the default prunable layers without masks). `nonzero`: the prunable weights kept plus
    every other parameter, counted dense — what a sparse checkpoint must store.
    """

    total: int
    prunable: int
    nonzero: int

    @property
    def kept(self) -> int:
        """Prunable weights kept (non-zero)."""
        return self.nonzero - (self.total - self.prunable)

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept (1.0 for a model without prunable weights)."""
        return self.kept / self.prunable if self.prunable else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return 1.0 - self.density

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "total": self.total,
            "prunable": self.prunable,
            "nonzero": self.nonzero,
            "kept": self.kept,
            "density": self.density,
        }


class LayerFlops(NamedTuple):
    """MACs of one Conv/Linear weight per sample: dense, and counting only the kept weights."""

    name: str
    dense_macs: int
    sparse_macs: int


@dataclass(frozen=True)
class FlopReport:
    """Per-layer and total multiply-accumulates per sample, dense and sparse (RigL convention)."""

    layers: list[LayerFlops]
    dense: int
    sparse: int

    @property
    def ratio(self) -> float:
        """Sparse MACs as a fraction of dense MACs (1.0 when nothing is counted)."""
        return self.sparse / self.dense if self.dense else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: totals, ratio and one row per layer."""
        return {
            "dense_macs": self.dense,
            "sparse_macs": self.sparse,
            "ratio": self.ratio,
            "layers": [layer._asdict() for layer in self.layers],
        }


@dataclass(frozen=True)
class MemoryReport:
    """Bytes of a checkpoint's tensor payload: dense, and with masked weights stored compressed.

    `bitmap`: kept values plus one bit per weight. `csr`: kept values, int32 column indices and
    int32 row pointers of the weight viewed as ``(shape[0], -1)``. Each masked tensor is stored in
    the compressed form only where that is smaller than dense, as an exporter would; every other
    tensor (unmasked parameters, persistent buffers) is stored dense. Container overhead (pickle,
    zip headers) is not included.
    """

    dense: int
    bitmap: int
    csr: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (bytes)."""
        return {"dense_bytes": self.dense, "bitmap_bytes": self.bitmap, "csr_bytes": self.csr}


def _mask_set(model: nn.Module, masks: Masks) -> MaskSet:
    """`masks` as a validated `MaskSet` (a `MaskMismatchError` names the first layer that does not fit)."""
    mask_set = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    mask_set.validate(model)
    return mask_set


def _kept(weight: torch.Tensor, name: str, masks: MaskSet | None) -> int:
    """Kept weights of `name`: from its mask, else from its non-zeros (dense on the meta device)."""
    if masks is not None:
        return int(masks[name].count_nonzero()) if name in masks else weight.numel()
    if weight.is_meta:
        return weight.numel()
    return int(weight.detach().count_nonzero())


def count_params(model: nn.Module, masks: Masks | None = None, selector: PrunableSelector | None = None) -> ParamCounts:
    """Total, prunable and non-zero parameters of `model` (shared parameters counted once).

    Prunable weights are those `masks` cover, or without masks those `selector` admits (default:
    Conv/Linear weights); non-zero counts the kept prunable weights plus every other parameter.
    """
    mask_set = _mask_set(model, masks) if masks is not None else None
    params = dict(model.named_parameters())  # a shared parameter once, under its first name
    total = sum(p.numel() for p in params.values())
    if mask_set is not None:
        prunable_names = [name for name in mask_set if name in params]
    else:
        prunable_names = list(prunable_parameters(model, selector))
    prunable = sum(params[name].numel() for name in prunable_names)
    kept = sum(_kept(params[name], name, mask_set) for name in prunable_names)
    return ParamCounts(total=total, prunable=prunable, nonzero=kept + total - prunable)


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(is_integer(d) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must be a non-empty sequence of positive integers (one sample), got {shape!r}")
    return shape


def _positions(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """How many times each weight of `module` is used per sample in this call (batch of one)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return inputs[0].numel() // module.in_channels
    if isinstance(module, nn.modules.conv._ConvNd):
        return output.numel() // module.out_channels
    return output.numel() // module.out_features  # Linear over (1, *, in_features)


def _input_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _shape_pass(model: nn.Module, input_shape: tuple[int, ...], calls: dict[str, list[int]]) -> None:
    """Run one forward of a batch of one, recording each counted module's weight positions per call."""
    counted = {name: m for name, m in model.named_modules() if isinstance(m, COUNTED_MODULES)}

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            calls.setdefault(name, []).append(_positions(module, inputs, output))

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in counted.items()]
    dtype = _input_dtype(model)
    try:
        with eval_mode(model), torch.no_grad():
            try:
                # Meta copies of every parameter and buffer (shared tensors stay shared), so nothing
                # is computed or allocated and the model's own tensors are never touched.
                memo: dict[int, torch.Tensor] = {}
                state = {
                    name: memo.setdefault(id(t), torch.empty_like(t, device="meta"))
                    for name, t in [
                        *model.named_parameters(remove_duplicate=False),
                        *model.named_buffers(remove_duplicate=False),
                    ]
                }
                functional_call(model, state, (torch.zeros((1, *input_shape), dtype=dtype, device="meta"),))
            except (NotImplementedError, RuntimeError) as exc:
                device = next((t.device for t in model.parameters()), torch.device("cpu"))
                if device.type == "meta":
                    raise
                log.debug("meta-device forward failed (%s); counting with a real forward on zeros", exc)
                calls.clear()
                # Buffers are cloned so that even a module that updates them in eval mode changes nothing.
                buffers = {name: b.clone() for name, b in model.named_buffers(remove_duplicate=False)}
                functional_call(model, buffers, (torch.zeros((1, *input_shape), dtype=dtype, device=device),))
    finally:
        for handle in handles:
            handle.remove()


def count_flops(model: nn.Module, input_shape: Sequence[int], masks: Masks | None = None) -> FlopReport:
    """Dense and sparse MACs per sample of every Conv/Linear layer of `model` on one input.

    `input_shape` is the shape of one sample without the batch dimension, e.g. ``(3, 32, 32)``.
    Layers are listed by weight name, in registration order; a layer called several times in a
    forward counts every call; a layer never called is not listed.
    """
    shape = _check_shape(input_shape)
    mask_set = _mask_set(model, masks) if masks is not None else None
    calls: dict[str, list[int]] = {}
    _shape_pass(model, shape, calls)
    layers = []
    for module_name, module in model.named_modules():
        if module_name not in calls:
            continue
        weight_name = f"{module_name}.weight" if module_name else "weight"
        weight = module.weight
        positions = sum(calls[module_name])
        kept = _kept(weight, weight_name, mask_set)
        layers.append(LayerFlops(weight_name, weight.numel() * positions, kept * positions))
    return FlopReport(layers=layers, dense=sum(x.dense_macs for x in layers), sparse=sum(x.sparse_macs for x in layers))


def _csr_bytes(shape: tuple[int, ...], kept: int, value_bytes: int, index_bytes: int = 4) -> int:
    rows = shape[0] if shape else 1
    return kept * (value_bytes + index_bytes) + (rows + 1) * index_bytes


def _bitmap_bytes(numel: int, kept: int, value_bytes: int) -> int:
    return kept * value_bytes + math.ceil(numel / 8)


def memory_bytes(model: nn.Module, masks: Masks | None = None) -> MemoryReport:
    """Checkpoint payload of `model`'s state (parameters and persistent buffers), dense and compressed.

    Without masks, every Conv/Linear weight is a candidate for compression by its actual non-zeros.
    """
    mask_set = _mask_set(model, masks) if masks is not None else None
    candidates = set(mask_set) if mask_set is not None else set(prunable_parameters(model))
    dense = bitmap = csr = 0
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        size = tensor.numel() * tensor.element_size()
        dense += size
        if name in candidates:
            kept = _kept(tensor, name, mask_set)
            bitmap += min(size, _bitmap_bytes(tensor.numel(), kept, tensor.element_size()))
            csr += min(size, _csr_bytes(tuple(tensor.shape), kept, tensor.element_size()))
        else:
            bitmap += size
            csr += size
    return MemoryReport(dense=dense, bitmap=bitmap, csr=csr)


def complexity_summary(model: nn.Module, input_shape: Sequence[int], masks: Masks | None = None) -> dict[str, Any]:
    """Parameters, MACs per sample and checkpoint bytes of `model` as one JSON-ready dict.

    Keys: ``params`` (`ParamCounts.to_dict`), ``flops`` (`FlopReport.to_dict`), ``memory``
    (`MemoryReport.to_dict`) — what a run's ``summary.json`` records under ``complexity``.
    """
    return {
        "params": count_params(model, masks).to_dict(),
        "flops": count_flops(model, input_shape, masks).to_dict(),
        "memory": memory_bytes(model, masks).to_dict(),
    }

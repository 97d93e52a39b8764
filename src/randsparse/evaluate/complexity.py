"""Model complexity that counts only the weights that remain: parameters, MACs per weight, memory.

What is counted, and how it relates to the papers:

- A *MAC* is one multiply-accumulate of a weight with an input value, per sample (batch of one).
  Every multiplication by a parameter counts, whichever module or function makes it: the aten
  matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``; ``linear`` and ``matmul`` reach them)
  and ``convolution`` (any dimension, groups, transposed), found by the parameter's identity (or
  of a view or same-sized copy of it), so a weight used twice counts twice and
  `nn.MultiheadAttention`'s ``out_proj.weight`` counts though ``out_proj`` is never called.
  Biases, normalisation, activations, pooling and products of two activations (attention's
  q·kᵀ) are not counted. A conv weight costs ``weight.numel() × positions`` (output positions;
  input positions for a transposed conv), a matrix product ``output elements × inner size``.
- The sparse count of a weight is its dense count times its kept fraction (``kept / numel``).
- RigL (Evci et al., 2020) and the random-pruning paper (Liu et al., 2022) report *FLOPs*, a
  multiply and an add each, so about 2 × these MACs; their tables also count the layers we skip
  (RigL adds BN, activations and the backward pass for training FLOPs). Ratios of sparse to
  dense (`FlopReport.ratio`) compare directly with theirs for the forward pass.
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
from torch.utils._python_dispatch import TorchDispatchMode

from randsparse.errors import ConfigError, is_integer
from randsparse.evaluate.inference import eval_mode
from randsparse.sparsity.layers import PrunableSelector, prunable_parameters
from randsparse.sparsity.masks import MaskSet

log = logging.getLogger(__name__)

Masks = MaskSet | Mapping[str, torch.Tensor]


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
    """MACs of one weight per sample, over all its uses: dense, and scaled by its kept fraction."""

    name: str
    dense_macs: int
    sparse_macs: int


@dataclass(frozen=True)
class FlopReport:
    """Per-weight and total multiply-accumulates (MACs, not FLOPs) per sample, dense and sparse.

    FLOPs as RigL and the random-pruning paper report them are about 2 × these MACs; see the
    module docstring for what is counted.
    """

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


def _input_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _matmul_macs(args: tuple[Any, ...], out: Any) -> int:
    """MACs of ``mm``/``addmm``/``bmm``/``baddbmm``: the output's elements times the inner size."""
    left = args[-2]
    return out.numel() * left.shape[-1]


def _conv_macs(args: tuple[Any, ...], out: Any) -> int:
    """MACs of ``convolution``: every weight used once per output position (input, if transposed)."""
    x, weight, transposed = args[0], args[1], bool(args[6])
    positions = x.numel() // x.shape[1] if transposed else out.numel() // out.shape[1]
    return weight.numel() * positions


# The aten ops that multiply by a weight: the MACs of one call, and the positions of the two
# factors, the usual place of a weight first. `linear`, `matmul` and `conv*d` reach the
# dispatcher as these.
_WEIGHT_OPS: dict[Any, tuple[Any, tuple[int, int]]] = {
    torch.ops.aten.mm.default: (_matmul_macs, (1, 0)),
    torch.ops.aten.addmm.default: (_matmul_macs, (2, 1)),
    torch.ops.aten.bmm.default: (_matmul_macs, (1, 0)),
    torch.ops.aten.baddbmm.default: (_matmul_macs, (2, 1)),
    torch.ops.aten.convolution.default: (_conv_macs, (1, 0)),
}


class _WeightUseCounter(TorchDispatchMode):
    """Adds up, per parameter, the MACs of every aten op that multiplies by it.

    Parameters are recognised by identity, and so are tensors made from them by a view or a
    same-sized copy (transpose, reshape, expand, dtype cast, masking), so a weight counts whichever
    module or function uses it (e.g. `nn.MultiheadAttention`'s ``out_proj.weight``, passed to
    ``F.linear`` without calling ``out_proj``).
    """

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = dict(names)
        self.macs: dict[str, int] = {}
        # Tensors tracked by id are kept alive for the pass, so no new tensor can reuse their id.
        self._tracked: list[torch.Tensor] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        used = [self.names[id(a)] for a in args if isinstance(a, torch.Tensor) and id(a) in self.names]
        if not used:
            return out
        if func in _WEIGHT_OPS:
            count, factors = _WEIGHT_OPS[func]
            name = next((self.names[id(args[i])] for i in factors if id(args[i]) in self.names), None)
            if name is not None:  # else only a bias is added here: no multiplication by a weight
                self.macs[name] = self.macs.get(name, 0) + count(args, out)
        elif isinstance(out, torch.Tensor) and any(
            out.numel() == a.numel() for a in args if isinstance(a, torch.Tensor) and id(a) in self.names
        ):
            self.names[id(out)] = used[0]  # a view or same-sized copy of the weight stands for it
            self._tracked.append(out)
        return out


def _count_uses(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Run one forward of a batch of one; MACs per sample of every parameter, by name."""
    dtype = _input_dtype(model)
    names = {}
    with eval_mode(model):
        try:
            # Meta copies of every parameter and buffer (shared tensors stay shared), so nothing
            # is computed or allocated and the model's own tensors are never touched. Parameters
            # require gradients, so no fused inference path (e.g. MultiheadAttention's) hides them.
            memo: dict[int, torch.Tensor] = {}
            state = {}
            for name, t in model.named_parameters(remove_duplicate=False):
                if id(t) not in memo:
                    copy = torch.empty_like(t, device="meta").requires_grad_(t.is_floating_point())
                    memo[id(t)] = copy
                    names[id(copy)] = name
                state[name] = memo[id(t)]
            for name, t in model.named_buffers(remove_duplicate=False):
                state[name] = memo.setdefault(id(t), torch.empty_like(t, device="meta"))
            counter = _WeightUseCounter(names)
            with torch.enable_grad(), counter:
                functional_call(model, state, (torch.zeros((1, *input_shape), dtype=dtype, device="meta"),))
            return counter.macs
        except (NotImplementedError, RuntimeError) as exc:
            device = next((t.device for t in model.parameters()), torch.device("cpu"))
            if device.type == "meta":
                raise
            log.debug("meta-device forward failed (%s); counting with a real forward on zeros", exc)
        # Buffers are cloned so that even a module that updates them in eval mode changes nothing.
        buffers = {name: b.clone() for name, b in model.named_buffers(remove_duplicate=False)}
        counter = _WeightUseCounter({id(p): name for name, p in model.named_parameters()})
        # Grad mode on, as on the meta device: under no_grad, eval-mode attention takes a fused path
        # whose projection weights the counter would not see (one sample: the graph is small).
        with torch.enable_grad(), counter:
            functional_call(model, buffers, (torch.zeros((1, *input_shape), dtype=dtype, device=device),))
        return counter.macs


def count_flops(model: nn.Module, input_shape: Sequence[int], masks: Masks | None = None) -> FlopReport:
    """Dense and sparse MACs per sample of every weight `model` multiplies by, on one input.

    `input_shape` is the shape of one sample without the batch dimension, e.g. ``(3, 32, 32)``.
    Every use counts, whichever module or function makes it: a weight used twice counts twice, and
    a weight another module uses directly (``nn.MultiheadAttention``'s ``out_proj.weight``) counts
    too. A row's sparse MACs are its dense MACs times the weight's kept fraction. Rows are listed by
    parameter name, in registration order; a parameter never multiplied by is not listed.
    """
    shape = _check_shape(input_shape)
    mask_set = _mask_set(model, masks) if masks is not None else None
    macs = _count_uses(model, shape)
    layers = []
    for name, param in model.named_parameters():
        if name not in macs:
            continue
        dense = macs[name]
        kept = _kept(param, name, mask_set)
        layers.append(LayerFlops(name, dense, dense * kept // param.numel()))
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

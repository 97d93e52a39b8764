"""Per-layer dense/sparse dispatch by measurement: the sparse modules' base, `calibrate`, the report.

Each sparse module (`SparseLinear`, `SparseConv2d`) keeps only the kept weights. In ``"auto"``
mode, the first time a layer sees an input shape it times every way it can compute that shape (the
dense op on the decompressed weight, the numba kernel, for a Linear also `torch.sparse` CSR) on
the real input, interleaved, and keeps the fastest; a sparse kernel must beat dense by
`SPARSE_MARGIN` to be chosen. Sparse kernels run in inference only (no autograd, float32, CPU);
anything else takes the dense path, which is exactly the masked dense layer.

`calibrate` then settles the model: every layer for which no sparse path won becomes the plain
`nn.Linear` / `nn.Conv2d` again (no wrapper, so no per-call overhead), and the model with its
sparse layers must beat the plain dense model by `SPARSE_MARGIN` as a whole, or it is all plain.
A settled layer keeps its sparse module aside (`sparse_twin`), so a later `calibrate` on a new
input shape measures it again.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from randsparse.errors import ConfigError

log = logging.getLogger(__name__)

DispatchMode = Literal["auto", "dense", "sparse"]
DISPATCH_MODES: tuple[str, ...] = ("auto", "dense", "sparse")

# A sparse kernel is chosen only when its median time is below this fraction of the dense one:
# noise in a one-off measurement must not make a layer slower than dense.
SPARSE_MARGIN = 0.95
# Timed rounds per candidate in a measurement (fewer when one call is slow).
MEASURE_ROUNDS = 7
_SLOW_CALL_S = 0.05
# Where a settled plain layer keeps its sparse module (in its __dict__: not a submodule, not saved).
_TWIN = "_randsparse_sparse_twin"

Candidate = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Decision:
    """What a layer chose for one input shape, and the median milliseconds each candidate took."""

    key: tuple[int, ...]
    choice: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        """Dense time over the chosen candidate's time (None when nothing was measured)."""
        if "dense" not in self.timings_ms or self.choice not in self.timings_ms:
            return None
        return self.timings_ms["dense"] / self.timings_ms[self.choice]


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def measure_candidates(candidates: dict[str, Candidate], x: torch.Tensor) -> tuple[Decision, torch.Tensor]:
    """Time every candidate on `x` (one warm-up each, then interleaved rounds) and pick the fastest.

    Returns the decision (its key is filled in by the caller) and the chosen candidate's output.
    """
    outputs: dict[str, torch.Tensor] = {}
    slowest = 0.0
    for name, run in candidates.items():  # warm-up: compiles kernels, fills caches
        start = time.perf_counter()
        outputs[name] = run(x)
        slowest = max(slowest, time.perf_counter() - start)
    rounds = 3 if slowest > _SLOW_CALL_S else MEASURE_ROUNDS
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            outputs[name] = run(x)
            samples[name].append(time.perf_counter() - start)
    timings = {name: _median_ms(values) for name, values in samples.items()}
    choice = "dense"
    best = min((name for name in timings if name != "dense"), key=timings.__getitem__, default=None)
    if best is not None and timings[best] < SPARSE_MARGIN * timings["dense"]:
        choice = best
    return Decision((), choice, timings), outputs[choice]


def check_mode(mode: str) -> DispatchMode:
    """`mode` if it is one of `DISPATCH_MODES`, else a `ConfigError`."""
    if mode not in DISPATCH_MODES:
        raise ConfigError(f"unknown dispatch mode {mode!r}; known: {', '.join(DISPATCH_MODES)}")
    return mode  # type: ignore[return-value]


def kept_entries(weight: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row index, flat column index (within the row) and float32 value of each kept weight, row-major.

    Raises `ConfigError` when `mask` does not have `weight`'s shape.
    """
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConfigError(f"mask of shape {tuple(mask.shape)} does not fit weight of shape {tuple(weight.shape)}")
    rows = weight.shape[0]
    flat_mask = mask.detach().reshape(rows, -1).cpu().numpy().astype(bool, copy=False)
    row, col = np.nonzero(flat_mask)
    values = weight.detach().reshape(rows, -1).cpu().to(torch.float32).numpy()[row, col]
    return row.astype(np.int64), col.astype(np.int64), np.ascontiguousarray(values, dtype=np.float32)


class SparseModule(nn.Module):
    """What both sparse modules share: the kept weights' count, the dispatch mode and decisions."""

    values: torch.Tensor
    rowptr: torch.Tensor
    bias: nn.Parameter | None
    # Ways to compute the layer: candidate name -> method taking the input.
    _CANDIDATES: ClassVar[dict[str, str]] = {"dense": "_dense", "sparse": "_sparse"}

    def __init__(self, mode: DispatchMode, bias: torch.Tensor | None, outputs: int) -> None:
        super().__init__()
        self.mode: DispatchMode = check_mode(mode)
        self.decisions: dict[tuple[int, ...], Decision] = {}
        self.nnz = 0
        self.numel = 0
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False)
        self._outputs = outputs
        self._dense_weight: torch.Tensor | None = None
        self._zero_bias: torch.Tensor | None = None

    @property
    def density(self) -> float:
        """Fraction of the weight kept."""
        return self.nnz / self.numel if self.numel else 0.0

    def set_mode(self, mode: DispatchMode) -> None:
        """Use `mode` from now on; forgets earlier measurements."""
        self.mode = check_mode(mode)
        self.decisions.clear()

    def dense_weight(self) -> torch.Tensor:
        """The masked weight as a dense float32 tensor (rebuilt from the kept values, then cached)."""
        if self._dense_weight is None:
            self._dense_weight = self._build_dense_weight()
        return self._dense_weight

    def to_plain(self) -> nn.Module:
        """The plain `nn.Linear` / `nn.Conv2d` computing what this layer does (masked weight, float32)."""
        raise NotImplementedError

    def describe(self) -> tuple[str, str]:
        """(kind, shape) as `dispatch_report` prints them, e.g. ``("linear", "784→300")``."""
        raise NotImplementedError

    def _build_dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _dense_weight_copy(self) -> torch.Tensor:
        """A fresh dense weight (for a plain layer, which must not share the cache)."""
        return self._dense_weight.clone() if self._dense_weight is not None else self._build_dense_weight()

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _dense_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias for the dense op on `x`, converted only when its dtype or device differs."""
        weight = self._dense_weight if self._dense_weight is not None else self.dense_weight()
        bias = self.bias
        if weight.dtype != x.dtype or weight.device != x.device:
            weight = weight.to(device=x.device, dtype=x.dtype)
            bias = None if bias is None else bias.to(device=x.device, dtype=x.dtype)
        return weight, bias

    def _bias_array(self) -> np.ndarray:
        """The bias as the float32 array the kernels take (zeros without a bias)."""
        if self.bias is not None:
            return self.bias.detach().numpy()
        if self._zero_bias is None:
            self._zero_bias = torch.zeros(self._outputs)
        return self._zero_bias.numpy()

    def _sparse_ok(self, x: torch.Tensor) -> bool:
        """Whether the sparse kernels may run on `x`: CPU float32 inference without autograd."""
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or (self.bias is not None and self.bias.requires_grad)
        )
        return (
            x.device.type == "cpu" and x.dtype == torch.float32 and self.values.device.type == "cpu" and not needs_grad
        )

    def _dispatch(self, key: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dense":
            return self._dense(x)
        if self.mode == "sparse":
            return self._sparse(x)
        decision = self.decisions.get(key)
        if decision is not None:
            return getattr(self, self._CANDIDATES[decision.choice])(x)
        candidates = {name: getattr(self, method) for name, method in self._CANDIDATES.items()}
        decision, out = measure_candidates(candidates, x)
        decision.key = key
        self.decisions[key] = decision
        log.debug("%s %s: %s (%s)", type(self).__name__, key, decision.choice, decision.timings_ms)
        chosen = {d.choice for d in self.decisions.values()}
        if "dense" not in chosen:
            self._dense_weight = None  # not needed while every known shape runs sparse
        if "torch_csr" not in chosen and getattr(self, "_torch_csr", None) is not None:
            self._torch_csr = None
        return out

    def __getstate__(self) -> dict:
        # Caches are rebuilt on demand: pickles and deep copies stay small.
        state = self.__dict__.copy()
        for name in ("_dense_weight", "_torch_csr"):
            if name in state:
                state[name] = None
        if "_shape_cache" in state:
            state["_shape_cache"] = {}
        return state


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the qualified submodule `name` of `model` (not the root: `name` is not empty)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def sparse_twin(module: nn.Module) -> SparseModule | None:
    """The sparse module a layer settled dense by `calibrate` keeps aside, or None."""
    twin = module.__dict__.get(_TWIN)
    return twin if isinstance(twin, SparseModule) else None


def plain_layer(sparse: SparseModule) -> nn.Module:
    """`sparse.to_plain()`, remembering `sparse` (see `sparse_twin`) so a later `calibrate` can reuse it."""
    plain = sparse.to_plain()
    sparse._dense_weight = None  # the plain layer holds it now
    plain.__dict__[_TWIN] = sparse  # not a registered submodule: no state-dict entries, no forward cost
    return plain


def sparse_modules(model: nn.Module) -> Iterator[tuple[str, SparseModule]]:
    """Every sparse module of `model`, with its qualified name (settled plain layers not included)."""
    for name, module in model.named_modules():
        if isinstance(module, SparseModule):
            yield name, module


def _dispatched(model: nn.Module) -> Iterator[tuple[str, SparseModule]]:
    """Every sparse module of `model` and every plain layer's twin, in layer order."""
    for name, module in model.named_modules():
        if isinstance(module, SparseModule):
            yield name, module
        elif (twin := sparse_twin(module)) is not None:
            yield name, twin


def set_dispatch(model: nn.Module, mode: DispatchMode) -> nn.Module:
    """Make every sparse layer of `model` run dense, sparse, or choose by measurement (``"auto"``)."""
    check_mode(mode)
    for _, module in sparse_modules(model):
        module.set_mode(mode)
    return model


def _unsettle(model: nn.Module) -> None:
    """Put the sparse modules of settled plain layers back, so new input shapes get measured."""
    for name, twin in list(_dispatched(model)):
        if name and not isinstance(model.get_submodule(name), SparseModule):
            replace_module(model, name, twin)


def settle(model: nn.Module) -> nn.Module:
    """Turn every sparse layer of `model` that chose dense for every shape it saw into its plain layer.

    Layers in ``"dense"`` mode, and ``"auto"`` layers whose every decision is dense, become plain
    `nn.Linear` / `nn.Conv2d` (see `plain_layer`); layers that run sparse anywhere stay. The root
    module is never swapped. Returns `model`.
    """
    for name, module in list(sparse_modules(model)):
        runs_sparse = module.mode == "sparse" or any(d.choice != "dense" for d in module.decisions.values())
        if name and not runs_sparse and (module.mode == "dense" or module.decisions):
            replace_module(model, name, plain_layer(module))
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every sparse module as its plain dense layer (the dense baseline)."""
    dense = copy.deepcopy(model)
    for name, module in list(sparse_modules(dense)):
        if name:
            replace_module(dense, name, module.to_plain())
    return dense


def _faster_than_plain(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether `model` beats its plain dense copy on `example` by `SPARSE_MARGIN` (interleaved medians)."""
    variants = {"chosen": model, "plain": plain_copy(model).eval()}
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(MEASURE_ROUNDS + 1):
        for name, variant in variants.items():
            start = time.perf_counter()
            variant(example)
            if round_:  # the first round warms up (e.g. rebuilds dense weights)
                timings[name].append(time.perf_counter() - start)
    return statistics.median(timings["chosen"]) < SPARSE_MARGIN * statistics.median(timings["plain"])


@torch.no_grad()
def calibrate(model: nn.Module, example: torch.Tensor, check_model: bool = True) -> list[LayerDispatch]:
    """Run `model` on `example` (eval mode) so each ``"auto"`` layer decides for that shape, then settle.

    With `check_model`, the model with the new decisions is then timed against the plain dense
    model (every sparse layer as its `nn.Linear` / `nn.Conv2d`; interleaved, `MEASURE_ROUNDS`
    each); unless it is faster by `SPARSE_MARGIN`, the new decisions all become dense, so
    per-layer noise and wrapper overhead cannot add up to a model slower than dense. Finally every
    layer dense for every shape it saw is swapped for its plain layer (`settle`), in place.
    Returns the per-layer report (`dispatch_report`). Later calls with the same input shape reuse
    the decisions; a new shape is measured when first seen (settled layers included).
    """
    was_training = model.training
    model.eval()
    try:
        _unsettle(model)
        before = {id(m): set(m.decisions) for _, m in sparse_modules(model)}
        model(example)
        new = [
            decision
            for _, module in sparse_modules(model)
            for key, decision in module.decisions.items()
            if key not in before.get(id(module), set())
        ]
        if check_model and any(d.choice != "dense" for d in new) and not _faster_than_plain(model, example):
            for decision in new:
                decision.choice = "dense"
            log.info("sparse layers did not make the model faster for %s: all dense", tuple(example.shape))
        settle(model)
    finally:
        model.train(was_training)
    return dispatch_report(model)


@dataclass(frozen=True)
class LayerDispatch:
    """One layer's decision for one input shape: what it is, how dense, what each way took."""

    name: str
    kind: str
    shape: str
    density: float
    key: tuple[int, ...]
    choice: str
    timings_ms: dict[str, float]

    @property
    def dense_ms(self) -> float | None:
        return self.timings_ms.get("dense")

    @property
    def sparse_ms(self) -> float | None:
        """The numba kernel's time (the direct convolution for a conv)."""
        return self.timings_ms.get("sparse")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form; the input shape `key` is written as the list ``input``."""
        out: dict[str, object] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "key":
                out["input"] = list(value)
            else:
                out[item.name] = dict(value) if isinstance(value, dict) else value
        return out


def dispatch_report(model: nn.Module) -> list[LayerDispatch]:
    """Every decision every sparse layer of `model` (settled ones too) has taken so far, in layer order."""
    report = []
    for name, module in _dispatched(model):
        kind, shape = module.describe()
        for key, decision in module.decisions.items():
            report.append(
                LayerDispatch(name, kind, shape, module.density, key, decision.choice, dict(decision.timings_ms))
            )
    return report

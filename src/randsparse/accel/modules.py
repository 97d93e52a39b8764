"""Sparse inference modules (`SparseLinear`, `SparseConv2d`) and their per-layer dense/sparse dispatch.

Each module keeps only the kept weights (CSR rows padded for the kernels in
`randsparse.accel.kernels`). In ``"auto"`` mode, the first time a layer sees an input shape it
times every way it can compute that shape (the dense op on the decompressed weight, the numba
kernel, for a Linear also `torch.sparse` CSR) on the real input, interleaved, and keeps the fastest;
a sparse kernel must beat dense by `SPARSE_MARGIN` to be chosen, so an exported model is not slower
than the dense one where the kernels do not pay. Sparse kernels run in inference only (no autograd,
float32, CPU); anything else takes the dense path, which is exactly the masked dense layer.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from randsparse.accel import kernels
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
# Output tiles aim at this many floats (an L1/L2-resident scratch row) ...
_TILE_TARGET = 2048
_TILE_MIN = 256
# ... and at most this many bytes of input per tile (phases x channels x tile), to stay in L2.
_TILE_INPUT_BYTES = 1 << 20

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


class _SparseModule(nn.Module):
    """What both sparse modules share: the kept weights' count, the dispatch mode and decisions."""

    values: torch.Tensor
    rowptr: torch.Tensor

    def __init__(self, mode: DispatchMode) -> None:
        super().__init__()
        self.mode: DispatchMode = _check_mode(mode)
        self.decisions: dict[tuple[int, ...], Decision] = {}
        self.nnz = 0
        self.numel = 0
        self._dense_weight: torch.Tensor | None = None

    @property
    def density(self) -> float:
        """Fraction of the weight kept."""
        return self.nnz / self.numel if self.numel else 0.0

    def set_mode(self, mode: DispatchMode) -> None:
        """Use `mode` from now on; forgets earlier measurements."""
        self.mode = _check_mode(mode)
        self.decisions.clear()

    def dense_weight(self) -> torch.Tensor:
        """The masked weight as a dense tensor (rebuilt from the kept values, then cached)."""
        if self._dense_weight is None:
            self._dense_weight = self._build_dense_weight()
        return self._dense_weight

    def _build_dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _dense_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias for the dense op on `x`, converted only when its dtype or device differs."""
        weight = self._dense_weight if self._dense_weight is not None else self.dense_weight()
        bias = self.bias
        if weight.dtype != x.dtype or weight.device != x.device:
            weight = weight.to(device=x.device, dtype=x.dtype)
            bias = None if bias is None else bias.to(device=x.device, dtype=x.dtype)
        return weight, bias

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # Ways to compute the layer: candidate name -> method taking the input.
    _CANDIDATES: ClassVar[dict[str, str]] = {"dense": "_dense", "sparse": "_sparse"}
    bias: nn.Parameter | None

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


def _check_mode(mode: str) -> DispatchMode:
    if mode not in DISPATCH_MODES:
        raise ConfigError(f"unknown dispatch mode {mode!r}; known: {', '.join(DISPATCH_MODES)}")
    return mode  # type: ignore[return-value]


def _kept_entries(weight: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row index, flat column index (within the row) and value of each kept weight, row-major."""
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConfigError(f"mask of shape {tuple(mask.shape)} does not fit weight of shape {tuple(weight.shape)}")
    rows = weight.shape[0]
    flat_mask = mask.detach().reshape(rows, -1).cpu().numpy().astype(bool, copy=False)
    row, col = np.nonzero(flat_mask)
    values = weight.detach().reshape(rows, -1).cpu().to(torch.float32).numpy()[row, col]
    return row.astype(np.int64), col.astype(np.int64), np.ascontiguousarray(values, dtype=np.float32)


class SparseLinear(_SparseModule):
    """`nn.Linear` whose weight is stored as padded CSR rows; see the module docstring for dispatch."""

    _CANDIDATES: ClassVar[dict[str, str]] = {"dense": "_dense", "sparse": "_sparse", "torch_csr": "_torch_sparse"}

    cols: torch.Tensor

    def __init__(
        self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None, mode: DispatchMode = "auto"
    ) -> None:
        super().__init__(mode)
        if weight.dim() != 2:
            raise ConfigError(f"SparseLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = (int(d) for d in weight.shape)
        row, col, values = _kept_entries(weight, mask)
        counts = np.bincount(row, minlength=self.out_features)
        rowptr, cols, vals = kernels.pad_rows(counts, col.astype(np.int32), values)
        self.register_buffer("rowptr", torch.from_numpy(rowptr))
        self.register_buffer("cols", torch.from_numpy(cols))
        self.register_buffer("values", torch.from_numpy(vals))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False)
        self.nnz = len(values)
        self.numel = self.out_features * self.in_features
        self._torch_csr: torch.Tensor | None = None
        self._zero_bias: torch.Tensor | None = None

    @classmethod
    def from_dense(cls, layer: nn.Linear, mask: torch.Tensor, mode: DispatchMode = "auto") -> SparseLinear:
        """The sparse equivalent of `layer` with `mask` applied."""
        return cls(layer.weight, mask, layer.bias, mode)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.4f}"

    def _rows(self) -> torch.Tensor:
        counts = self.rowptr[1:] - self.rowptr[:-1]
        return torch.repeat_interleave(torch.arange(self.out_features), counts)

    def _build_dense_weight(self) -> torch.Tensor:
        weight = torch.zeros(self.out_features, self.in_features, dtype=torch.float32)
        weight.index_put_((self._rows(), self.cols.long()), self.values, accumulate=True)  # padding adds 0
        return weight

    def _bias_array(self) -> np.ndarray:
        if self.bias is not None:
            return self.bias.detach().numpy()
        if self._zero_bias is None:
            self._zero_bias = torch.zeros(self.out_features)
        return self._zero_bias.numpy()

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._dense_args(x)
        return F.linear(x, weight, bias)

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        kernels.sync_threads()
        args = (self.rowptr.numpy(), self.cols.numpy(), self.values.numpy(), self._bias_array())
        if x.shape[0] == 1:
            y = torch.empty(1, self.out_features, dtype=torch.float32)
            kernels.csr_matvec(*args, x[0].contiguous().numpy(), y[0].numpy())
            return y
        # Feature-major in and out: the input of a previous SparseLinear (or its ReLU) is already
        # laid out so, and the output is handed back as a transposed view, as torch's CSR matmul does.
        xt = x.t()
        if not xt.is_contiguous():
            xt = torch.empty(x.shape[1], x.shape[0], dtype=torch.float32)
            kernels.transpose(x.contiguous().numpy(), xt.numpy())
        yt = torch.empty(self.out_features, x.shape[0], dtype=torch.float32)
        kernels.csr_matmat(*args, xt.numpy(), yt.numpy())
        return yt.t()

    def _torch_sparse(self, x: torch.Tensor) -> torch.Tensor:
        if self._torch_csr is None:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we measure
                warnings.simplefilter("ignore", UserWarning)
                self._torch_csr = self.dense_weight().to_sparse_csr()
        y = torch.sparse.mm(self._torch_csr, x.t()).t()
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise RuntimeError(f"expected inputs with {self.in_features} features, got shape {tuple(x.shape)}")
        if not self._sparse_ok(x):
            return self._dense(x)
        if x.dim() == 2:
            return self._dispatch((x.shape[0],), x)
        flat = x.reshape(-1, self.in_features)
        return self._dispatch((flat.shape[0],), flat).reshape(*x.shape[:-1], self.out_features)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


@dataclass(frozen=True)
class _ConvPlan:
    """Everything the direct convolution needs for one input shape (cached per shape)."""

    out_h: int
    out_w: int
    hq: int
    wq: int
    chan_len: int
    offsets: np.ndarray
    tiles: np.ndarray
    k_chunk: int


class SparseConv2d(_SparseModule):
    """`nn.Conv2d` (zero padding, any stride, dilation, groups) computed by a direct sparse convolution.

    No im2col: each kept weight (k, c, r, s) adds ``value * input[c]`` shifted by its tap to output
    channel k, over a tile of outputs at a time (see `kernels.conv2d_direct`).
    """

    channel: torch.Tensor
    tap: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        bias: torch.Tensor | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        mode: DispatchMode = "auto",
    ) -> None:
        super().__init__(mode)
        if weight.dim() != 4:
            raise ConfigError(f"SparseConv2d needs a 4-D weight, got shape {tuple(weight.shape)}")
        if isinstance(padding, str):
            raise ConfigError(f"SparseConv2d takes numeric padding, got {padding!r}")
        self.out_channels, per_group, kh, kw = (int(d) for d in weight.shape)
        self.groups = int(groups)
        self.in_channels = per_group * self.groups
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        row, col, values = _kept_entries(weight, mask)
        local_c, rs = np.divmod(col, kh * kw)
        r, s = np.divmod(rs, kw)
        channel = (row // (self.out_channels // self.groups)) * per_group + local_c
        counts = np.bincount(row, minlength=self.out_channels)
        tap = (r * kw + s).astype(np.int32)
        rowptr, channel_p, tap_p, vals = kernels.pad_rows(counts, channel.astype(np.int32), tap, values)
        self.register_buffer("rowptr", torch.from_numpy(rowptr))
        self.register_buffer("channel", torch.from_numpy(channel_p))
        self.register_buffer("tap", torch.from_numpy(tap_p))
        self.register_buffer("values", torch.from_numpy(vals))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False)
        self.nnz = len(values)
        self.numel = int(weight.numel())
        self._shape_cache: dict[tuple[int, ...], _ConvPlan] = {}
        self._zero_bias: torch.Tensor | None = None

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, mask: torch.Tensor, mode: DispatchMode = "auto") -> SparseConv2d:
        """The sparse equivalent of `layer` (which must use zero padding) with `mask` applied."""
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ConfigError(f"only zero, numeric padding converts to SparseConv2d, got {layer.padding_mode!r}")
        return cls(layer.weight, mask, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups, mode)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride},"
            f" padding={self.padding}, dilation={self.dilation}, groups={self.groups}, density={self.density:.4f}"
        )

    def _build_dense_weight(self) -> torch.Tensor:
        kh, kw = self.kernel_size
        per_group = self.in_channels // self.groups
        weight = torch.zeros(self.out_channels, per_group, kh * kw, dtype=torch.float32)
        counts = self.rowptr[1:] - self.rowptr[:-1]
        rows = torch.repeat_interleave(torch.arange(self.out_channels), counts)
        local_c = self.channel.long() - (rows // (self.out_channels // self.groups)) * per_group
        weight.index_put_((rows, local_c, self.tap.long()), self.values, accumulate=True)  # padding adds 0
        return weight.reshape(self.out_channels, per_group, kh, kw)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._dense_args(x)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _plan(self, n_img: int, height: int, width: int) -> _ConvPlan:
        key = (n_img, height, width)
        plan = self._shape_cache.get(key)
        if plan is not None:
            return plan
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        hq = out_h + (dh * (kh - 1)) // sh
        wq = out_w + (dw * (kw - 1)) // sw
        plane = hq * wq
        chan_len = n_img * plane + (dw * (kw - 1)) // sw + 1
        tap = self.tap.numpy().astype(np.int64)
        r, s = np.divmod(tap, kw)
        rr, ss = r * dh, s * dw
        phase = (rr % sh) * sw + (ss % sw)
        offsets = (phase * self.in_channels + self.channel.numpy()) * chan_len + (rr // sh) * wq + (ss // sw)
        tiles = _tiles(n_img, out_h, wq, plane, sh * sw * self.in_channels)
        threads = kernels.sync_threads()
        n_tasks_wanted = 4 * threads
        k_chunk = self.out_channels
        if len(tiles) < n_tasks_wanted:
            k_chunk = max(1, math.ceil(self.out_channels * len(tiles) / n_tasks_wanted))
        plan = _ConvPlan(out_h, out_w, hq, wq, chan_len, offsets.astype(np.int64), tiles, k_chunk)
        self._shape_cache[key] = plan
        return plan

    def _bias_array(self) -> np.ndarray:
        if self.bias is not None:
            return self.bias.detach().numpy()
        if self._zero_bias is None:
            self._zero_bias = torch.zeros(self.out_channels)
        return self._zero_bias.numpy()

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        kernels.sync_threads()
        n_img, channels, height, width = x.shape
        plan = self._plan(n_img, height, width)
        sh, sw = self.stride
        gathered = np.empty((sh * sw * channels, plan.chan_len), dtype=np.float32)
        kernels.conv2d_gather_input(
            x.contiguous().numpy(), gathered, sh, sw, self.padding[0], self.padding[1], plan.hq, plan.wq
        )
        out = torch.empty(n_img, self.out_channels, plan.out_h, plan.out_w, dtype=torch.float32)
        kernels.conv2d_direct(
            gathered,
            self.rowptr.numpy(),
            plan.offsets,
            self.values.numpy(),
            self._bias_array(),
            out.numpy(),
            plan.tiles,
            plan.k_chunk,
            plan.wq,
            plan.hq * plan.wq,
        )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched input, as nn.Conv2d accepts
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise RuntimeError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if not self._sparse_ok(x):
            return self._dense(x)
        return self._dispatch((x.shape[0], x.shape[2], x.shape[3]), x)


def _tiles(n_img: int, out_h: int, wq: int, plane: int, input_rows: int) -> np.ndarray:
    """Output tiles (n0, n1, oh0, oh1): row blocks of one image, or groups of whole images."""
    target = max(_TILE_MIN, min(_TILE_TARGET, _TILE_INPUT_BYTES // (4 * input_rows)))
    tiles = []
    if out_h * wq >= target // 2:
        rows = max(1, target // wq)
        blocks = math.ceil(out_h / rows)
        rows = math.ceil(out_h / blocks)  # even blocks: no sliver at the bottom
        for n in range(n_img):
            for oh0 in range(0, out_h, rows):
                tiles.append((n, n + 1, oh0, min(out_h, oh0 + rows)))
    else:
        per = max(1, target // plane)
        for n0 in range(0, n_img, per):
            tiles.append((n0, min(n_img, n0 + per), 0, out_h))
    return np.asarray(tiles, dtype=np.int64).reshape(-1, 4)


def sparse_modules(model: nn.Module) -> Iterator[tuple[str, _SparseModule]]:
    """Every sparse module of `model`, with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, _SparseModule):
            yield name, module


def set_dispatch(model: nn.Module, mode: DispatchMode) -> nn.Module:
    """Make every sparse layer of `model` run dense, sparse, or choose by measurement (``"auto"``)."""
    _check_mode(mode)
    for _, module in sparse_modules(model):
        module.set_mode(mode)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, example: torch.Tensor, check_model: bool = True) -> list[LayerDispatch]:
    """Run `model` on `example` (eval mode) so each ``"auto"`` layer decides for that shape.

    With `check_model`, the whole model with the new decisions is then timed against the same
    model with those layers on the dense path (interleaved, `MEASURE_ROUNDS` each); unless it is
    faster by `SPARSE_MARGIN`, the new decisions all become dense, so per-layer noise cannot add up
    to a model slower than dense. Returns the per-layer report (`dispatch_report`). Later calls
    with the same input shape reuse the decisions; a new shape is measured when first seen.
    """
    was_training = model.training
    model.eval()
    try:
        before = {id(m): set(m.decisions) for _, m in sparse_modules(model)}
        model(example)
        new = [
            decision
            for _, module in sparse_modules(model)
            for key, decision in module.decisions.items()
            if key not in before.get(id(module), set())
        ]
        chosen = [d.choice for d in new]
        if check_model and any(choice != "dense" for choice in chosen):
            timings = {"chosen": [], "dense": []}
            for round_ in range(MEASURE_ROUNDS + 1):
                for variant in ("chosen", "dense"):
                    for decision, choice in zip(new, chosen, strict=True):
                        decision.choice = choice if variant == "chosen" else "dense"
                    start = time.perf_counter()
                    model(example)
                    if round_:  # the first round warms up (e.g. rebuilds dense weights)
                        timings[variant].append(time.perf_counter() - start)
            keep = statistics.median(timings["chosen"]) < SPARSE_MARGIN * statistics.median(timings["dense"])
            for decision, choice in zip(new, chosen, strict=True):
                decision.choice = choice if keep else "dense"
            if not keep:
                log.info("sparse layers did not make the model faster for %s: all dense", tuple(example.shape))
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
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": self.shape,
            "density": self.density,
            "input": list(self.key),
            "choice": self.choice,
            "timings_ms": dict(self.timings_ms),
        }


def _describe(module: _SparseModule) -> tuple[str, str]:
    if isinstance(module, SparseConv2d):
        kh, kw = module.kernel_size
        stride = "" if module.stride == (1, 1) else f" s{module.stride[0]}"
        groups = "" if module.groups == 1 else f" g{module.groups}"
        return "conv2d", f"{module.in_channels}→{module.out_channels} {kh}×{kw}{stride}{groups}"
    assert isinstance(module, SparseLinear)
    return "linear", f"{module.in_features}→{module.out_features}"


def dispatch_report(model: nn.Module) -> list[LayerDispatch]:
    """Every decision every sparse layer of `model` has taken so far, in layer order."""
    report = []
    for name, module in sparse_modules(model):
        kind, shape = _describe(module)
        for key, decision in module.decisions.items():
            report.append(
                LayerDispatch(name, kind, shape, module.density, key, decision.choice, dict(decision.timings_ms))
            )
    return report

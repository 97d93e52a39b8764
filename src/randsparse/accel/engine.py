"""The sparse training engine: each masked layer trains through the sparse autograd layers or the masked dense op.

`use_engine(model, mode)` engages every masked `nn.Linear` / `nn.Conv2d` of a model whose masks
are attached (`randsparse.sparsity.attach`, the ``<weight>_randsparse_mask`` buffers):

- ``"dense"``: nothing changes (the masked dense layers);
- ``"sparse"``: every covered layer computes forward and backward with `randsparse.accel.train_linear` / `train_conv`
  (work in proportion to its kept weights);
- ``"auto"``: the first time a layer trains on an input shape, it times forward+backward of both
  paths on that very input (interleaved medians, as `randsparse.accel.dispatch.measure_candidates`)
  and keeps the sparse path only if it beats dense by `SPARSE_MARGIN`, so no layer gets slower.

The layers stay what they were for everyone else: the engine changes the class of each engaged
module to a subclass whose `forward` consults it (`remove_engine` puts the class back), while the
weight stays the dense `nn.Parameter` with its pruned entries zero. State dicts, optimizer state,
checkpoints, DDP and evaluation are those of the masked dense model, so a run may switch engines
on resume.

**Mask changes.** A layer notices a new mask (a replaced buffer, or one changed in place: the
tensor's version counter) at its next forward and re-packs its kept entries, dropping its ``auto``
measurements. `repack(model)` does it at once for every layer (the entry point a dynamic sparse
training method calls after changing masks; calling it is optional but makes the cost explicit).
The sparse path computes the gradient of kept weights only: a step that needs the dense gradient
of pruned weights (RigL's growth) runs inside `dense_gradients(model)`.

**Where the sparse path cannot run** (CUDA or other devices, dtypes other than float32, autocast,
convolutions with non-zero padding modes or string padding), the layer runs dense and says so once
in the log; `engine_report` lists every layer with its decisions, measured times and fallbacks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from randsparse.accel.dispatch import SPARSE_MARGIN, Decision, measure_candidates
from randsparse.accel.train_conv import ConvPack, sparse_conv2d
from randsparse.accel.train_linear import LinearPack, sparse_linear
from randsparse.errors import ConfigError
from randsparse.sparsity.enforce import BUFFER_SUFFIX, GRADIENT_PREMASKED, without_pruned

log = logging.getLogger(__name__)

EngineMode = Literal["auto", "dense", "sparse"]
ENGINES: tuple[str, ...] = ("auto", "dense", "sparse")
# Where an engaged module keeps its engine (in its __dict__: not a submodule, not in the state dict).
_STATE = "_randsparse_engine"
# Where a model keeps the results of auto's whole-model checks (`randsparse.accel.auto_check`).
WHOLE_MODEL_CHECKS = "_randsparse_auto_checks"
_ENGINES = "_randsparse_engines"
_GENERATION = [0]  # bumped by every use_engine/remove_engine: `engines` caches are stale after it


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


class LayerEngine:
    """One engaged layer: its mode, its packed kept entries (rebuilt on a mask change) and its decisions."""

    def __init__(self, name: str, module: nn.Module, mode: EngineMode) -> None:
        self.name = name
        self.mode = mode
        self.kind = "linear" if isinstance(module, nn.Linear) else "conv2d"
        self.base: type[nn.Module] = type(module)
        self.decisions: dict[tuple[int, ...], Decision] = {}
        self.fallbacks: list[str] = []
        self.repacks = 0
        self.pack: LinearPack | ConvPack | None = None
        self._mask_key: tuple[int, int] | None = None
        self.last_choice: str | None = None  # the path ``auto`` took at the last forward
        self.forced_dense = False  # set by the whole-model check (`randsparse.accel.auto_check`)

    def mask(self, module: nn.Module) -> torch.Tensor | None:
        return module._buffers.get("weight" + BUFFER_SUFFIX)

    def repack(self, module: nn.Module) -> None:
        """Re-read the layer's mask: new packed kept entries, ``auto`` measurements forgotten."""
        mask = self.mask(module)
        if mask is None:
            self.pack, self._mask_key = None, None
            return
        cpu_mask = mask.detach().cpu()
        self.pack = LinearPack(cpu_mask) if self.kind == "linear" else ConvPack(module, cpu_mask)  # type: ignore[arg-type]
        self._mask_key = (id(mask), mask._version)
        self.decisions.clear()
        self.forced_dense = False
        self.repacks += 1

    def _fallback(self, reason: str) -> None:
        if reason not in self.fallbacks:
            self.fallbacks.append(reason)
            log.info("engine: %s runs masked dense (%s)", self.name or "model", reason)

    def _why_not(self, module: nn.Module, x: torch.Tensor) -> str | None:
        """Why the sparse path cannot compute `module` on `x` now, or None when it can."""
        weight = module.weight
        if x.device.type != "cpu" or weight.device.type != "cpu":
            return f"device {x.device.type}: sparse kernels are CPU only"
        if x.dtype != torch.float32 or weight.dtype != torch.float32:
            return f"dtype {x.dtype if x.dtype != torch.float32 else weight.dtype}: sparse training runs float32"
        if _autocast_on():
            return "autocast is on"
        if self.mask(module) is None:
            return "no mask attached"
        return None

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out, sparse = self._forward(module, x)
        # FixedMask's gradient hook need not mask again what only the sparse path computed (kept
        # entries): True while every forward since the last gradient ran sparse (see GRADIENT_PREMASKED).
        if not sparse:
            module.__dict__[GRADIENT_PREMASKED] = False
        else:
            module.__dict__.setdefault(GRADIENT_PREMASKED, True)
        return out

    def _forward(self, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The layer's output on `x`, and whether the sparse path computed it."""
        dense = self.base.forward
        if self.mode == "dense":
            return dense(module, x), False
        reason = self._why_not(module, x)
        if reason is not None:
            self._fallback(reason)
            return dense(module, x), False
        mask = self.mask(module)
        assert mask is not None
        if self._mask_key != (id(mask), mask._version):
            self.repack(module)
        if self.mode == "sparse":
            return self._sparse(module, x), True
        key = tuple(int(d) for d in x.shape)
        decision = self.decisions.get(key)
        if decision is None:
            if not (torch.is_grad_enabled() and module.weight.requires_grad):
                return dense(module, x), False  # no training step to measure: evaluation stays dense
            decision = self._measure(module, x, mask)
            decision.key = key
            self.decisions[key] = decision
            log.debug("engine: %s %s: %s %s", self.name, key, decision.choice, decision.timings_ms)
        self.last_choice = "dense" if self.forced_dense else decision.choice
        if self.last_choice == "sparse":
            return self._sparse(module, x), True
        return dense(module, x), False

    def _sparse(self, module: nn.Module, x: torch.Tensor, weight: Any = None, bias: Any = None) -> torch.Tensor:
        weight = module.weight if weight is None else weight
        bias = module.bias if bias is None else bias
        if self.kind == "linear":
            return sparse_linear(x, weight, bias, self.pack)  # type: ignore[arg-type]
        return sparse_conv2d(x, weight, bias, self.pack)  # type: ignore[arg-type]

    def _measure(self, module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> Decision:
        """Forward+backward of dense (with the gradient masking `FixedMask` adds) and sparse on `x`, timed.

        Each path gets its own leaves (weight, bias, input), and the dense weight its one masking
        hook, registered once: a hook added per call would pile up over the repeats and slow the
        dense path down more at every repeat (and the sparse one too, through a shared weight).
        """

        def leaves() -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
            weight = module.weight.detach().clone().requires_grad_()
            bias = (
                None if module.bias is None else module.bias.detach().clone().requires_grad_(module.bias.requires_grad)
            )
            return weight, bias, x.detach().requires_grad_(x.requires_grad)

        def step(compute: Any, tensors: tuple[torch.Tensor | None, ...]) -> Any:
            trained = [t for t in tensors if t is not None and t.requires_grad]

            def run(_: torch.Tensor) -> None:
                for leaf in trained:
                    leaf.grad = None
                out = compute(*tensors)
                out.backward(torch.ones_like(out))

            return run

        def dense(weight: torch.Tensor, bias: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor:
            return dense_op(module, inputs, weight, bias)

        dense_leaves, sparse_leaves = leaves(), leaves()
        dense_leaves[0].register_hook(lambda g: without_pruned(g, mask))  # FixedMask's gradient masking
        candidates = {
            "dense": step(dense, dense_leaves),
            "sparse": step(lambda w, b, inputs: self._sparse(module, inputs, w, b), sparse_leaves),
        }
        decision, _ = measure_candidates(candidates, x)
        return decision

    def report(self, module: nn.Module) -> dict[str, Any]:
        """This layer's entry of `engine_report`."""
        weight = module.weight
        mask = self.mask(module)
        kept = int(mask.sum()) if mask is not None else weight.numel()
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(weight.shape),
            "density": kept / weight.numel() if weight.numel() else 0.0,
            "mode": self.mode,
            "repacks": self.repacks,
            "fallbacks": list(self.fallbacks),
            "forced_dense": self.forced_dense,
            "decisions": [
                {"input": list(key), "choice": d.choice, "fwd_bwd_ms": dict(d.timings_ms)}
                for key, d in self.decisions.items()
            ],
        }


class _EngineLinear(nn.Linear):
    """An `nn.Linear` run by its `LayerEngine` (set by `use_engine`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.__dict__[_STATE].forward(self, x)


class _EngineConv2d(nn.Conv2d):
    """An `nn.Conv2d` run by its `LayerEngine` (set by `use_engine`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.__dict__[_STATE].forward(self, x)


_ENGINE_CLASS: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: _EngineLinear, nn.Conv2d: _EngineConv2d}


def check_engine(mode: str) -> EngineMode:
    """`mode` if it is one of `ENGINES`, else a `ConfigError`."""
    if mode not in ENGINES:
        raise ConfigError(f"unknown engine {mode!r}; known: {', '.join(ENGINES)}")
    return mode  # type: ignore[return-value]


def _uncovered(module: nn.Module) -> str | None:
    """Why the sparse kernels do not cover `module` at all, or None."""
    if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        return f"padding {module.padding!r} mode {module.padding_mode!r}: only numeric zero padding is covered"
    return None


def dense_op(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`module`'s own dense op (`F.linear`, or the conv's `_conv_forward`) with the given weight and bias."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)  # type: ignore[operator]


def engines(model: nn.Module) -> list[LayerEngine]:
    """The engines of `model`'s engaged layers, cached on the model until `use_engine`/`remove_engine` next run.

    For per-step callers: no walk over the model's modules.
    """
    cached = model.__dict__.get(_ENGINES)
    if cached is None or cached[0] != _GENERATION[0]:
        cached = (_GENERATION[0], [state for _, _, state in engaged(model)])
        model.__dict__[_ENGINES] = cached
    return cached[1]


def engaged(model: nn.Module) -> Iterator[tuple[str, nn.Module, LayerEngine]]:
    """Every engaged layer of `model`: (qualified name, module, its engine)."""
    for name, module in model.named_modules():
        state = module.__dict__.get(_STATE)
        if isinstance(state, LayerEngine):
            yield name, module, state


def use_engine(model: nn.Module, mode: str) -> list[str]:
    """Train `model`'s masked Linear/Conv2d layers with engine `mode` (``auto``, ``dense``, ``sparse``), in place.

    Only exact `nn.Linear` / `nn.Conv2d` modules whose weight has an attached mask are engaged; a
    second call changes the mode (and forgets measurements). ``"dense"`` disengages everything.
    On a model on another device than the CPU, nothing is engaged and the log says so once.
    Returns the names of the engaged layers. Raises `ConfigError` for an unknown mode.
    """
    mode = check_engine(mode)
    remove_engine(model)
    _GENERATION[0] += 1
    if mode == "dense":
        return []
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        log.info("engine %s: the model is on %s; sparse kernels are CPU only, so it trains dense", mode, devices)
        return []
    names = []
    for name, module in model.named_modules():
        subclass = _ENGINE_CLASS.get(type(module))
        if subclass is None or ("weight" + BUFFER_SUFFIX) not in module._buffers:
            continue
        reason = _uncovered(module)
        if reason is not None:
            log.info("engine: %s runs masked dense (%s)", name, reason)
            continue
        state = LayerEngine(name, module, mode)
        module.__dict__[_STATE] = state
        module.__class__ = subclass
        names.append(name)
    return names


def remove_engine(model: nn.Module) -> None:
    """Put every engaged layer of `model` back to its plain class (the masked dense layer)."""
    _GENERATION[0] += 1
    for _, module, state in list(engaged(model)):
        module.__class__ = state.base
        del module.__dict__[_STATE]
        module.__dict__.pop(GRADIENT_PREMASKED, None)  # a plain layer's gradient is masked by the hook again


def repack(model: nn.Module) -> int:
    """Re-read every engaged layer's mask now (after masks changed); returns how many layers were re-packed.

    The entry point for dynamic sparse training: call it after a mask change (the layers would
    otherwise notice at their next forward). ``auto`` layers measure again on their next training step.
    """
    count = 0
    for _, module, state in engaged(model):
        state.repack(module)
        count += 1
    return count


@contextlib.contextmanager
def dense_gradients(model: nn.Module) -> Iterator[None]:
    """Run every engaged layer of `model` masked dense inside the block (e.g. the step where RigL
    reads the dense gradient of pruned weights, which the sparse path never computes)."""
    states = [(state, state.mode) for _, _, state in engaged(model)]
    for state, _ in states:
        state.mode = "dense"
    try:
        yield
    finally:
        for state, mode in states:
            state.mode = mode


def engine_report(model: nn.Module) -> dict[str, Any]:
    """JSON-ready: the engine mode of each engaged layer, its ``auto`` decisions with forward+backward
    times in milliseconds (dense, sparse), its fallbacks, and the layers that were not engaged and why."""
    layers = [state.report(module) for _, module, state in engaged(model)]
    engaged_names = {entry["name"] for entry in layers}
    skipped = []
    for name, module in model.named_modules():
        masked = type(module) in _ENGINE_CLASS and ("weight" + BUFFER_SUFFIX) in module._buffers
        if masked and name not in engaged_names:
            skipped.append({"name": name, "reason": _uncovered(module) or "engine off (dense) or not on the CPU"})
    checks = list(model.__dict__.get(WHOLE_MODEL_CHECKS, []))
    return {"sparse_margin": SPARSE_MARGIN, "layers": layers, "not_engaged": skipped, "whole_model_checks": checks}

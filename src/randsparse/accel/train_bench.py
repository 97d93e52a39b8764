"""Benchmark of sparse training speed: per layer (forward+backward) and whole training steps, in one process.

Per layer: for a Linear or Conv2d shape and a sparsity, the forward+backward time (gradients of the
input and the weight) of the dense layer, the masked dense layer (what `engine: dense` trains: the
op plus `FixedMask`'s gradient masking), our sparse layers (`randsparse.accel.train_linear`, `train_conv`) and, when
the ``sparseprop`` package imports, SparseProp's layer (IST Austria, ICML 2023; a comparator only).
Whole steps: forward, loss, backward and optimizer step of a registered model, dense (no masks),
masked dense, ``engine: sparse`` and ``engine: auto`` (both with the O(kept) optimizer), next to
the ideal speed-up (dense MACs over kept MACs, `randsparse.evaluate.complexity.count_flops`).
Every time is a median of interleaved calls after warm-up (`randsparse.accel.bench.time_interleaved`),
so load drift hits all alike.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from randsparse.accel.auto_check import check_auto
from randsparse.accel.bench import time_interleaved
from randsparse.accel.engine import dense_op, engine_report, use_engine
from randsparse.accel.kept_optim import AUTO_MAX_DENSITY, use_kept_optimizer
from randsparse.accel.train_conv import ConvPack, sparse_conv2d
from randsparse.accel.train_linear import LinearPack, sparse_linear
from randsparse.evaluate.complexity import count_flops
from randsparse.models import ModelSpec
from randsparse.sparsity import attach, plan_sparsity
from randsparse.sparsity.enforce import without_pruned


@dataclass(frozen=True)
class LayerShape:
    """A layer to time: Linear (in→out; `size` unused) or k×k Conv2d on size×size inputs."""

    kind: str
    in_features: int
    out_features: int
    batch: int
    size: int = 0
    kernel: int = 3
    stride: int = 1

    def describe(self) -> str:
        if self.kind == "linear":
            return f"linear {self.in_features}→{self.out_features} b{self.batch}"
        stride = f" s{self.stride}" if self.stride != 1 else ""
        return (
            f"conv {self.in_features}→{self.out_features} {self.kernel}×{self.kernel}{stride}"
            f" {self.size}×{self.size} b{self.batch}"
        )


# The shapes (SparseProp's own measurements) and the ResNet-20 ×4 stages at batch 64.
DEFAULT_SHAPES = (
    LayerShape("linear", 1024, 1024, 128),
    LayerShape("linear", 784, 1024, 128),
    LayerShape("conv", 64, 64, 64, 32),
    LayerShape("conv", 128, 128, 64, 16),
    LayerShape("conv", 256, 256, 64, 8),
    LayerShape("conv", 128, 256, 64, 16, stride=2),
)


@dataclass
class LayerRow:
    """Median forward+backward milliseconds of each implementation of one layer shape at one sparsity."""

    shape: str
    sparsity: float
    dense_ms: float
    masked_ms: float
    sparse_ms: float
    sparseprop_ms: float | None

    @property
    def speedup(self) -> float:
        """Masked dense time over ours."""
        return self.masked_ms / self.sparse_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup}


def sparseprop_module() -> Any | None:
    """The ``sparseprop.modules`` package when SparseProp is installed and imports, else None."""
    try:
        return importlib.import_module("sparseprop.modules")
    except Exception:
        return None


def _fwd_bwd(fn: Any, x: torch.Tensor, leaves: list[torch.Tensor]) -> Any:
    def run() -> None:
        for leaf in leaves:
            leaf.grad = None
        out = fn(x)
        out.backward(torch.ones_like(out))

    return run


def bench_layer(shape: LayerShape, sparsity: float, repeats: int = 5, warmup: int = 1, seed: int = 0) -> LayerRow:
    """Time dense, masked dense, ours and SparseProp's layer (when importable) on `shape` at `sparsity`."""
    gen = torch.Generator().manual_seed(seed)
    if shape.kind == "linear":
        layer: nn.Module = nn.Linear(shape.in_features, shape.out_features)
        x = torch.randn(shape.batch, shape.in_features, generator=gen)
    else:
        layer = nn.Conv2d(shape.in_features, shape.out_features, shape.kernel, shape.stride, shape.kernel // 2)
        x = torch.randn(shape.batch, shape.in_features, shape.size, shape.size, generator=gen)
    weight = layer.weight.detach()
    mask = torch.zeros(weight.numel(), dtype=torch.bool)
    mask[torch.randperm(weight.numel(), generator=gen)[: round((1 - sparsity) * weight.numel())]] = True
    mask = mask.view(weight.shape)
    with torch.no_grad():
        layer.weight.mul_(mask)

    def leaves() -> list[torch.Tensor]:  # each candidate its own: hooks or gradients never shared
        return [
            x.detach().clone().requires_grad_(),
            layer.weight.detach().clone().requires_grad_(),
            layer.bias.detach().clone().requires_grad_(),
        ]

    dense, masked, sparse = leaves(), leaves(), leaves()
    masked[1].register_hook(lambda g: without_pruned(g, mask))  # FixedMask's gradient masking, once
    if shape.kind == "linear":
        lin_pack = LinearPack(mask)
        ours = _fwd_bwd(lambda inp: sparse_linear(inp, sparse[1], sparse[2], lin_pack), sparse[0], sparse)
    else:
        conv_pack = ConvPack(layer, mask)
        ours = _fwd_bwd(lambda inp: sparse_conv2d(inp, sparse[1], sparse[2], conv_pack), sparse[0], sparse)
    candidates = {
        "dense": _fwd_bwd(lambda inp: dense_op(layer, inp, dense[1], dense[2]), dense[0], dense),
        "masked": _fwd_bwd(lambda inp: dense_op(layer, inp, masked[1], masked[2]), masked[0], masked),
        "sparse": ours,
    }
    modules = sparseprop_module()
    if modules is not None:
        for name, module in _sparseprop_layers(modules, layer).items():
            inputs = x.detach().clone().requires_grad_()  # its input gradient is computed, as ours is
            candidates[name] = _fwd_bwd(module, inputs, [inputs, *module.parameters()])
    times = time_interleaved(candidates, repeats, warmup)
    sparseprop_times = [t for name, t in times.items() if name.startswith("sparseprop")]
    return LayerRow(
        shape.describe(),
        sparsity,
        times["dense"],
        times["masked"],
        times["sparse"],
        min(sparseprop_times) if sparseprop_times else None,
    )


def _sparseprop_layers(modules: Any, layer: nn.Module) -> dict[str, nn.Module]:
    """SparseProp's layer(s) for `layer` (for a conv both of its loop orders; the faster one is reported)."""
    if isinstance(layer, nn.Linear):
        return {"sparseprop": modules.SparseLinear(layer.weight.data.clone(), nn.Parameter(layer.bias.data.clone()))}
    return {
        f"sparseprop_{on}": modules.SparseConv2d.from_dense(copy.deepcopy(layer), vectorizing_over_on=on)
        for on in (False, True)
    }


@dataclass
class StepRow:
    """Median milliseconds of one training step (forward, loss, backward, optimizer) of a model."""

    model: str
    distribution: str
    sparsity: float
    batch: int
    dense_ms: float
    masked_ms: float
    sparse_ms: float
    auto_ms: float
    ideal: float
    auto_sparse_layers: int
    layers: int

    def ratio(self, variant: str) -> float:
        """Dense step time over `variant`'s (``masked``, ``sparse``, ``auto``)."""
        return self.dense_ms / getattr(self, f"{variant}_ms")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), **{f"{v}_ratio": self.ratio(v) for v in ("masked", "sparse", "auto")}}


def bench_step(
    spec: ModelSpec,
    input_shape: tuple[int, ...],
    sparsity: float,
    distribution: str = "erk",
    batch: int = 128,
    repeats: int = 3,
    warmup: int = 2,
    seed: int = 0,
    label: str | None = None,
) -> StepRow:
    """Time whole SGD (momentum 0.9, weight decay 5e-4) steps of `spec`'s model: dense, masked, sparse, auto."""
    base = spec.build(seed=seed).train()
    masks = plan_sparsity(base, sparsity=sparsity, distribution=distribution, seed=seed).masks
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_shape, generator=gen)
    y = torch.randint(0, spec.num_classes, (batch,), generator=gen)
    steps = {}
    models = {}
    for variant in ("dense", "masked", "sparse", "auto"):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        if variant != "dense":
            attach(model, masks, opt)
            use_engine(model, "dense" if variant == "masked" else variant)
            if variant != "masked":  # as `fit` does for engine sparse/auto
                use_kept_optimizer(model, opt, 1.0 if variant == "sparse" else AUTO_MAX_DENSITY)
            if variant == "auto":  # as `fit` does before auto's first step on a batch shape
                check_auto(model, x, y, F.cross_entropy)
        models[variant] = model
        steps[variant] = _step(model, opt, x, y)
    times = time_interleaved(steps, repeats, warmup)
    flops = count_flops(base, input_shape, masks)
    layers = engine_report(models["auto"])["layers"]
    sparse_layers = sum(  # after the whole-model check
        1 for layer in layers if not layer["forced_dense"] and any(d["choice"] == "sparse" for d in layer["decisions"])
    )
    return StepRow(
        label or spec.name,
        distribution,
        sparsity,
        batch,
        times["dense"],
        times["masked"],
        times["sparse"],
        times["auto"],
        1 / flops.ratio if flops.ratio else float("inf"),
        sparse_layers,
        len(layers),
    )


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> Any:
    def run() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return run

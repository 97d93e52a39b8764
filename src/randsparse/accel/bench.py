"""Benchmark of real sparse speed and size: dense vs masked vs exported model, measured in one process.

For each sparsity, a registered model is built (seeded, without touching the global RNG), random
masks are drawn with `plan_sparsity`, the masked copy is exported to bytes and loaded back, and
for each batch size the three models are timed interleaved (dense, masked, exported, dense, ...),
after warm-up, with the thread count pinned; the medians are reported, next to the ideal speed-up
(dense MACs over kept MACs) and the checkpoint sizes. `randsparse bench` prints these rows.
"""

from __future__ import annotations

import copy
import io
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from randsparse.accel.dispatch import calibrate, dispatch_report
from randsparse.accel.export import check_model_spec, export_bytes, load
from randsparse.errors import ConfigError, is_integer, is_real
from randsparse.evaluate.complexity import count_flops
from randsparse.models import ModelSpec, model_options
from randsparse.sparsity import plan_sparsity

# Input size of the ImageNet models (torchvision architectures) and of models taking `image_size`.
IMAGENET_SIZE = 224
SMALL_IMAGE_SIZE = 28


@dataclass
class BenchRow:
    """One (sparsity, batch) measurement; the first nine fields are the JSON keys the issue fixes."""

    sparsity: float
    batch: int
    dense_ms: float
    masked_ms: float
    sparse_ms: float
    speedup: float
    ideal_speedup: float
    dense_bytes: int
    sparse_bytes: int
    dense_per_s: float = 0.0
    masked_per_s: float = 0.0
    sparse_per_s: float = 0.0
    density: float = 1.0
    max_rel_error: float = 0.0
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def bench_spec(
    name: str,
    width: float | None = None,
    num_classes: int = 10,
    in_channels: int | None = None,
    image_size: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The model spec `bench_model` builds: `in_channels` and `image_size` get the bench defaults.

    Models taking `image_size` (the MLP) default to 1×28×28 inputs, the others to 3 channels.
    """
    accepted = model_options(name)
    opts = dict(options)
    if width is not None:
        opts["width"] = width
    if "image_size" in accepted:
        opts["image_size"] = SMALL_IMAGE_SIZE if image_size is None else image_size
        channels = 1 if in_channels is None else in_channels
    else:
        if image_size is not None:
            raise ConfigError(f"model {name!r} takes no image_size; give --input-shape to change its input")
        channels = 3 if in_channels is None else in_channels
    return ModelSpec(name, num_classes, channels, opts).to_dict()


def default_input_shape(model: nn.Module, spec: dict[str, Any]) -> tuple[int, int, int]:
    """One sample's shape: ``image_size`` where the model takes it, 224² for torchvision models, else 32²."""
    channels = spec["in_channels"]
    if "image_size" in spec["options"]:
        size = int(spec["options"]["image_size"])
    elif type(model).__module__.startswith("torchvision."):
        size = IMAGENET_SIZE
    else:
        size = 32
    return (channels, size, size)


def build_seeded(spec: dict[str, Any], seed: int) -> nn.Module:
    """The model of `spec` initialised from `seed`, in eval mode; the global RNG is left as it was."""
    return ModelSpec.from_dict(spec).build(seed=seed).eval()


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of each function, called round-robin so load drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in samples.items()}


def state_dict_bytes(model: nn.Module) -> int:
    """Size of `torch.save(model.state_dict())`: the dense checkpoint the export is compared with."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual − expected| / max |expected| (0 when both are zero)."""
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    return diff / scale if scale else diff


def _check_list(name: str, values: Sequence[Any], valid: Callable[[Any], bool], what: str) -> None:
    if not values:
        raise ConfigError(f"{name} needs at least one value")
    for value in values:
        if not valid(value):
            raise ConfigError(f"{name} values must be {what}, got {value!r}")


def bench_model(
    spec: dict[str, Any],
    sparsities: Iterable[float],
    batches: Iterable[int] = (1, 64),
    *,
    input_shape: Sequence[int] | None = None,
    distribution: str = "erk",
    seed: int = 0,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Time the dense, masked and exported model of `spec` at each sparsity and batch size.

    `threads` pins `torch.set_num_threads` (and the sparse kernels) for the whole run and is put
    back afterwards. `on_row` is called with each row as soon as it is measured.
    """
    sparsities = list(sparsities)
    batches = list(batches)
    _check_list("sparsity", sparsities, lambda s: is_real(s) and 0 <= s < 1, "in [0, 1)")
    _check_list("batch", batches, lambda b: is_integer(b) and b >= 1, "positive integers")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    spec = check_model_spec(spec)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        dense = build_seeded(spec, seed)
        shape = tuple(int(d) for d in input_shape) if input_shape is not None else default_input_shape(dense, spec)
        dense_bytes = state_dict_bytes(dense)
        rows = []
        for sparsity in sparsities:
            plan = plan_sparsity(dense, sparsity, distribution, seed=seed)
            masked = copy.deepcopy(dense)
            plan.masks.apply_(masked)
            data = export_bytes(masked, plan.masks, spec)
            sparse = load(data)
            flops = count_flops(masked, shape, plan.masks)
            ideal = flops.dense / flops.sparse if flops.sparse else math.inf
            for batch in batches:
                row = _measure(dense, masked, sparse, shape, batch, seed, repeats, warmup)
                row.sparsity = float(sparsity)
                row.ideal_speedup = ideal
                row.dense_bytes = dense_bytes
                row.sparse_bytes = len(data)
                row.density = plan.density
                rows.append(row)
                if on_row is not None:
                    on_row(row)
        return rows
    finally:
        torch.set_num_threads(previous_threads)


@torch.no_grad()
def _measure(
    dense: nn.Module,
    masked: nn.Module,
    sparse: nn.Module,
    shape: tuple[int, ...],
    batch: int,
    seed: int,
    repeats: int,
    warmup: int,
) -> BenchRow:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=generator)
    calibrate(sparse, x)  # each sparse layer decides dense or sparse for this shape, once
    error = relative_error(sparse(x), masked(x))
    timings = time_interleaved(
        {"dense": lambda: dense(x), "masked": lambda: masked(x), "sparse": lambda: sparse(x)}, repeats, warmup
    )
    layers = [d.to_dict() for d in dispatch_report(sparse) if d.key and d.key[0] == batch]
    return BenchRow(
        sparsity=0.0,
        batch=batch,
        dense_ms=timings["dense"],
        masked_ms=timings["masked"],
        sparse_ms=timings["sparse"],
        speedup=timings["dense"] / timings["sparse"],
        ideal_speedup=1.0,
        dense_bytes=0,
        sparse_bytes=0,
        dense_per_s=1e3 * batch / timings["dense"],
        masked_per_s=1e3 * batch / timings["masked"],
        sparse_per_s=1e3 * batch / timings["sparse"],
        max_rel_error=error,
        layers=layers,
    )


def _best_sparse(timings: dict[str, float]) -> float:
    return min(ms for name, ms in timings.items() if name != "dense")


@dataclass(frozen=True)
class ShapeSummary:
    """What the direct sparse convolution (or the best sparse Linear kernel) did on one layer shape and input."""

    sparsity: float
    batch: int
    kind: str
    shape: str
    input: str
    layers: int
    density: float
    dense_ms: float
    sparse_ms: float
    chosen_sparse: int

    @property
    def kernel_speedup(self) -> float:
        """Dense time over the sparse kernel's time, summed over the layers of this shape."""
        return self.dense_ms / self.sparse_ms if self.sparse_ms else math.inf


def shape_summary(rows: Iterable[BenchRow]) -> list[ShapeSummary]:
    """Per (sparsity, batch, layer shape, input size): the summed dense and sparse-kernel times."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        for layer in row.layers:
            size = "×".join(str(d) for d in layer["input"][1:]) or "-"
            key = (row.sparsity, row.batch, layer["kind"], layer["shape"], size)
            groups.setdefault(key, []).append(layer)
    out = []
    for (sparsity, batch, kind, shape, size), layers in groups.items():
        timed = [layer for layer in layers if len(layer["timings_ms"]) > 1]
        out.append(
            ShapeSummary(
                sparsity=sparsity,
                batch=batch,
                kind=kind,
                shape=shape,
                input=size,
                layers=len(layers),
                density=statistics.fmean(layer["density"] for layer in layers),
                dense_ms=sum(layer["timings_ms"].get("dense", 0.0) for layer in timed),
                sparse_ms=sum(_best_sparse(layer["timings_ms"]) for layer in timed),
                chosen_sparse=sum(layer["choice"] != "dense" for layer in layers),
            )
        )
    return out

"""`randsparse bench`: latency, throughput and checkpoint size of dense, masked and exported sparse models."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.table import Table

from randsparse.cli.common import CHANNELS, CLASSES, DEPTH, WIDTH, fraction, model_help, seed
from randsparse.errors import ConfigError
from randsparse.schema import MAX_BATCH, MAX_IMAGE_SIZE, MAX_PROCESSES, MAX_REPEATS, flag_number
from randsparse.sparsity import available_distributions

if TYPE_CHECKING:
    from randsparse.accel.bench import BenchRow


def _list_of(kind: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    """argparse type: a comma-separated list of `kind`, with a one-line message when it is not one."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {what}: {text!r}") from None

    parse.__name__ = getattr(kind, "__name__", "value")  # the item type, as argparse calls it
    return parse


_SIDE = flag_number(int, ge=1, le=MAX_IMAGE_SIZE)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `bench` to the subcommands."""
    parser = commands.add_parser(
        "bench",
        help="time dense, masked and exported sparse models; compare checkpoint sizes",
        description=(
            "For each sparsity, draw random masks for a registered model, export it compressed, and time the"
            " dense, masked and exported models (medians of interleaved runs after warm-up, threads pinned)."
        ),
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help=model_help())
    model.add_argument("--width", type=WIDTH, help="width multiplier (models that have one)")
    model.add_argument("--depth", type=DEPTH, help="depth (models with a depth knob)")
    model.add_argument("--num-classes", type=CLASSES, default=10, help="classifier outputs (default 10)")
    model.add_argument(
        "--in-channels", type=CHANNELS, help="input channels (default 1 for models with image_size, else 3)"
    )
    model.add_argument("--image-size", type=_SIDE, help="input side for models that take image_size (default 28)")
    model.add_argument(
        "--input-shape",
        type=_list_of(_SIDE, f"integers in [1, {MAX_IMAGE_SIZE}]"),
        metavar="C,H,W",
        help="one sample's shape (default: 32×32, 28×28 for image_size models, 224×224 for torchvision models)",
    )
    sparsity = parser.add_argument_group("sparsity")
    sparsity.add_argument(
        "--sparsity",
        type=_list_of(fraction, "finite numbers"),
        required=True,
        metavar="S[,S...]",
        help="fractions of prunable weights zeroed, e.g. 0.5,0.8,0.9,0.95,0.98",
    )
    sparsity.add_argument(
        "--distribution", default="erk", help=f"layer-wise rule; one of: {', '.join(available_distributions())}"
    )
    sparsity.add_argument("--seed", type=seed, default=0, help="seed of the weights, masks and inputs (default 0)")
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--batch",
        type=_list_of(flag_number(int, ge=1, le=MAX_BATCH), f"integers in [1, {MAX_BATCH}]"),
        default=[1, 64],
        metavar="B[,B...]",
    )
    timing.add_argument(
        "--repeats",
        type=flag_number(int, ge=1, le=MAX_REPEATS),
        default=20,
        help="timed runs per model (median reported; default 20)",
    )
    timing.add_argument(
        "--warmup",
        type=flag_number(int, ge=0, le=MAX_REPEATS),
        default=3,
        help="untimed runs per model first (default 3)",
    )
    timing.add_argument(
        "--threads",
        type=flag_number(int, ge=1, le=MAX_PROCESSES),
        default=torch.get_num_threads(),
        help="threads to pin (default: torch's count)",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="time whole training steps instead (dense, masked, engine sparse, engine auto; SGD, ideal ratio)",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace, console: Console) -> int:
    from randsparse.accel.bench import bench_model, bench_spec  # numba loads only when benchmarking

    options = {} if args.depth is None else {"depth": args.depth}
    spec = bench_spec(args.model, args.width, args.num_classes, args.in_channels, args.image_size, **options)
    if args.input_shape is not None and len(args.input_shape) < 1:
        raise ConfigError("--input-shape needs at least one dimension, e.g. 3,32,32")
    if args.train:
        return _run_train_bench(args, spec, console)
    rows = bench_model(
        spec,
        args.sparsity,
        args.batch,
        input_shape=args.input_shape,
        distribution=args.distribution,
        seed=args.seed,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
    )
    if args.format == "json":
        print(json.dumps([row.to_dict() for row in rows], indent=2))
        return 0
    console.print(_rows_table(args.model, args.threads, rows))
    console.print(_shapes_table(rows))
    return 0


def _size(n: float) -> str:
    for unit in ("B", "K", "M"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def _rows_table(model: str, threads: int, rows: list[BenchRow]) -> Table:
    table = Table(
        title=f"{model}: latency (median ms) of the dense, masked and exported models; {threads} threads",
        title_justify="left",
    )
    for name in ("sparsity", "batch", "dense", "masked", "exported", "speed-up", "ideal", "dense/s", "exported/s"):
        table.add_column(name, justify="right")
    table.add_column("checkpoint", justify="right")
    table.add_column("size", justify="right")
    table.add_column("rel err", justify="right")
    for row in rows:
        table.add_row(
            f"{row.sparsity:g}",
            str(row.batch),
            f"{row.dense_ms:.3f}",
            f"{row.masked_ms:.3f}",
            f"{row.sparse_ms:.3f}",
            f"{row.speedup:.2f}×",
            f"{row.ideal_speedup:.1f}×",
            f"{row.dense_per_s:,.0f}",
            f"{row.sparse_per_s:,.0f}",
            f"{_size(row.dense_bytes)}→{_size(row.sparse_bytes)}",
            f"{100 * row.sparse_bytes / row.dense_bytes:.1f}%",
            f"{row.max_rel_error:.0e}",
        )
    return table


def _shapes_table(rows: list[BenchRow]) -> Table:
    from randsparse.accel.bench import shape_summary

    table = Table(
        title="per layer shape: the one-off dense vs sparse-kernel measurement, ms summed over the layers",
        title_justify="left",
    )
    for name in ("sparsity", "batch", "layer", "shape", "input", "n", "density", "dense", "sparse"):
        table.add_column(name, justify="right" if name not in ("layer", "shape") else "left")
    table.add_column("kernel speed-up", justify="right")
    table.add_column("runs sparse", justify="right")
    for item in shape_summary(rows):
        table.add_row(
            f"{item.sparsity:g}",
            str(item.batch),
            item.kind,
            item.shape,
            item.input,
            str(item.layers),
            f"{item.density:.3f}",
            f"{item.dense_ms:.3f}",
            f"{item.sparse_ms:.3f}",
            f"{item.kernel_speedup:.2f}×",
            f"{item.chosen_sparse}/{item.layers}",
        )
    return table


def _run_train_bench(args: argparse.Namespace, spec: dict[str, Any], console: Console) -> int:
    from randsparse.accel.bench import build_seeded, default_input_shape
    from randsparse.accel.train_bench import bench_step
    from randsparse.models import ModelSpec

    torch.set_num_threads(args.threads)
    model_spec = ModelSpec.from_dict(spec)
    shape = tuple(args.input_shape) if args.input_shape else default_input_shape(build_seeded(spec, args.seed), spec)
    rows = [
        bench_step(model_spec, shape, sparsity, args.distribution, batch, args.repeats, args.warmup, args.seed)
        for sparsity in args.sparsity
        for batch in args.batch
    ]
    if args.format == "json":
        print(json.dumps([row.to_dict() for row in rows], indent=2))
        return 0
    table = Table(
        title=f"{args.model}: training step (forward, backward, SGD step), median ms; {args.threads} threads",
        title_justify="left",
    )
    for name in ("sparsity", "batch", "dense", "masked", "sparse", "auto", "sparse×", "auto×", "ideal×", "auto sparse"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            f"{row.sparsity:g}",
            str(row.batch),
            f"{row.dense_ms:.1f}",
            f"{row.masked_ms:.1f}",
            f"{row.sparse_ms:.1f}",
            f"{row.auto_ms:.1f}",
            f"{row.ratio('sparse'):.2f}×",
            f"{row.ratio('auto'):.2f}×",
            f"{row.ideal:.1f}×",
            f"{row.auto_sparse_layers}/{row.layers}",
        )
    console.print(table)
    return 0

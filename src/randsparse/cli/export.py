"""`randsparse export`: a trained run as a compressed sparse model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from randsparse.cli.common import output_file
from randsparse.errors import ConfigError
from randsparse.train import load_run


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `export` to the subcommands."""
    parser = commands.add_parser(
        "export",
        help="write a trained run as a compressed sparse model (randsparse.accel.load reads it)",
        description=(
            "Write the best (or last) checkpoint of RUN_DIR with every pruned weight stored compressed"
            " (kept values plus positions) and the rest as is, with what is needed to rebuild the model."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="directory a `randsparse train` wrote")
    parser.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint to export")
    parser.add_argument(
        "--format",
        default="auto",
        help="position encoding of the kept weights: auto (smallest per layer), bitmap, delta or csr",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="output file (default: RUN_DIR/model-<which>.rsp); a new file, or an earlier export to replace",
    )
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace, console: Console) -> int:
    from randsparse.accel import available_encodings, export_model  # numba: loaded only when exporting
    from randsparse.accel.export import FILE_KIND

    if args.format != "auto" and args.format not in available_encodings():
        raise ConfigError(f"unknown format {args.format!r}; known: auto, {', '.join(available_encodings())}")
    out = Path(args.out) if args.out else Path(args.run_dir) / f"model-{args.which}.rsp"
    output_file(out, FILE_KIND, "--out")  # before the (slow) load: never over a file export did not write
    loaded = load_run(args.run_dir, args.which)
    if loaded.masks is None:
        raise ConfigError(f"{args.run_dir!r} is a dense run: there is nothing to compress")
    summary = export_model(loaded.model, loaded.masks, loaded.model_spec(), out, encoding=args.format)
    dense = loaded.checkpoint.stat().st_size
    console.print(
        f"exported {args.which} checkpoint (epoch {loaded.epoch}) to {out}: {summary.bytes:,} bytes,"
        f" {len(summary.layers)} compressed layers (the training checkpoint, with optimizer state, is {dense:,} bytes)"
    )
    return 0

"""`randsparse train`: one sparse (or dense) run from a YAML config and ``key=value`` overrides.

Under torchrun every process runs this command; rank 0 alone prints. ``--nproc N`` starts torchrun
itself (standalone rendezvous on this machine) with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from randsparse.errors import ConfigError
from randsparse.schema import MAX_PROCESSES, flag_number
from randsparse.train import Interrupted, RunDir, TrainConfig, apply_overrides, build_config, fit
from randsparse.train.config import read_yaml
from randsparse.train.distributed import launch_from_env, with_world_size
from randsparse.train.identity import run_ids
from randsparse.train.loop import check_before_launch

EXIT_DIVERGED = 1


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `train` to the subcommands."""
    parser = commands.add_parser(
        "train",
        help="train one sparse (or dense) model from scratch with a fixed random mask",
        description=(
            "Train one run. The config is a YAML file (see configs/) plus key=value overrides, e.g."
            " `randsparse train --config configs/fmnist-quick.yaml sparsity=0.9 sparsity.distribution=erk`."
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="YAML run config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<model>-<data>-<...>-<hash>)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    parser.add_argument("--data-dir", metavar="DIR", help="where the dataset files are (sets data.root)")
    parser.add_argument(
        "--download", action="store_true", help="let torchvision download missing datasets (sets data.download)"
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "dense", "sparse"),
        help="how masked layers train on the CPU (sets engine): dense, sparse (O(kept) kernels), auto (per layer)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings and errors only")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="how to print the summary")
    parser.add_argument(
        "--nproc",
        type=flag_number(int, ge=1, le=MAX_PROCESSES),
        metavar="N",
        help="train with N processes on this machine (starts torchrun --standalone --nproc-per-node N);"
        " data.batch_size is per process",
    )
    parser.set_defaults(handler=_run_train)


def _default_out(config: TrainConfig) -> Path:
    kind = "dense" if config.is_dense else f"s{config.sparsity.sparsity:g}-{config.sparsity.distribution}"
    if config.sparsity.masks_file is not None or config.sparsity.masks_from_run is not None:
        kind = "saved-masks"
    width = f"-w{config.model.width:g}" if config.model.width is not None else ""
    stem = f"{config.model.name}{width}-{config.data.name}-{kind}"
    stem = re.sub(r"[^\w.+-]", "_", stem)  # plugin names ("pkg.mod:build", "timm/vit") make one folder
    paths = [Path("runs") / f"{stem}-{run_id[:8]}" for run_id in run_ids(config)]
    # the run's directory under the id an older release gave it, if it is there
    return next((path for path in paths if path.exists()), paths[0])


def _resolve(args: argparse.Namespace, world_size: int) -> tuple[TrainConfig, Path, bool]:
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data.root={args.data_dir}")
    if args.download:
        overrides.append("data.download=true")
    if args.engine is not None:
        overrides.append(f"engine={args.engine}")
    if args.resume is not None:
        run = RunDir(args.resume)
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise ConfigError("--resume continues the run in its own directory; --out does not apply")
        # With --config, a process on another machine than rank 0 resumes without seeing the run directory.
        if args.config is None and not run.config_file.is_file():
            raise ConfigError(f"nothing to resume in {args.resume!r}: no config.yaml (is it a run directory?)")
        base = read_yaml(args.config) if args.config else read_yaml(run.config_file)
        config = build_config(apply_overrides(base, overrides), args.config or str(run.config_file))
        return with_world_size(config, world_size), run.path, True
    if args.config is None:
        raise ConfigError("--config FILE is required (or --resume DIR)")
    config = build_config(apply_overrides(read_yaml(args.config), overrides), args.config)
    config = with_world_size(config, world_size)  # the identity, and so the default --out, counts the global batch
    return config, Path(args.out) if args.out else _default_out(config), False


def _setup_logging(quiet: bool, main: bool = True) -> None:
    root = logging.getLogger("randsparse")
    root.handlers.clear()
    root.addHandler(RichHandler(console=Console(stderr=True), show_path=False, show_time=False))
    root.setLevel(logging.WARNING if quiet or not main else logging.INFO)
    root.propagate = False


def torchrun_command(nproc: int, args: argparse.Namespace) -> list[str]:
    """The torchrun command line that runs this `train` command in `nproc` processes on this machine."""
    forwarded: list[str] = []
    for flag, value in (("--config", args.config), ("--out", args.out), ("--resume", args.resume)):
        if value is not None:
            forwarded += [flag, value]
    if args.data_dir is not None:
        forwarded += ["--data-dir", args.data_dir]
    if args.download:
        forwarded.append("--download")
    if args.engine is not None:
        forwarded += ["--engine", args.engine]
    if args.quiet:
        forwarded.append("--quiet")
    forwarded += ["--format", args.format, *args.overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*launcher, "-m", "randsparse", "train", *forwarded]


def _run_train(args: argparse.Namespace, console: Console) -> int:
    launch = launch_from_env()
    if args.nproc is not None:
        if args.nproc < 1:
            raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
        if launch.world_size > 1:
            raise ConfigError("--nproc starts torchrun itself; drop it when launching with torchrun")
    nproc = args.nproc or 1
    config, out, resume = _resolve(args, max(nproc, launch.world_size))  # refuse a bad config before launching
    _setup_logging(args.quiet, main=launch.rank == 0)
    if nproc > 1:
        check_before_launch(config, out, resume=resume)  # one line here, not one buried in each process
        command = torchrun_command(nproc, args)
        logging.getLogger("randsparse").info("starting %d processes: %s", nproc, shlex.join(command))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)
    try:
        summary = fit(config, out, resume=resume, show_progress=not args.quiet and sys.stderr.isatty())
    except Interrupted as exc:
        if launch.rank == 0:
            print(f"randsparse train: {exc}", file=sys.stderr)
        return exc.exit_code  # 130 for Ctrl-C, 143 for SIGTERM
    if launch.rank != 0:
        return EXIT_DIVERGED if summary.get("status") == "diverged" else 0
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(console, summary, out)
    return EXIT_DIVERGED if summary.get("status") == "diverged" else 0


def _print_summary(console: Console, summary: dict, out: Path) -> None:
    if summary.get("status") == "diverged":
        kept = (
            f"last good checkpoint (epoch {summary.get('epochs')}) kept in {out}"
            if (out / "checkpoints" / "last.pt").is_file()
            else "no checkpoint was written before it"
        )
        console.print(f"[red]diverged[/red]: {summary.get('error')}; {kept}")
        return
    best = summary.get("best_val_accuracy")
    best_text = f"best val {best:.4f} (epoch {summary.get('best_epoch')}), " if best is not None else ""
    world = summary.get("world_size", 1)
    processes = f" on {world} processes (global batch {summary['global_batch_size']})" if world > 1 else ""
    console.print(
        f"{summary['model']} on {summary['dataset']}, sparsity {summary['sparsity']:g}"
        f" (density {summary['density']:.4f}): {best_text}test accuracy {summary['test_accuracy']:.4f}"
        f" (last model {summary['test_accuracy_last']:.4f}), {summary['train_seconds']:.0f} s{processes} -> {out}"
    )

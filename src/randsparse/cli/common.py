"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from randsparse.errors import ConfigError
from randsparse.models import ModelSpec, available_models
from randsparse.schema import MAX_CHANNELS, MAX_CLASSES, MAX_DEPTH, MAX_WIDTH, flag_number
from randsparse.storage import check_output_path

# argparse type: a finite float (its range is checked where it is used), one-line message otherwise.
fraction = flag_number(float)
# argparse type: a seed, an int64 >= 0.
seed = flag_number(int, ge=0)


WIDTH = flag_number(float, gt=0, le=MAX_WIDTH)
DEPTH = flag_number(int, ge=1, le=MAX_DEPTH)
CLASSES = flag_number(int, ge=1, le=MAX_CLASSES)
CHANNELS = flag_number(int, ge=1, le=MAX_CHANNELS)


def output_file(path: str | Path, kind: str, flag: str) -> Path:
    """`path` if a command may write its `kind` of file there (`flag` names the option in errors).

    Refused with a `ConfigError`: a run directory's own files (config, metrics, summary,
    checkpoints), a directory, and any existing file that is not a `kind` file randsparse wrote.
    """
    from randsparse.train.rundir import owning_run  # pydantic config: only when writing a file

    run = owning_run(path)
    if run is not None:
        raise ConfigError(
            f"{flag} {str(path)!r} is one of the files of run {str(run)!r}; refusing to write over it"
            " (choose a path outside the run's config, metrics, summary and checkpoints)"
        )
    return check_output_path(path, kind, flag)


def model_help() -> str:
    """--model's help: the registered names and the other forms a model name can take."""
    return (
        f"model name: one of {', '.join(available_models())}; or torchvision/<name>, timm/<name> (see"
        " `randsparse models`), or an import path package.module:builder"
    )


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --width, --depth, --num-classes, --in-channels."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help=model_help())
    group.add_argument("--width", type=WIDTH, help=f"width multiplier (models that have one), at most {MAX_WIDTH:g}")
    group.add_argument("--depth", type=DEPTH, help="depth (models with a depth knob, e.g. cifar_resnet)")
    group.add_argument("--num-classes", type=CLASSES, default=10, help="classifier outputs (default 10)")
    group.add_argument("--in-channels", type=CHANNELS, default=3, help="input channels (default 3)")


def build_model_from_args(args: argparse.Namespace, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model named by `add_model_args`' flags, built on `device` (``"meta"`` for shapes only)."""
    options = {key: value for key in ("width", "depth") if (value := getattr(args, key)) is not None}
    return ModelSpec(args.model, args.num_classes, args.in_channels, options).build(device)

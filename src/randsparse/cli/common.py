"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from randsparse.models import available_models, build
from randsparse.schema import MAX_CHANNELS, MAX_CLASSES, MAX_DEPTH, MAX_WIDTH, flag_number

# argparse type: a finite float (its range is checked where it is used), one-line message otherwise.
fraction = flag_number(float)
# argparse type: a seed, an int64 >= 0.
seed = flag_number(int, ge=0)


WIDTH = flag_number(float, gt=0, le=MAX_WIDTH)
DEPTH = flag_number(int, ge=1, le=MAX_DEPTH)
CLASSES = flag_number(int, ge=1, le=MAX_CLASSES)
CHANNELS = flag_number(int, ge=1, le=MAX_CHANNELS)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --width, --depth, --num-classes, --in-channels."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help=f"model name; one of: {', '.join(available_models())}")
    group.add_argument("--width", type=WIDTH, help=f"width multiplier (models that have one), at most {MAX_WIDTH:g}")
    group.add_argument("--depth", type=DEPTH, help="depth (models with a depth knob, e.g. cifar_resnet)")
    group.add_argument("--num-classes", type=CLASSES, default=10, help="classifier outputs (default 10)")
    group.add_argument("--in-channels", type=CHANNELS, default=3, help="input channels (default 3)")


def build_model_from_args(args: argparse.Namespace, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model named by `add_model_args`' flags, built on `device` (``"meta"`` for shapes only)."""
    options: dict[str, Any] = {}
    if args.width is not None:
        options["width"] = args.width
    if args.depth is not None:
        options["depth"] = args.depth
    with torch.device(device):
        return build(args.model, num_classes=args.num_classes, in_channels=args.in_channels, **options)

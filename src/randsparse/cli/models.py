"""`randsparse models`: the model names every command accepts (registered, plugins, torchvision, timm)."""

from __future__ import annotations

import argparse

from rich.console import Console

SOURCES = ("randsparse", "torchvision", "timm")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `models` to the subcommands."""
    parser = commands.add_parser(
        "models",
        help="list the model names plan, train, study, eval, export and bench accept",
        description=(
            "List model names: those randsparse and installed packages register (entry points of group"
            " randsparse.models), torchvision/<name> or timm/<name> (timm: install randsparse[timm]). An import"
            " path package.module:builder is accepted too, unlisted."
        ),
    )
    parser.add_argument(
        "--source", choices=SOURCES, default="randsparse", help="which names to list (default: randsparse)"
    )
    parser.add_argument("--filter", metavar="TEXT", help="only names containing TEXT")
    parser.set_defaults(handler=_run_models)


def _run_models(args: argparse.Namespace, console: Console) -> int:
    if args.source == "torchvision":
        from randsparse.models.torchvision_zoo import PREFIX, torchvision_names

        names = [PREFIX + n for n in torchvision_names()]
    elif args.source == "timm":
        from randsparse.models.timm_zoo import PREFIX, timm_names

        names = [PREFIX + n for n in timm_names()]
    else:
        from randsparse.models import available_models

        names = available_models()
    shown = [n for n in names if args.filter is None or args.filter in n]
    print("\n".join(shown))
    return 0

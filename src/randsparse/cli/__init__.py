"""The `randsparse` command line: parsing and printing only; the work is in the library.

Each subcommand lives in its own module of this package with an ``add_parser(commands)`` function;
`SUBCOMMANDS` lists them in the order `--help` shows. Errors a user can cause end as one line on
stderr and exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before torch loads OpenMP: idle threads sleep instead of spinning. With the default, torch's
# threads on a busy 2-core machine spent most of their time spin-waiting (a small CNN trained at
# 86 images/s against 1 300 with this setting and 3 900 on one thread).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Sequence
from typing import NoReturn

from rich.console import Console

from randsparse import __version__
from randsparse.errors import RandsparseError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Modules of this package that each add one subcommand.
SUBCOMMANDS: tuple[str, ...] = ("plan", "train", "eval", "study", "report", "export", "bench", "data", "models")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (and exit code 2) instead of usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = Parser(prog="randsparse", description="Sparse training from scratch with random pruning.")
    parser.add_argument("--version", action="version", version=f"randsparse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"randsparse.cli.{name}").add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `key=value` overrides may follow options (`study FILE --out DIR epochs=1`), which argparse
        # alone does not allow for a positional list; anything else is an unknown argument.
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    console = Console(width=None if sys.stdout.isatty() else 120)
    code = _run(args, console)
    distributed = sys.modules.get("randsparse.train.distributed")
    if distributed is not None and distributed.joined_process_group():
        distributed.exit_worker(code)  # a torchrun worker: no interpreter teardown (see exit_worker)
    return code


def _out_of_memory(exc: BaseException) -> bool:
    """True for a failed allocation: `MemoryError` (numpy), `torch.OutOfMemoryError`, torch's CPU allocator."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower()


def _run(args: argparse.Namespace, console: Console) -> int:
    """Run the chosen command; a user-facing failure becomes one line on stderr and an exit code."""
    try:
        return int(args.handler(args, console))
    except RandsparseError as exc:
        print(f"randsparse {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"randsparse {args.command}: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        print(
            f"randsparse {args.command}: error: out of memory; choose a smaller model, width or batch size",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except BrokenPipeError as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # a pipe to a worker broke while stopping
            print(f"randsparse {args.command}: interrupted; run the same command again to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        sys.stderr.close()  # output piped into e.g. `head`: stop quietly, as Unix tools do
        return 0
    except OSError as exc:
        if exc.filename is None:
            raise
        # A path the user gave that cannot be read or written (a file where a folder should be, ...).
        print(f"randsparse {args.command}: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

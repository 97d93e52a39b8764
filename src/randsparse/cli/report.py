"""`randsparse report`: tables and plots of a study directory's results."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from randsparse.errors import ConfigError
from randsparse.experiments import open_store
from randsparse.experiments.runner import STORE_NAME


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `report` to the subcommands."""
    parser = commands.add_parser(
        "report",
        help="write report.md, CSV tables and PNG plots of a study",
        description=(
            "Report a study, finished or not: accuracy vs sparsity per model size, gap to dense vs width and"
            " depth, evaluation metrics, and the runs that are missing or failed."
        ),
    )
    parser.add_argument("study_dir", metavar="STUDY_DIR", help="directory a `randsparse study` wrote")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: STUDY_DIR/report)")
    parser.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace, console: Console) -> int:
    study_dir = Path(args.study_dir)
    if not (study_dir / STORE_NAME).is_file():
        raise ConfigError(
            f"{str(study_dir)!r} is not a study directory (no {STORE_NAME}); run `randsparse study` first"
        )
    from randsparse.experiments.report import write_report  # pandas and matplotlib: only when reporting

    report = write_report(open_store(study_dir), args.out or study_dir / "report")
    console.print(f"report written to {report.out_dir}: " + ", ".join(p.name for p in report.files))
    return 0

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
    parser.add_argument("study_dir", nargs="?", metavar="STUDY_DIR", help="directory a `randsparse study` wrote")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: STUDY_DIR/report)")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="two study directories side by side: per-cell means and B − A (default --out: A/compare)",
    )
    parser.set_defaults(handler=_run_report)


def _study_dir(path: str) -> Path:
    study_dir = Path(path)
    if not (study_dir / STORE_NAME).is_file():
        raise ConfigError(
            f"{str(study_dir)!r} is not a study directory (no {STORE_NAME}); run `randsparse study` first"
        )
    return study_dir


def _run_report(args: argparse.Namespace, console: Console) -> int:
    if args.compare:
        return _run_compare(args, console)
    if args.study_dir is None:
        raise ConfigError("give a STUDY_DIR to report, or --compare A B")
    study_dir = _study_dir(args.study_dir)
    out = Path(args.out) if args.out else study_dir / "report"
    _check_report_dir(out)
    from randsparse.experiments.report import write_report  # pandas and matplotlib: only when reporting

    report = write_report(open_store(study_dir, create=False), out)
    console.print(f"report written to {report.out_dir}: " + ", ".join(p.name for p in report.files))
    return 0


def _check_report_dir(out: Path) -> None:
    """Refuse a report folder that is a file, a run directory or a run's checkpoints (reports never go there)."""
    from randsparse.train.rundir import owning_run  # pydantic config: only when reporting

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder for the report")
    run = owning_run(out / "report.md")
    if run is not None or (out / "config.yaml").is_file():
        raise ConfigError(f"--out {str(out)!r} is a run directory; write the report to a folder of its own")


def _run_compare(args: argparse.Namespace, console: Console) -> int:
    if args.study_dir is not None:
        raise ConfigError("give either STUDY_DIR or --compare A B, not both")
    a, b = (_study_dir(path) for path in args.compare)
    out = Path(args.out) if args.out else a / "compare"
    _check_report_dir(out)
    from randsparse.experiments.compare import compare_studies  # pandas and matplotlib: only when reporting

    comparison = compare_studies(
        open_store(a, create=False), open_store(b, create=False), out, names=(args.compare[0], args.compare[1])
    )
    console.print(f"comparison written to {comparison.out_dir}: " + ", ".join(p.name for p in comparison.files))
    return 0

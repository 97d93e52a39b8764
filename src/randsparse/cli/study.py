"""`randsparse study`: run (or resume) every run of a study file into a study directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from randsparse.errors import ConfigError
from randsparse.experiments import EXECUTORS, StudyStatus, load_study, run_study
from randsparse.schema import MAX_PROCESSES, flag_number


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `study` to the subcommands."""
    parser = commands.add_parser(
        "study",
        help="run a study (grid of runs + dense baselines); run it again to resume",
        description=(
            "Expand a study file into runs, train each into STUDY_DIR/runs/<id>/ and record it in"
            " STUDY_DIR/results.sqlite. Running the same command again resumes: finished runs are"
            " kept, interrupted ones continue from their checkpoints."
        ),
    )
    parser.add_argument("config", metavar="STUDY.yaml", help="study file (see configs/studies/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base run config")
    parser.add_argument("--out", metavar="STUDY_DIR", help="study directory (default: results/<study file name>)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local", help="where runs execute (default local)")
    parser.add_argument(
        "--workers",
        type=flag_number(int, ge=1, le=MAX_PROCESSES),
        default=1,
        help="runs at a time (local: worker processes)",
    )
    parser.add_argument("--address", help="ray: address of an existing cluster (default: start a local one)")
    parser.add_argument(
        "--cpus-per-run",
        type=flag_number(float, gt=0, le=MAX_PROCESSES),
        help="ray: CPUs each run reserves (default 1)",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=flag_number(float, ge=0, le=MAX_PROCESSES),
        help="ray: GPUs each run reserves (default 0)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="run failed and diverged runs again")
    parser.add_argument(
        "--rebind",
        action="store_true",
        help="let STUDY_DIR take another run set (changed grid or overrides); runs left out keep their results",
    )
    parser.add_argument("--data-dir", metavar="DIR", help="where the dataset files are (sets data.root)")
    parser.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(handler=_run_study)


def _run_study(args: argparse.Namespace, console: Console) -> int:
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data.root={args.data_dir}")
    if args.download:
        overrides.append("data.download=true")
    study, base = load_study(args.config, overrides)
    out = Path(args.out) if args.out else Path("results") / Path(args.config).stem
    err = Console(stderr=True)
    log = logging.getLogger("randsparse")
    log.handlers[:] = [RichHandler(console=err, show_path=False, show_time=False)]
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    log.propagate = False
    progress = Progress(
        TextColumn(f"study {study.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        console=err,
        disable=args.quiet,
    )
    task = progress.add_task("study", total=None, stats="")

    def show(status: StudyStatus) -> None:
        counts = status.counts
        finished = counts["done"] + counts["failed"] + counts["diverged"]
        eta = f", ETA {status.eta_seconds / 60:.1f} min" if status.eta_seconds is not None else ""
        stats = f"{counts['done']} done, {status.running} running, {counts['failed'] + counts['diverged']} failed{eta}"
        progress.update(task, total=status.total, completed=finished, stats=stats)

    resources = {k: v for k, v in (("cpus_per_run", args.cpus_per_run), ("gpus_per_run", args.gpus_per_run)) if v}
    if resources and args.executor != "ray":
        raise ConfigError("--cpus-per-run and --gpus-per-run apply to --executor ray")
    with progress:
        final = run_study(
            study,
            base,
            out,
            args.executor,
            args.workers,
            args.retry_failed,
            args.address,
            on_progress=show,
            rebind=args.rebind,
            **resources,
        )
    counts = final.counts
    console.print(
        f"study {study.name}: {counts['done']}/{final.total} done, {counts['failed']} failed,"
        f" {counts['diverged']} diverged, {counts['pending']} pending -> {out}"
        f" (report: randsparse report {out})"
    )
    return 0 if counts["failed"] + counts["diverged"] + counts["pending"] == 0 else 1

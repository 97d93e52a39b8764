"""Studies: grids of runs expanded from one file, a SQLite results store, executors, and the report."""

from typing import Any

from randsparse.experiments.executors import EXECUTORS, Outcome, execute_run, make_executor
from randsparse.experiments.runner import StudyStatus, open_store, prepare, run_study
from randsparse.experiments.store import ResultsStore, RunRow
from randsparse.experiments.study import RunSpec, StudyConfig, expand, load_study

# The report pulls in pandas and matplotlib: loaded on first use, not with the package.
_REPORT = ("Report", "runs_frame", "summary_table", "write_report")


def __getattr__(name: str) -> Any:
    if name in _REPORT:
        from randsparse.experiments import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXECUTORS",
    "Outcome",
    "Report",
    "ResultsStore",
    "RunRow",
    "RunSpec",
    "StudyConfig",
    "StudyStatus",
    "execute_run",
    "expand",
    "load_study",
    "make_executor",
    "open_store",
    "prepare",
    "run_study",
    "runs_frame",
    "summary_table",
    "write_report",
]

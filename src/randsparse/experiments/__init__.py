"""Studies: grids of runs expanded from one file, a SQLite results store, executors, and the report."""

from randsparse.experiments.executors import EXECUTORS, Outcome, execute_run, make_executor
from randsparse.experiments.report import Report, runs_frame, summary_table, write_report
from randsparse.experiments.runner import StudyStatus, open_store, prepare, run_study
from randsparse.experiments.store import ResultsStore, RunRow
from randsparse.experiments.study import RunSpec, StudyConfig, expand, load_study

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

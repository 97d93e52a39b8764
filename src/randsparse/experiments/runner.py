"""Running a study: expand, sync the store, dispatch pending runs to an executor, record outcomes.

Running the same command again resumes a study: stale ``running`` rows of dead drivers go back to
``pending`` (their runs resume from their checkpoints), finished runs are never started again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from randsparse import data as datasets
from randsparse.errors import ConfigError
from randsparse.experiments.executors import Executor, Outcome, make_executor, run_dir_of
from randsparse.experiments.schedule import longest_first
from randsparse.experiments.store import FINISHED, ResultsStore, RunRow, owner_id
from randsparse.experiments.study import RunSpec, StudyConfig, expand
from randsparse.train.tracking import finish_study_run, study_parent_run

log = logging.getLogger(__name__)

STORE_NAME = "results.sqlite"
# A run whose worker process dies this many times under a live driver (e.g. out of memory) is failed, not
# retried again; a driver that is killed itself counts no death against its runs.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class StudyStatus:
    """Counts of runs by status, and a rough estimate of the time left."""

    counts: dict[str, int]
    running: int
    eta_seconds: float | None

    @property
    def total(self) -> int:
        """Runs in the study."""
        return sum(self.counts.values())


def open_store(study_dir: str | Path, create: bool = True) -> ResultsStore:
    """The results store of a study directory (created if absent, unless `create` is False)."""
    return ResultsStore(Path(study_dir) / STORE_NAME, create=create)


def prepare(
    study: StudyConfig, base: dict[str, Any], study_dir: str | Path, retry_failed: bool = False, rebind: bool = False
) -> tuple[ResultsStore, list[RunSpec]]:
    """Expand the study and make its store hold exactly its runs (new ones pending).

    A study directory is bound to the run set it was first run with: another set (a changed grid
    or overrides that change run identities) raises `ConfigError` before anything is written,
    unless `rebind` (then runs no longer in the set are kept, with their results, out of the study).
    """
    specs, _ = _checked_specs(study, base, study_dir, rebind)
    return _sync(study, base, study_dir, specs, retry_failed), specs


def _sync(
    study: StudyConfig, base: dict[str, Any], study_dir: str | Path, specs: list[RunSpec], retry_failed: bool
) -> ResultsStore:
    """Create or update the store so it holds exactly `specs` as the study; re-queue dead drivers' runs."""
    store = open_store(study_dir)
    store.sync(
        [(s.id, s.config.model_dump(mode="json"), s.point) for s in specs],
        {**study.model_dump(mode="json"), "resolved_base": base},
    )
    _requeue(store)
    if retry_failed:
        log.info("re-queued %d failed or diverged run(s)", store.retry())
    return store


def _checked_specs(
    study: StudyConfig, base: dict[str, Any], study_dir: str | Path, rebind: bool
) -> tuple[list[RunSpec], list[RunRow]]:
    """The study's runs and the rows an existing store holds (none without a store), from one read of it.

    Each run keeps the id the store knows it by (runs of older releases keep theirs); a store bound to
    another run set is refused unless `rebind`. Nothing is written.
    """
    specs = expand(study, base)
    if not (Path(study_dir) / STORE_NAME).is_file():
        return specs, []
    store = open_store(study_dir)
    rows = store.rows(include_old=True)
    known = {row.id for row in rows}
    specs = [spec.known_as(known) for spec in specs]
    if not rebind:
        _check_binding(Path(study_dir), {row.id for row in store.rows()}, [s.id for s in specs])
    return specs, rows


def _check_binding(study_dir: Path, bound: set[str], ids: list[str]) -> None:
    if bound and bound != set(ids):
        added, dropped = len(set(ids) - bound), len(bound - set(ids))
        raise ConfigError(
            f"{str(study_dir)!r} holds another run set of this study ({added} run(s) would be added, {dropped}"
            " set aside: the grid or the overrides changed); choose another --out, or pass --rebind to make"
            " this directory hold the new set (finished runs keep their results)"
        )


def check_data(specs: list[RunSpec]) -> None:
    """Make sure every dataset the runs need is there (downloading it once, here, if they may).

    A missing dataset is one clear error before any run starts, not the same failure in every run;
    and a download happens once in this process, not in every worker at the same time.
    """
    seen: set[str] = set()
    for spec in specs:
        data = spec.config.data
        key = json.dumps([data.name, data.root, data.download, data.options], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            datasets.build(data.name, split="test", root=data.root, download=data.download, **data.options)


def run_study(
    study: StudyConfig,
    base: dict[str, Any],
    study_dir: str | Path,
    executor: str = "local",
    workers: int = 1,
    retry_failed: bool = False,
    address: str | None = None,
    on_progress: Callable[[StudyStatus], None] | None = None,
    heartbeat_seconds: float = 15.0,
    rebind: bool = False,
    **executor_options: Any,
) -> StudyStatus:
    """Run every pending run of the study; returns the final counts. Safe to call again to resume.

    Everything that can refuse the study (its runs' configs, the executor's options, the datasets)
    is checked before the store is created or changed. The study ends only when none of its runs is
    pending or running: runs another driver holds are waited for, and taken over if that driver dies.
    `rebind` lets `study_dir` take another run set than the one it holds (see `prepare`).
    """
    specs, rows = _checked_specs(study, base, study_dir, rebind)
    settled = ("done",) if retry_failed else FINISHED  # runs that will not run again need no data
    check_data([s for s in specs if s.id not in {row.id for row in rows if row.status in settled}])
    engine: Executor = make_executor(executor, workers=workers, address=address, **executor_options)
    try:
        tracked = _study_tracking(study, specs, study_dir)  # MLflow's parent run, before the store changes
        status = _drive(study, base, study_dir, specs, engine, retry_failed, on_progress, heartbeat_seconds, tracked)
    except BaseException:
        # A pool broken by the interrupt (workers gone: BrokenPipeError) must not hide why the study stopped.
        with contextlib.suppress(Exception):
            engine.shutdown()
        raise
    engine.shutdown()
    return status


def _drive(
    study: StudyConfig,
    base: dict[str, Any],
    study_dir: str | Path,
    specs: list[RunSpec],
    engine: Executor,
    retry_failed: bool,
    on_progress: Callable[[StudyStatus], None] | None,
    heartbeat_seconds: float,
    tracked: tuple[str, str] | None = None,
) -> StudyStatus:
    """The driver loop: claim, submit, record, heartbeat, until no run is pending or running."""
    store = _sync(study, base, study_dir, specs, retry_failed)
    owner = owner_id()
    priority = None
    if study.order == "longest_first" and engine.slots > 1:  # one worker takes as long in any order
        priority = {run_id: rank for rank, run_id in enumerate(longest_first(specs))}
    in_flight: dict[Any, str] = {}
    durations: list[float] = []
    last_beat = time.monotonic()

    def report() -> StudyStatus:
        counts = store.counts()
        left = counts["pending"] + counts["running"]
        mean = sum(durations) / len(durations) if durations else None
        eta = mean * left / max(1, engine.slots) if mean is not None else None
        status = StudyStatus(counts, len(in_flight), eta)
        if on_progress is not None:
            on_progress(status)
        return status

    stopping = False  # a run was interrupted (Ctrl-C): finish what runs, start nothing new
    try:
        while True:
            while not stopping and len(in_flight) < engine.slots:
                row = store.claim(owner, priority)
                if row is None:
                    break
                handle = engine.submit(row.id, _tracked(row.spec, tracked), run_dir_of(study_dir, row.id))
                in_flight[handle] = row.id
            status = report()
            if not in_flight:
                if stopping or status.counts["running"] == 0:
                    break
                # Another driver holds the rest: wait for it, and take its runs over if it dies.
                time.sleep(heartbeat_seconds)
                _requeue(store)
                continue
            for handle, outcome in engine.wait(list(in_flight), timeout=heartbeat_seconds):
                run_id = in_flight.pop(handle)
                _record(store, run_id, outcome, durations)
                stopping = stopping or outcome.interrupted
            if time.monotonic() - last_beat >= heartbeat_seconds:
                store.heartbeat(in_flight.values(), owner)
                _requeue(store)
                last_beat = time.monotonic()
    except BaseException:
        # Ctrl-C or an error in the driver: stop the runs, hand them back; they resume next time.
        engine.interrupt()
        for run_id in in_flight.values():
            store.finish(run_id, "pending", error="the study process stopped while it ran")
        if tracked is not None:
            finish_study_run(*tracked, status="KILLED")
        raise
    if tracked is not None:
        finish_study_run(*tracked, status="KILLED" if stopping else "FINISHED")
    if stopping:
        raise KeyboardInterrupt
    return report()


def _study_tracking(study: StudyConfig, specs: list[RunSpec], study_dir: str | Path) -> tuple[str, str] | None:
    """(tracking URI, MLflow run id) of the study's parent run when its runs log to MLflow, else None.

    The parent lives in the runs' store (``logging.tracking_uri``, else ``mlflow.db`` in the study
    directory) and is found again when the study resumes.
    """
    logged = [spec.config.logging for spec in specs if spec.config.logging.mlflow]
    if not logged:
        return None
    return study_parent_run(logged[0], study_dir, study.name)


def _tracked(spec: dict[str, Any], tracked: tuple[str, str] | None) -> dict[str, Any]:
    """A run's config as submitted: with MLflow on, logging to the study's store as a child of its run."""
    logging_section = spec.get("logging") or {}
    if tracked is None or not logging_section.get("mlflow"):
        return spec
    uri, parent = tracked
    logging_section = {**logging_section, "tracking_uri": logging_section.get("tracking_uri") or uri}
    return {**spec, "logging": {**logging_section, "parent_run_id": parent}}


def _requeue(store: ResultsStore) -> None:
    """Hand back the runs of drivers that died meanwhile, so this one finishes them."""
    requeued = store.requeue_stale()
    if requeued:
        log.info("re-queued %d run(s) of a study process that stopped: %s", len(requeued), ", ".join(requeued))


def _record(store: ResultsStore, run_id: str, outcome: Outcome, durations: list[float]) -> None:
    if outcome.worker_died and store.get(run_id).deaths + 1 >= MAX_ATTEMPTS:
        outcome = replace(outcome, status="failed", error=f"{outcome.error}, {MAX_ATTEMPTS} times")
    store.finish(run_id, outcome.status, outcome.metrics, outcome.error, outcome.seconds, died=outcome.worker_died)
    if outcome.status == "done":
        durations.append(outcome.seconds)
        log.info("run %s done in %.0f s", run_id, outcome.seconds)
    elif outcome.status == "pending":
        log.warning("run %s stopped (%s); it will resume from its checkpoint", run_id, outcome.error)
    else:
        log.warning("run %s %s: %s", run_id, outcome.status, outcome.error)

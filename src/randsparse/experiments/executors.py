"""Where a study's runs execute: in this process, in local worker processes, or as Ray tasks.

Every executor runs the same function, `execute_run`, on a run's config and directory, and hands
back its outcome; only the study driver writes the results store. A run directory that already
holds a checkpoint (a run cut off earlier) is resumed, never started over.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from randsparse.errors import ConfigError, RandsparseError
from randsparse.registry import Registry, check_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What became of one run: a store status, its summary, and the error text if any."""

    run_id: str
    status: str  # done, failed, diverged, or pending (hand it back: interrupted, or its worker died)
    metrics: dict[str, Any] | None
    error: str | None
    seconds: float
    interrupted: bool = False  # stopped by a signal (Ctrl-C): the study should stop too
    worker_died: bool = False  # the process running it died (killed, out of memory)


def execute_run(run_id: str, config: dict[str, Any], run_dir: str, threads: int | None = None) -> Outcome:
    """Train (or resume) one run and report its outcome; never raises for a run's own failure."""
    import torch

    from randsparse.train import Interrupted, RunDir, build_config, fit

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        # A directory with a run in it is continued (or, stopped before its first checkpoint, restarted).
        summary = fit(build_config(config), run_dir, resume=RunDir(run_dir).has_run())
        status = {"completed": "done", "diverged": "diverged"}.get(summary.get("status", ""), "failed")
        error = summary.get("error") if status != "done" else None
        return Outcome(run_id, status, summary, error, time.perf_counter() - started)
    except Interrupted as exc:
        return Outcome(run_id, "pending", None, str(exc), time.perf_counter() - started, interrupted=True)
    except RandsparseError as exc:
        return Outcome(run_id, "failed", None, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    except Exception as exc:  # a bug in a run must not stop the study; keep its traceback in the store
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.error("run %s failed:\n%s", run_id, traceback.format_exc())
        return Outcome(run_id, "failed", None, detail, time.perf_counter() - started)


class Executor(Protocol):
    """Runs `execute_run` calls concurrently, up to `slots` at a time."""

    slots: int

    def submit(self, run_id: str, config: dict[str, Any], run_dir: str) -> Any:
        """Start one run; returns a handle."""

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, Outcome]]:
        """The handles that finished within `timeout` seconds, with their outcomes."""

    def shutdown(self) -> None:
        """Wait for what still runs, then release resources."""

    def interrupt(self) -> None:
        """Ask every running run to stop now (they checkpoint and hand themselves back)."""


class SequentialExecutor:
    """Runs each run in this process, one after the other (debugging, notebooks, tiny studies)."""

    slots = 1

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._done: dict[int, Outcome] = {}

    def submit(self, run_id: str, config: dict[str, Any], run_dir: str) -> int:
        handle = len(self._done)
        self._done[handle] = execute_run(run_id, config, run_dir, self.threads)
        return handle

    def wait(self, handles: list[int], timeout: float) -> list[tuple[int, Outcome]]:
        return [(h, self._done.pop(h)) for h in handles]

    def shutdown(self) -> None:
        self._done.clear()

    def interrupt(self) -> None:
        """Nothing to do: a run in this process gets the signal itself."""


def _worker_init(threads: int, parent: int) -> None:
    """Set a worker's threads, and make it exit when the study process dies (no orphans)."""
    import torch

    torch.set_num_threads(threads)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="randsparse-parent-watch").start()


class LocalExecutor:
    """N worker processes on this machine; each gets cores // N torch threads (at least 1)."""

    def __init__(self, workers: int, threads: int | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.slots = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=get_context("spawn"),
            initializer=_worker_init,
            initargs=(self.threads, os.getpid()),
        )

    def submit(self, run_id: str, config: dict[str, Any], run_dir: str) -> Future:
        try:
            future = self._pool.submit(execute_run, run_id, config, run_dir, self.threads)
        except BrokenProcessPool:  # a worker died earlier and took the pool down: start a fresh one
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            future = self._pool.submit(execute_run, run_id, config, run_dir, self.threads)
        future.run_id = run_id  # type: ignore[attr-defined]  (named in the outcome if the worker dies)
        return future

    def wait(self, handles: list[Future], timeout: float) -> list[tuple[Future, Outcome]]:
        done, _ = wait_futures(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        results = []
        for future in done:
            try:
                results.append((future, future.result()))
            except Exception as exc:  # a worker process died (killed, out of memory): the pool broke
                run_id = getattr(future, "run_id", "?")
                error = f"its worker process died ({type(exc).__name__})"
                results.append((future, Outcome(run_id, "pending", None, error, 0.0, worker_died=True)))
        return results

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def interrupt(self) -> None:
        """Send each worker the Ctrl-C it may not have had (a signal to the study process alone)."""
        for process in list(getattr(self._pool, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)


class RayExecutor:
    """Ray tasks on an existing cluster (`address`) or a local Ray instance; each reserves its CPUs/GPUs.

    The study directory must be on a file system every node sees (runs write their directories
    there); results come back to this driver, which alone writes the store.
    """

    def __init__(
        self, address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, slots: int | None = None
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("the ray executor needs Ray: pip install 'randsparse[ray]'") from None
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        self.slots = slots or max(1, int(cluster_cpus // cpus_per_run))
        self.threads = max(1, int(cpus_per_run))
        self._task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(execute_run)
        self._run_ids: dict[Any, str] = {}

    def submit(self, run_id: str, config: dict[str, Any], run_dir: str) -> Any:
        ref = self._task.remote(run_id, config, run_dir, self.threads)
        self._run_ids[ref] = run_id
        return ref

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, Outcome]]:
        ready, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        results = []
        for ref in ready:
            try:
                results.append((ref, self._ray.get(ref)))
                self._run_ids.pop(ref, None)
            except Exception as exc:  # the task's worker died
                error = f"its Ray worker died ({type(exc).__name__})"
                outcome = Outcome(self._run_ids.pop(ref, "?"), "pending", None, error, 0.0, worker_died=True)
                results.append((ref, outcome))
        return results

    def interrupt(self) -> None:
        """Cancel the running tasks (Ray raises KeyboardInterrupt in them: they checkpoint and stop)."""
        for ref in list(self._run_ids):
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)

    def shutdown(self) -> None:
        if self._started_here:
            self._ray.shutdown()


def _sequential(workers: int, address: str | None) -> Executor:
    return SequentialExecutor()


def _local(workers: int, address: str | None) -> Executor:
    return LocalExecutor(workers)


def _ray(workers: int, address: str | None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0) -> Executor:
    slots = workers if workers > 1 else None
    return RayExecutor(address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, slots=slots)


ExecutorFactory = Callable[..., Executor]
_EXECUTORS: Registry[ExecutorFactory] = Registry("executor")
_EXECUTORS.add("sequential", _sequential)
_EXECUTORS.add("local", _local)
_EXECUTORS.add("ray", _ray)


def make_executor(name: str, workers: int = 1, address: str | None = None, **options: Any) -> Executor:
    """The executor called `name` (sequential, local, ray); `options` go to it (ray: cpus_per_run, gpus_per_run)."""
    factory = _EXECUTORS[name]
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("workers", "address")]
    check_options(f"executor {name!r}", options, accepted)
    return factory(workers, address, **options)


EXECUTORS: tuple[str, ...] = tuple(_EXECUTORS)


def run_dir_of(study_dir: str | Path, run_id: str) -> str:
    """Where run `run_id` of a study writes its files."""
    return str(Path(study_dir) / "runs" / run_id)

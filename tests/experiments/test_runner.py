"""Running studies: executors, failures, and resuming after the study process is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from randsparse.errors import ConfigError, DatasetNotFoundError
from randsparse.experiments import expand, load_study, open_store, run_study
from randsparse.experiments.executors import Outcome
from randsparse.experiments.runner import MAX_ATTEMPTS, _record, prepare
from tests.experiments._studies import write_study


def _ids(study_dir) -> set[str]:
    return {r.id for r in open_store(study_dir).rows()}


def test_sequential_study_completes_every_run_and_records_summaries(tmp_path) -> None:
    path = write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5, 0.9]})
    study, base = load_study(path)
    final = run_study(study, base, tmp_path / "study", executor="sequential")
    assert final.counts["done"] == 3 == final.total
    rows = open_store(tmp_path / "study").rows()
    for row in rows:
        assert row.metrics["status"] == "completed"
        assert (tmp_path / "study/runs" / row.id / "summary.json").is_file()
        assert row.completions == 1
    # Running it again trains nothing.
    again = run_study(study, base, tmp_path / "study", executor="sequential")
    assert again.counts["done"] == 3
    assert all(r.completions == 1 and r.attempts == 1 for r in open_store(tmp_path / "study").rows())


def test_a_failing_run_is_recorded_and_the_study_goes_on(tmp_path) -> None:
    # An MLP built for 10x10 images fails on the 12x12 data at its first step; the other (dense) run finishes.
    good, bad = {"depth": 1, "hidden": 32}, {"depth": 1, "hidden": 32, "image_size": 10}
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"model.options": [good, bad]}))
    final = run_study(study, base, tmp_path / "study", executor="sequential")
    assert final.counts["done"] == 1 and final.counts["failed"] == 1
    failed = next(r for r in open_store(tmp_path / "study").rows() if r.status == "failed")
    assert "image_size" in failed.error


def test_a_diverging_run_is_recorded_as_diverged_and_the_study_goes_on(tmp_path) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"optim.lr": [0.05, 1e12]}))
    final = run_study(study, base, tmp_path / "study", executor="sequential")
    assert final.counts["done"] == 1 and final.counts["diverged"] == 1
    diverged = next(r for r in open_store(tmp_path / "study").rows() if r.status == "diverged")
    assert "nan" in diverged.error.lower() or "inf" in diverged.error.lower()
    assert diverged.metrics["status"] == "diverged"


def test_retry_failed_runs_them_again(tmp_path) -> None:
    bad = {"depth": 1, "hidden": 32, "image_size": 10}
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"model.options": [bad]}, dense_baselines=False))
    run_study(study, base, tmp_path / "study", executor="sequential")
    final = run_study(study, base, tmp_path / "study", executor="sequential", retry_failed=True)
    assert final.counts["failed"] == 1
    assert open_store(tmp_path / "study").rows()[0].attempts == 2


def test_a_missing_dataset_stops_the_study_before_any_run(tmp_path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    grid = {"data.name": ["cifar10"], "data.root": [str(empty)], "data.options": [{}]}
    study, base = load_study(write_study(tmp_path / "s.yaml", grid=grid, dense_baselines=False))
    with pytest.raises(DatasetNotFoundError, match="cifar10"):
        run_study(study, base, tmp_path / "study", executor="sequential")
    assert not (tmp_path / "study").exists(), "a refused study wrote its store"


def test_a_refused_study_leaves_an_existing_store_untouched(tmp_path) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5]}))
    run_study(study, base, tmp_path / "study", executor="sequential")
    store = tmp_path / "study" / "results.sqlite"
    before = open_store(tmp_path / "study").rows(include_old=True)
    with pytest.raises(ConfigError, match="workers"):
        run_study(study, base, tmp_path / "study", executor="local", workers=0, retry_failed=True)
    assert open_store(tmp_path / "study").rows(include_old=True) == before, "the store was re-synced"
    assert store.is_file()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_driver_counts_no_death_against_its_runs(tmp_path) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5]}, dense_baselines=False))
    store, _ = prepare(study, base, tmp_path / "study")
    run_id = store.rows()[0].id
    for _ in range(MAX_ATTEMPTS):  # drivers killed while the run was in flight: re-queued each time
        store.claim(f"{socket.gethostname()}:{_dead_pid()}")
        assert store.requeue_stale() == [run_id]
    final = run_study(study, base, tmp_path / "study", executor="sequential")
    assert final.counts["done"] == 1, open_store(tmp_path / "study").rows()[0].error
    row = open_store(tmp_path / "study").rows()[0]
    assert row.deaths == 0 and row.attempts == MAX_ATTEMPTS + 1


def test_a_run_fails_after_its_worker_died_max_attempts_times(tmp_path) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5]}, dense_baselines=False))
    store, _ = prepare(study, base, tmp_path / "study")
    run_id = store.rows()[0].id
    died = Outcome(run_id, "pending", None, "the worker died", 0.0, worker_died=True)
    for death in range(1, MAX_ATTEMPTS + 1):
        store.claim()
        _record(store, run_id, died, [])
        row = store.get(run_id)
        assert row.deaths == death
        assert row.status == ("failed" if death == MAX_ATTEMPTS else "pending")
    assert store.retry() == 1 and store.get(run_id).deaths == 0


def test_a_study_takes_over_the_runs_of_a_driver_that_dies(tmp_path) -> None:
    # Another driver (a live process here) holds one run; when it dies, this driver finishes that run
    # instead of reporting success with the run left `running`.
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5, 0.9]}, dense_baselines=False))
    store, _ = prepare(study, base, tmp_path / "study")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    held = store.claim(f"{socket.gethostname()}:{other.pid}")
    reaper = threading.Thread(target=other.wait)
    reaper.start()
    final = run_study(study, base, tmp_path / "study", executor="sequential", heartbeat_seconds=0.5)
    reaper.join()
    assert final.counts["done"] == 2 and final.counts["running"] == 0
    assert open_store(tmp_path / "study").get(held.id).completions == 1


def test_two_local_workers_complete_the_same_runs_as_sequential(tmp_path) -> None:
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5, 0.9], "seed": [0, 1]}))
    expected = {s.id for s in expand(study, base)}
    final = run_study(study, base, tmp_path / "local", executor="local", workers=2)
    assert final.counts["done"] == len(expected) == 6
    assert _ids(tmp_path / "local") == expected


def test_ray_executor_completes_the_same_runs(tmp_path) -> None:
    ray = pytest.importorskip("ray")
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5, 0.9]}))
    expected = {s.id for s in expand(study, base)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        final = run_study(study, base, tmp_path / "ray", executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert final.counts["done"] == len(expected)
    assert _ids(tmp_path / "ray") == expected
    assert all(r.status == "done" for r in open_store(tmp_path / "ray").rows())


def test_killed_study_resumes_without_duplicate_or_missing_runs(tmp_path) -> None:
    grid = {"sparsity": [0.5, 0.9], "seed": [0, 1, 2]}
    path = write_study(tmp_path / "s.yaml", grid=grid)
    expected = {s.id for s in expand(*load_study(path, ["epochs=3"]))}
    study_dir = tmp_path / "study"
    command = [
        sys.executable, "-m", "randsparse", "study", str(path), "--out", str(study_dir),
        "--executor", "local", "--workers", "2", "--quiet", "epochs=3",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:  # kill once some runs are done and others are in flight
        time.sleep(0.2)
        if (study_dir / "results.sqlite").exists():
            counts = open_store(study_dir).counts()
            if counts["done"] >= 2 and counts["running"] >= 1:
                break
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    interrupted = open_store(study_dir).counts()
    assert interrupted["done"] < len(expected)

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    rows = open_store(study_dir).rows()
    assert {r.id for r in rows} == expected
    assert all(r.status == "done" for r in rows)
    assert all(r.completions == 1 for r in rows), "a run was trained to completion twice"
    for row in rows:
        metrics = [json.loads(x) for x in (study_dir / "runs" / row.id / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == [1, 2, 3]


def _study_command(path, study_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "randsparse", "study", str(path), "--out", str(study_dir), "--quiet", *extra]


def _wait_until(predicate, process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _start_study(path, study_dir, *args: str) -> subprocess.Popen:
    """`randsparse study` in a child process, its output captured (for the signal and crash tests)."""
    command = _study_command(path, study_dir, *args)
    # As from a terminal: a background job of a non-interactive shell inherits SIGINT ignored.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )


def _counts(study_dir) -> dict[str, int]:
    if not (study_dir / "results.sqlite").exists():
        return {"running": 0, "done": 0}
    return open_store(study_dir).counts()


def test_ctrl_c_stops_a_sequential_study_and_hands_the_run_back(tmp_path) -> None:
    path = write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5, 0.9], "seed": [0, 1]})
    study_dir = tmp_path / "study"
    process = _start_study(path, study_dir, "--executor", "sequential", "epochs=20")
    _wait_until(lambda: any((study_dir / "runs").glob("*/checkpoints/last.pt")), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    counts = open_store(study_dir).counts()
    assert counts["running"] == 0 and counts["failed"] == 0
    assert counts["done"] == 0, "no run may start after Ctrl-C"


def test_a_dead_local_worker_is_replaced_and_its_run_resumes(tmp_path) -> None:
    path = write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5, 0.9], "seed": [0, 1]})
    expected = {s.id for s in expand(*load_study(path, ["epochs=4"]))}
    study_dir = tmp_path / "study"
    process = _start_study(path, study_dir, "--workers", "2", "epochs=4")
    _wait_until(lambda: _counts(study_dir)["running"] == 2, process)
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    assert workers, "no worker process found"
    os.kill(int(workers[0]), signal.SIGKILL)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    rows = open_store(study_dir).rows()
    assert {r.id for r in rows} == expected
    assert all(r.status == "done" and r.completions == 1 for r in rows)


def test_ctrl_c_to_the_study_process_alone_stops_its_local_workers(tmp_path) -> None:
    path = write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5, 0.9], "seed": [0, 1]})
    study_dir = tmp_path / "study"
    process = _start_study(path, study_dir, "--workers", "2", "epochs=50")
    _wait_until(lambda: len(list((study_dir / "runs").glob("*/checkpoints/last.pt"))) >= 2, process)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert time.monotonic() - started < 60, "the workers' runs were waited for instead of stopped"
    counts = open_store(study_dir).counts()
    assert counts["running"] == 0 and counts["failed"] == 0


class _BrokenByTheInterrupt:
    """An executor whose run is interrupted and whose pool is then broken (its workers gone)."""

    slots = 1

    def submit(self, run_id, config, run_dir):
        raise KeyboardInterrupt

    def wait(self, handles, timeout):
        return []

    def interrupt(self) -> None:
        pass

    def shutdown(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_pool_broken_by_ctrl_c_does_not_hide_the_interrupt(tmp_path, monkeypatch) -> None:
    # Once seen in CI: the broken pool's BrokenPipeError replaced the KeyboardInterrupt, and the
    # CLI took it for stdout piped into `head`: the study stopped silently with exit code 0.
    import randsparse.experiments.runner as runner

    monkeypatch.setattr(runner, "make_executor", lambda *a, **k: _BrokenByTheInterrupt())
    study, base = load_study(write_study(tmp_path / "s.yaml", grid={"sparsity": [0.5]}))
    with pytest.raises(KeyboardInterrupt):
        run_study(study, base, tmp_path / "study")


def test_the_cli_reports_an_interrupt_that_broke_a_pipe_as_interrupted(capsys) -> None:
    import argparse

    from rich.console import Console

    from randsparse.cli import EXIT_INTERRUPTED, _run

    def handler_with_context(args, console):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise BrokenPipeError(32, "Broken pipe")  # noqa: B904 - the context is the point

    args = argparse.Namespace(handler=handler_with_context, command="study")
    assert _run(args, Console()) == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err

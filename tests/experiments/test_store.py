"""The SQLite results store: life cycle, concurrent claims, stale runs."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys

import pytest

from randsparse.errors import FileFormatError
from randsparse.experiments import ResultsStore


def _specs(n: int) -> list[tuple[str, dict, dict]]:
    return [(f"run{i:02d}", {"i": i}, {"i": i}) for i in range(n)]


def test_sync_adds_pending_runs_in_order(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.sync(_specs(3), {"name": "s"})
    assert [r.id for r in store.rows()] == ["run00", "run01", "run02"]
    assert store.counts()["pending"] == 3
    assert store.study() == {"name": "s"}


def test_resync_keeps_results_and_sets_aside_runs_no_longer_in_the_study(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.sync(_specs(3), {})
    row = store.claim("h:1")
    store.finish(row.id, "done", {"test_accuracy": 0.5})
    store.sync([*_specs(3)[1:], ("new", {}, {})], {})
    assert [r.id for r in store.rows()] == ["run01", "run02", "new"]
    assert store.rows(include_old=True)[0].id == "run00"
    store.sync(_specs(3), {})
    assert store.get("run00").status == "done"
    assert store.get("run00").metrics == {"test_accuracy": 0.5}


def test_claim_finish_life_cycle(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.sync(_specs(2), {})
    first = store.claim("host:123")
    assert first.id == "run00" and first.status == "running" and first.attempts == 1
    store.finish(first.id, "done", {"acc": 1.0}, seconds=3.0)
    second = store.claim("host:123")
    store.finish(second.id, "failed", error="boom")
    assert store.claim("host:123") is None
    assert store.get("run00").completions == 1
    assert store.get("run01").error == "boom"
    assert store.retry() == 1
    assert store.get("run01").status == "pending"


def test_interrupted_run_goes_back_to_pending_without_counting_a_completion(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.sync(_specs(1), {})
    row = store.claim("h:1")
    store.finish(row.id, "pending", error="stopped")
    again = store.claim("h:1")
    assert again.id == row.id and again.attempts == 2 and again.completions == 0


def _claim_all(path: str, owner: str, queue) -> None:
    store = ResultsStore(path)
    claimed = []
    while (row := store.claim(owner)) is not None:
        claimed.append(row.id)
        store.finish(row.id, "done", {})
    queue.put(claimed)


def test_concurrent_processes_never_claim_the_same_run(tmp_path) -> None:
    path = tmp_path / "r.sqlite"
    store = ResultsStore(path)
    store.sync(_specs(60), {})
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_claim_all, args=(str(path), f"h:{i}", queue)) for i in range(4)]
    for w in workers:
        w.start()
    claimed = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    everything = [run for part in claimed for run in part]
    assert sorted(everything) == [f"run{i:02d}" for i in range(60)]
    assert all(r.completions == 1 and r.status == "done" for r in store.rows())


def test_runs_of_a_dead_local_process_are_requeued(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.sync(_specs(2), {})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    store.claim(f"{socket.gethostname()}:{dead_pid}")
    store.claim(f"{socket.gethostname()}:{os.getpid()}")  # alive: stays running
    assert store.requeue_stale() == ["run00"]
    assert [r.status for r in store.rows()] == ["pending", "running"]


def test_runs_of_a_silent_remote_owner_are_requeued_after_the_timeout(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.sync(_specs(1), {})
    store.claim("elsewhere:42")
    assert store.requeue_stale(stale_after=3600) == []
    assert store.requeue_stale(stale_after=-1) == ["run00"]


def test_a_file_that_is_not_a_store_is_refused(tmp_path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FileFormatError, match="not a usable results store"):
        ResultsStore(path)


# --- stores that are not what they should be ------------------------------------------------------
def _other_schema(path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (id TEXT, name TEXT)")
    db.execute("CREATE TABLE study (key TEXT, value TEXT)")
    db.commit()
    db.close()


def _newer_version(path) -> None:
    import sqlite3

    ResultsStore(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()


def _other_database(path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()


def _damaged_pages(path) -> None:
    store = ResultsStore(path)
    store.sync(_specs(50), {"name": "s"})
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the header page's schema records
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (_other_schema, "another schema"),
        (_newer_version, "schema version 99"),
        (_other_database, "no 'runs' table"),
        (_damaged_pages, "results store"),
    ],
    ids=["empty", "other_schema", "newer_version", "other_database", "damaged"],
)
def test_stores_that_are_not_ours_are_one_line_file_format_errors(tmp_path, make, fragment) -> None:
    path = tmp_path / "results.sqlite"
    make(path)
    before = path.read_bytes()
    with pytest.raises(FileFormatError, match=fragment) as caught:
        store = ResultsStore(path)
        store.rows()
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == before


def _set(path, sql: str, *args) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("UPDATE runs SET spec = '{not json' WHERE id = 'run01'", "spec of run 'run01'"),
        ("UPDATE runs SET spec = '[1, 2]' WHERE id = 'run01'", "spec is not a JSON object"),
        ("UPDATE runs SET metrics = '\"text\"' WHERE id = 'run01'", "metrics"),
        ("UPDATE runs SET status = 'exploded' WHERE id = 'run01'", "exploded"),
        ("UPDATE study SET value = 'nope'", "study config"),
    ],
    ids=["spec_not_json", "spec_not_object", "metrics_not_object", "unknown_status", "study_not_json"],
)
def test_rows_that_do_not_decode_are_named(tmp_path, sql, fragment) -> None:
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    store.sync(_specs(2), {"name": "s"})
    _set(path, sql)
    with pytest.raises(FileFormatError, match=fragment):
        store.rows()
        store.counts()
        store.study()


@pytest.mark.parametrize("pid", ["'abc'", "-1", "0", "NULL"])
def test_a_running_row_with_an_invalid_pid_is_refused_not_signalled(tmp_path, pid) -> None:
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    store.sync(_specs(1), {})
    store.claim()
    _set(path, f"UPDATE runs SET pid = {pid}")
    with pytest.raises(FileFormatError, match="pid"):
        store.requeue_stale()


def test_a_new_store_is_never_an_empty_file_and_a_missing_one_is_not_created_on_read(tmp_path) -> None:
    path = tmp_path / "results.sqlite"
    with pytest.raises(FileFormatError, match="does not exist"):
        ResultsStore(path, create=False)
    assert not path.exists()
    ResultsStore(path)
    assert path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("results.sqlite")) == []
    assert ResultsStore(path).rows() == []  # reopening our own store is fine

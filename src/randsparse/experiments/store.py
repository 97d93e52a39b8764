"""The results store: one SQLite row per run (spec, status, metrics, timings), safe under concurrency.

SQLite in WAL mode, every change in one short ``BEGIN IMMEDIATE`` transaction, so several study
drivers (and any number of readers, such as a report) can share one store. A run moves
``pending -> running -> done | failed | diverged``; a ``running`` row whose owner died (its process
is gone, or its heartbeat is stale) goes back to ``pending`` and its run resumes from its checkpoint.

The store's schema version is SQLite's ``PRAGMA user_version`` (`SCHEMA_VERSION`; 0 is a store of the
release before versioning, same tables). A new store is built under a temporary name and linked into
place, so the file is either absent or complete: an empty file, a file that is not SQLite, a database
of another schema or version, or a row that does not decode is a `FileFormatError` naming the store.
SQLite checks its own pages, so the store carries no extra checksum.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from randsparse.errors import FileFormatError, first_line, is_integer

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed", "diverged")
FINISHED = ("done", "failed", "diverged")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    position    INTEGER NOT NULL,
    in_study    INTEGER NOT NULL DEFAULT 1,
    spec        TEXT NOT NULL,
    point       TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    metrics     TEXT,
    error       TEXT,
    owner       TEXT,
    host        TEXT,
    pid         INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    deaths      INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    heartbeat   REAL,
    seconds     REAL
);
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = {
    "runs": {
        "id", "position", "in_study", "spec", "point", "status", "metrics", "error", "owner", "host", "pid",
        "attempts", "completions", "created_at", "started_at", "finished_at", "heartbeat", "seconds",
    },
    "study": {"key", "value"},
}  # fmt: skip


@dataclass(frozen=True)
class RunRow:
    """One run as the store holds it."""

    id: str
    position: int
    spec: dict[str, Any]
    point: dict[str, Any]
    status: str
    metrics: dict[str, Any] | None
    error: str | None
    host: str | None
    attempts: int  # times a driver started it
    completions: int
    seconds: float | None
    deaths: int = 0  # times the process running it died under a live driver (killed, out of memory)


def owner_id() -> str:
    """Identity of this process as a store client: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsStore:
    """A study's ``results.sqlite``."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        """Open the store at `path`, creating it (unless `create` is False) when there is no file.

        Raises `FileFormatError` naming the file for an empty file, a file that is not SQLite, or a
        database of another schema or a newer version.
        """
        self.path = Path(path)
        self._label = f"results store {str(self.path)!r}"
        if not self.path.exists():
            if not create:
                raise FileFormatError(f"{self._label} does not exist")
            self._create()
        if not self.path.is_file():
            raise FileFormatError(f"{self._label} is not a file")
        if self.path.stat().st_size == 0:
            raise FileFormatError(
                f"{self._label} is an empty file, not a store randsparse wrote; remove it to start afresh"
            )
        with self._open(plain=True) as db:  # no pragmas yet: a foreign database is left exactly as it was
            self._check_schema(db)
            self._upgrade(db)

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Add what later releases added to a randsparse store (checked by `_check_schema` first)."""
        if "deaths" not in {row[1] for row in db.execute("PRAGMA table_info(runs)")}:
            # a store made before worker deaths were counted apart from a driver's claims
            db.execute("ALTER TABLE runs ADD COLUMN deaths INTEGER NOT NULL DEFAULT 0")

    def _create(self) -> None:
        """Build the schema under a temporary name, then link it into place (never over an existing file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
            finally:
                db.close()
            with contextlib.suppress(FileExistsError):  # another driver created it first: use theirs
                os.link(tmp, self.path)
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)

    def _check_schema(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FileFormatError(
                f"{self._label} has schema version {version}; this randsparse reads up to {SCHEMA_VERSION} (upgrade it)"
            )
        for table, columns in _COLUMNS.items():
            found = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if not found:
                raise FileFormatError(f"{self._label} has no {table!r} table: it is not a randsparse results store")
            if columns - found:
                raise FileFormatError(
                    f"{self._label} has another schema (table {table!r} lacks {sorted(columns - found)[0]!r})"
                )

    @contextlib.contextmanager
    def _open(self, plain: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection (`plain`: without the WAL pragmas); any SQLite failure is a `FileFormatError`."""
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None) if plain else self._connect()
        except sqlite3.DatabaseError as exc:
            raise FileFormatError(f"{self._label} is not a usable results store: {first_line(exc)}") from None
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            raise FileFormatError(f"{self._label} is not a usable results store: {first_line(exc)}") from None
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.row_factory = sqlite3.Row
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._open() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- study membership -------------------------------------------------------------------
    def sync(self, specs: Iterable[tuple[str, dict[str, Any], dict[str, Any]]], study: dict[str, Any]) -> None:
        """Make the store hold exactly these (id, spec, point) runs as the current study.

        New runs are added as pending; runs of an earlier version of the study that are not in it
        any more are kept (with their results) but marked out of the study.
        """
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE runs SET in_study = 0")
            for position, (run_id, spec, point) in enumerate(specs):
                db.execute(
                    "INSERT INTO runs (id, position, spec, point, created_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET in_study = 1, position = excluded.position,"
                    " point = excluded.point",
                    (run_id, position, json.dumps(spec, sort_keys=True), json.dumps(point), now),
                )
            db.execute("INSERT OR REPLACE INTO study (key, value) VALUES ('config', ?)", (json.dumps(study),))

    def study(self) -> dict[str, Any]:
        """The study config last synced into the store (empty if none)."""
        with self._open() as db:
            row = db.execute("SELECT value FROM study WHERE key = 'config'").fetchone()
        if row is None:
            return {}
        study = self._json(row["value"], "the study config")
        if not isinstance(study, dict):
            raise FileFormatError(f"{self._label} is corrupt: the study config is not a JSON object")
        return study

    # --- the run life cycle -------------------------------------------------------------------
    def claim(self, owner: str | None = None, priority: Mapping[str, int] | None = None) -> RunRow | None:
        """Atomically take the first pending run of the study and mark it running by `owner`.

        First by `priority` (run id -> rank, lowest first; runs it does not rank come after), then by
        grid position.
        """
        owner = owner or owner_id()
        host, _, pid = owner.rpartition(":")
        with self._transaction() as db:
            # Unranked, only the first by grid position is read; ranks need every pending id.
            query = "SELECT id FROM runs WHERE status = 'pending' AND in_study = 1 ORDER BY position"
            pending = db.execute(query if priority else query + " LIMIT 1").fetchall()
            if not pending:
                return None
            ranks = priority or {}
            row = min(pending, key=lambda r: ranks.get(r["id"], len(ranks)))  # min keeps the first of equals
            now = time.time()
            db.execute(
                "UPDATE runs SET status = 'running', owner = ?, host = ?, pid = ?, attempts = attempts + 1,"
                " started_at = ?, heartbeat = ?, error = NULL WHERE id = ?",
                (owner, host, int(pid), now, now, row["id"]),
            )
        return self.get(row["id"])

    def heartbeat(self, run_ids: Iterable[str], owner: str | None = None) -> None:
        """Record that `owner` is still working on `run_ids`."""
        owner = owner or owner_id()
        with self._transaction() as db:
            db.executemany(
                "UPDATE runs SET heartbeat = ? WHERE id = ? AND owner = ? AND status = 'running'",
                [(time.time(), run_id, owner) for run_id in run_ids],
            )

    def finish(
        self,
        run_id: str,
        status: str,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        seconds: float | None = None,
        died: bool = False,
    ) -> None:
        """Record a run's outcome; `status` ``pending`` hands it back (e.g. interrupted).

        `died` counts a death of the process that ran it (see `RunRow.deaths`); a driver that is
        itself killed records nothing, so its runs are re-queued without a death against them.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, metrics = COALESCE(?, metrics), error = ?, finished_at = ?,"
                " seconds = COALESCE(?, seconds), completions = completions + ?, deaths = deaths + ?,"
                " owner = NULL WHERE id = ?",
                (
                    status,
                    json.dumps(metrics) if metrics is not None else None,
                    error,
                    time.time() if status in FINISHED else None,
                    seconds,
                    1 if status == "done" else 0,
                    1 if died else 0,
                    run_id,
                ),
            )

    def requeue_stale(self, stale_after: float = 600.0) -> list[str]:
        """Put back to pending the running rows whose owner is dead; returns their ids.

        An owner on this host is dead when its process is gone; elsewhere, when its heartbeat is
        older than `stale_after` seconds.
        """
        here = socket.gethostname()
        now = time.time()
        with self._transaction() as db:
            rows = db.execute("SELECT id, host, pid, heartbeat FROM runs WHERE status = 'running'").fetchall()
            for r in rows:
                if r["host"] == here and not (is_integer(r["pid"]) and r["pid"] > 0):
                    raise FileFormatError(f"{self._label} is corrupt: run {r['id']!r} has pid {r['pid']!r}")
                if r["heartbeat"] is not None and not isinstance(r["heartbeat"], (int, float)):
                    raise FileFormatError(f"{self._label} is corrupt: run {r['id']!r} has heartbeat {r['heartbeat']!r}")
            stale = [
                r["id"]
                for r in rows
                if (r["host"] == here and not _process_alive(r["pid"]))
                or (r["host"] != here and (r["heartbeat"] or 0) < now - stale_after)
            ]
            db.executemany("UPDATE runs SET status = 'pending', owner = NULL WHERE id = ?", [(i,) for i in stale])
        return stale

    def retry(self, statuses: Iterable[str] = ("failed", "diverged")) -> int:
        """Put runs with these statuses back to pending; returns how many."""
        statuses = tuple(statuses)
        with self._transaction() as db:
            marks = ",".join("?" * len(statuses))
            cursor = db.execute(
                "UPDATE runs SET status = 'pending', error = NULL, deaths = 0"
                f" WHERE in_study = 1 AND status IN ({marks})",
                statuses,
            )
            return cursor.rowcount

    # --- reading -----------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRow:
        """One run by id."""
        rows = self._select("WHERE id = ?", (run_id,))
        if not rows:
            raise KeyError(run_id)
        return rows[0]

    def rows(self, include_old: bool = False) -> list[RunRow]:
        """Every run of the current study (and of earlier versions with `include_old`), in order."""
        return self._select("" if include_old else "WHERE in_study = 1", ())

    def counts(self) -> dict[str, int]:
        """Number of runs of the study in each status."""
        counts = dict.fromkeys(STATUSES, 0)
        with self._open() as db:
            found = db.execute("SELECT status, COUNT(*) AS n FROM runs WHERE in_study = 1 GROUP BY status").fetchall()
        unknown = [row["status"] for row in found if row["status"] not in counts]
        if unknown:
            raise FileFormatError(f"{self._label} is corrupt: a run has status {unknown[0]!r}")
        counts.update({row["status"]: row["n"] for row in found})
        return counts

    def _select(self, where: str, args: tuple) -> list[RunRow]:
        with self._open() as db:
            found = db.execute(f"SELECT * FROM runs {where} ORDER BY position", args).fetchall()
        return [self._row(r) for r in found]

    def _json(self, text: Any, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            raise FileFormatError(f"{self._label} is corrupt: {what} is not JSON ({first_line(exc)})") from None

    def _row(self, r: sqlite3.Row) -> RunRow:
        """A stored row, decoded and type-checked; anything malformed is a `FileFormatError` naming the run."""
        run = f"run {r['id']!r}"
        spec = self._json(r["spec"], f"the spec of {run}")
        point = self._json(r["point"], f"the point of {run}")
        metrics = self._json(r["metrics"], f"the metrics of {run}") if r["metrics"] else None
        problems = [
            (not isinstance(r["id"], str), "its id is not text"),
            (not isinstance(spec, dict), "its spec is not a JSON object"),
            (not isinstance(point, dict), "its point is not a JSON object"),
            (metrics is not None and not isinstance(metrics, dict), "its metrics are not a JSON object"),
            (r["status"] not in STATUSES, f"its status {r['status']!r} is unknown"),
            (
                not all(is_integer(r[k]) for k in ("position", "attempts", "deaths", "completions")),
                "a counter is not an integer",
            ),
            (r["seconds"] is not None and not isinstance(r["seconds"], (int, float)), "its seconds are not a number"),
        ]
        for bad, why in problems:
            if bad:
                raise FileFormatError(f"{self._label} is corrupt: {run}: {why}")
        return RunRow(
            id=r["id"],
            position=r["position"],
            spec=spec,
            point=point,
            status=r["status"],
            metrics=metrics,
            error=r["error"],
            host=r["host"],
            attempts=r["attempts"],
            completions=r["completions"],
            seconds=r["seconds"],
            deaths=r["deaths"],
        )

"""The job store: OGC API – Processes jobs (DESIGN.md "Conventions of the field") kept in one SQLite
file, so that a restart of the service loses none.

One row per job::

    id          uuid4                          process   the process id ("classify-raster", "retrain")
    status      OGC statusCode: accepted, running, successful, failed, dismissed
    inputs      the validated inputs (JSON)    outputs   the results (JSON), once successful
    message     a line for people              progress  0–100
    created / started / finished / updated     ISO 8601 UTC ("2026-11-26T03:14:15.926Z")
    attempts    how often a runner started it (a graceful stop gives its start back)
    owner       the runner that holds a running job ("host:pid:token"); heartbeat: when it last said so

Every write is one short transaction (``BEGIN IMMEDIATE``), so several threads and several processes
(uvicorn workers) can share the file: :meth:`JobStore.claim_next` moves one accepted job to running
with an ``UPDATE … WHERE status = 'accepted'`` whose row count it checks, and every later write of a
running job names its owner, so a job is never run twice at once and a runner that lost its job (it
was dismissed, or reclaimed after the runner stalled) learns so at its next write. :meth:`recover`
hands the running jobs of dead runners back to the queue, to be resumed.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cropstar.errors import InputError

#: The OGC API – Processes status codes (statusCode), in the order a job meets them.
STATUSES = ("accepted", "running", "successful", "failed", "dismissed")
#: States a job never leaves (but for dismissal of a finished one).
FINISHED = ("successful", "failed", "dismissed")
#: The version of the table layout below, kept in SQLite's ``user_version``.
SCHEMA_VERSION = 1
#: How often a crashed job is started again before it is marked failed.
MAX_ATTEMPTS = 3
#: The message of a job handed back to the queue by :meth:`JobStore.recover`.
RESUMED = "interrupted by a restart; resumed"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id        TEXT PRIMARY KEY,
    process   TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    inputs    TEXT NOT NULL,
    outputs   TEXT,
    message   TEXT NOT NULL DEFAULT '',
    progress  INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    created   TEXT NOT NULL,
    started   TEXT,
    finished  TEXT,
    updated   TEXT NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    owner     TEXT,
    heartbeat REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created);
"""
_COLUMNS = (
    "id, process, status, inputs, outputs, message, progress, created, started, finished, updated, "
    "attempts, owner, heartbeat"
)


def now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds and a ``Z`` (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_owner() -> str:
    """A runner's owner token: ``host:pid:random`` (the host and pid let :meth:`JobStore.recover`
    see at once that a runner on this host died)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` is a runner of a process on this host that no longer exists (a pid reused
    since, or another host, reads as alive: those jobs come back through their stale heartbeat)."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Job:
    """One job as stored (module docstring)."""

    id: str
    process: str
    status: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    message: str
    progress: int
    created: str
    started: str | None
    finished: str | None
    updated: str
    attempts: int
    owner: str | None = None
    heartbeat: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["inputs"] = json.loads(values["inputs"])
        values["outputs"] = json.loads(values["outputs"]) if values["outputs"] is not None else None
        return cls(**values)


class JobStore:
    """The jobs in the SQLite file ``path`` (created with its folder; WAL journal).

    One connection, used under a lock, serves the threads of this process; transactions keep other
    processes out. Raises InputError for a file that is not a job store or has a newer schema.
    """

    def __init__(self, path: Path | str, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._create_schema()
        except sqlite3.DatabaseError as error:
            raise InputError(f"cannot open the job store {self.path}: {error}") from None

    def _create_schema(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InputError(
                    f"the job store {self.path} has schema version {version}; this cropstar reads "
                    f"version {SCHEMA_VERSION} (upgrade cropstar or use another file)"
                )
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking SQLite's write lock at once (no upgrade deadlocks)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row is not None else None

    # ---- creating and reading ---------------------------------------------------------------
    def create(self, process: str, inputs: dict[str, Any]) -> Job:
        """A new accepted job of ``process`` with ``inputs`` (JSON-serialisable)."""
        job_id, stamp = str(uuid.uuid4()), now_iso()
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, process, status, inputs, message, created, updated) "
                "VALUES (?, ?, 'accepted', ?, 'queued', ?, ?)",
                (job_id, process, json.dumps(inputs), stamp, stamp),
            )
            job = self._one(db, job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, None when there is none."""
        with self._lock:
            return self._one(self._db, job_id)

    def list(
        self,
        *,
        process: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally of the given process id(s) and status(es)."""
        where, args = [], []
        for column, wanted in (("process", process), ("status", status)):
            if wanted is None:
                continue
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            where.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0")
            args += values
        sql = f"SELECT {_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?"
        args += [-1 if limit is None else int(limit), int(offset)]
        with self._lock:
            return [Job.from_row(row) for row in self._db.execute(sql, args)]

    def count(self, *, status: str | None = None) -> int:
        """How many jobs there are (of ``status``)."""
        sql, args = "SELECT COUNT(*) FROM jobs", ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    # ---- the life of a job ------------------------------------------------------------------
    def claim_next(self, owner: str, processes: Sequence[str] | None = None) -> Job | None:
        """Move the oldest accepted job (of ``processes``) to running for ``owner``; None when none waits.

        Safe across threads and processes: the UPDATE only applies while the job is still accepted,
        inside a write transaction, and its row count is checked.
        """
        filter_sql, args = "", []
        if processes is not None:
            filter_sql = f" AND process IN ({', '.join('?' * len(processes))})" if processes else " AND 0"
            args = list(processes)
        stamp = now_iso()
        with self._write() as db:
            row = db.execute(
                f"SELECT id, attempts FROM jobs WHERE status = 'accepted'{filter_sql} "
                "ORDER BY created, rowid LIMIT 1",
                args,
            ).fetchone()
            if row is None:
                return None
            message = "running" if row["attempts"] == 0 else f"resumed (start {row['attempts'] + 1})"
            claimed = db.execute(
                "UPDATE jobs SET status = 'running', started = COALESCE(started, ?), updated = ?, "
                "attempts = attempts + 1, owner = ?, heartbeat = ?, message = ? "
                "WHERE id = ? AND status = 'accepted'",
                (stamp, stamp, owner, time.time(), message, row["id"]),
            ).rowcount
            return self._one(db, row["id"]) if claimed == 1 else None

    def update_progress(self, job_id: str, owner: str, progress: int, message: str | None = None) -> bool:
        """Record the progress (0–100) and message of a running job; False when ``owner`` no longer
        holds it (it was dismissed, or handed to another runner)."""
        progress = max(0, min(100, int(progress)))
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE jobs SET progress = ?, message = COALESCE(?, message), updated = ?, "
                    "heartbeat = ? WHERE id = ? AND status = 'running' AND owner = ?",
                    (progress, message, now_iso(), time.time(), job_id, owner),
                ).rowcount
                == 1
            )

    def heartbeat(self, owner: str, job_ids: Sequence[str] | None = None) -> int:
        """Mark the running jobs of ``owner`` (those of ``job_ids``) as alive now; how many there were."""
        sql, args = (
            "UPDATE jobs SET heartbeat = ? WHERE status = 'running' AND owner = ?",
            [time.time(), owner],
        )
        if job_ids is not None:
            sql += f" AND id IN ({', '.join('?' * len(job_ids))})" if job_ids else " AND 0"
            args += list(job_ids)
        with self._write() as db:
            return db.execute(sql, args).rowcount

    def finish(
        self,
        job_id: str,
        owner: str,
        status: str,
        *,
        outputs: dict[str, Any] | None = None,
        message: str = "",
    ) -> bool:
        """End a running job of ``owner`` as successful (with ``outputs``) or failed (with ``message``);
        False when ``owner`` no longer holds it (then nothing changes)."""
        if status not in ("successful", "failed"):
            raise ValueError(f"a job finishes successful or failed, not {status!r}")
        stamp = now_iso()
        with self._write() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, outputs = ?, message = ?, "
                "progress = CASE WHEN ? = 'successful' THEN 100 ELSE progress END, finished = ?, "
                "updated = ?, owner = NULL, heartbeat = NULL "
                "WHERE id = ? AND status = 'running' AND owner = ?",
                (
                    status,
                    None if outputs is None else json.dumps(outputs),
                    message or status,
                    status,
                    stamp,
                    stamp,
                    job_id,
                    owner,
                ),
            ).rowcount
        return changed == 1

    def release(self, job_id: str, owner: str, message: str) -> bool:
        """Hand a running job of ``owner`` back to the queue (a graceful stop): accepted again, its
        start given back, to be resumed by the next runner."""
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE jobs SET status = 'accepted', message = ?, updated = ?, "
                    "attempts = MAX(attempts - 1, 0), owner = NULL, heartbeat = NULL "
                    "WHERE id = ? AND status = 'running' AND owner = ?",
                    (message, now_iso(), job_id, owner),
                ).rowcount
                == 1
            )

    def dismiss(self, job_id: str) -> tuple[Job, str] | None:
        """Dismiss the job (OGC ``DELETE /jobs/{id}``): the job and its status before, None when
        unknown. A running job's runner learns it at its next write and stops; outputs are dropped."""
        stamp = now_iso()
        with self._write() as db:
            job = self._one(db, job_id)
            if job is None:
                return None
            if job.status != "dismissed":
                db.execute(
                    "UPDATE jobs SET status = 'dismissed', outputs = NULL, message = 'dismissed', "
                    "finished = COALESCE(finished, ?), updated = ?, owner = NULL, heartbeat = NULL "
                    "WHERE id = ?",
                    (stamp, stamp, job_id),
                )
            dismissed = self._one(db, job_id)
        assert dismissed is not None
        return dismissed, job.status

    def recover(self, *, stale_after: float = 60.0, max_attempts: int = MAX_ATTEMPTS) -> list[Job]:
        """Hand back the running jobs of dead runners: those whose owner process on this host is gone,
        or whose heartbeat is older than ``stale_after`` seconds. Each goes back to accepted (message
        :data:`RESUMED`), to be resumed from what it finished (a raster job's blocks, a training run's
        checkpoint), or to failed once it has been started ``max_attempts`` times. Returns them as now."""
        limit = time.time() - stale_after
        stamp = now_iso()
        recovered = []
        with self._write() as db:
            running = [
                Job.from_row(r) for r in db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE status = 'running'")
            ]
            for job in running:
                if not (owner_is_dead(job.owner) or (job.heartbeat or 0) < limit):
                    continue
                if job.attempts >= max_attempts:
                    db.execute(
                        "UPDATE jobs SET status = 'failed', message = ?, finished = ?, updated = ?, "
                        "owner = NULL, heartbeat = NULL WHERE id = ? AND status = 'running'",
                        (
                            f"interrupted {job.attempts} times (by restarts or crashes); given up",
                            stamp,
                            stamp,
                            job.id,
                        ),
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET status = 'accepted', message = ?, updated = ?, owner = NULL, "
                        "heartbeat = NULL WHERE id = ? AND status = 'running'",
                        (RESUMED, stamp, job.id),
                    )
                recovered.append(self._one(db, job.id))
        return [job for job in recovered if job is not None]

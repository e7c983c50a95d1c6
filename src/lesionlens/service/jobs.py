"""The durable job queue: studies arrive, become stable, become jobs, jobs are claimed by workers.

Everything lives in one SQLite file (WAL journal, ``synchronous=FULL``), one connection per
thread and per process, so several worker processes can share it. Every state change is one
``BEGIN IMMEDIATE`` transaction, which is what makes :meth:`JobQueue.claim` atomic.

Studies (DICOM C-STORE): :meth:`JobQueue.touch_study` records one received instance (cheap; call
it from the store handler after the file is on disk). A study is *stable* when no instance
arrived for ``stable_seconds`` (Orthanc's StableAge); :meth:`JobQueue.promote_stable` then turns
it into a job over all the instances received so far.

Idempotency rule. A job's key is ``(study UID, instance digest)`` where the digest is the
SHA-256 of the sorted, de-duplicated SOP Instance UIDs (:func:`instance_digest`); uploads that do
not give their SOP UIDs are digested by file content instead (:func:`content_digest`).

* A key that already has a job (queued, running, failed-awaiting-retry or done) gets no new job:
  re-sending identical instances after completion does **not** reprocess, and ``submit`` of the
  same upload returns the existing job id.
* New instances of a known study change the digest, so the study (all its instances, old and
  new) is processed once more; a still-waiting older job of the same study (``queued`` or
  ``failed``) is marked ``superseded`` since the new job covers it. A running one finishes.
* When the key's last job is ``dead`` (retries exhausted), a re-send is taken as a request to try
  again and makes a new job (a new *generation* of the key).
* :meth:`JobQueue.resubmit` always reprocesses (new generation) — once: while a later job of
  the same key is still waiting or running, it returns that job instead of making another.

Job states: ``queued`` → ``running`` → ``done`` | ``failed`` (will be retried at
``next_attempt_at``; exponential back-off) → … → ``dead`` after ``max_attempts`` attempts
(:meth:`JobQueue.dead_letters`), plus ``superseded``. A claim is a lease: the worker extends
it with :meth:`JobQueue.heartbeat`; a job whose lease ran out (its worker was killed) is re-queued
by the next claim (counted as an attempt, so a study that kills every worker ends ``dead``).
Each claim gets a fresh lease token; heartbeat/complete/fail of a stale claim are refused.

Times are POSIX seconds; every method takes ``now`` (default: the queue's clock) so tests never
sleep.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lesionlens.errors import ConfigError, LesionLensError

JobState = Literal["queued", "running", "done", "failed", "dead", "superseded"]
STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "dead", "superseded")
WAITING = ("queued", "failed")
Clock = Callable[[], float]


class QueueFullError(LesionLensError):
    """Too many jobs are waiting; the caller should refuse the work for now (HTTP 503)."""

    code = "queue-full"


class JobNotFoundError(LesionLensError):
    """No job has this id."""

    code = "job-not-found"


class JobInputError(LesionLensError):
    """A job's input (files folder, study UID) is missing or malformed."""

    code = "job-input"


def backoff_delay(base_seconds: float, max_seconds: float, attempts: int) -> float:
    """Exponential back-off: ``base`` after the first failed attempt, doubling, capped at ``max``."""
    return float(min(max_seconds, base_seconds * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class QueueConfig:
    """stable_seconds: quiet time after the last instance before a study becomes a job.
    lease_seconds: how long a claim lasts without a heartbeat. backoff_seconds doubles per
    failed attempt up to max_backoff_seconds. max_queued: waiting jobs (queued + failed) at which
    :meth:`JobQueue.queue_full` says yes and ``submit`` refuses."""

    stable_seconds: float = 60.0
    lease_seconds: float = 120.0
    max_attempts: int = 3
    backoff_seconds: float = 30.0
    max_backoff_seconds: float = 3600.0
    max_queued: int = 1000
    busy_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("stable_seconds", "backoff_seconds", "max_backoff_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lease_seconds", "busy_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_queued < 1:
            raise ConfigError(f"max_queued must be >= 1, got {self.max_queued}")

    def backoff(self, attempts: int) -> float:
        """Delay before the retry that follows failed attempt number ``attempts`` (1-based)."""
        return backoff_delay(self.backoff_seconds, self.max_backoff_seconds, attempts)


@dataclass
class Job:
    """One unit of work: a study's instance set to run through the pipeline.

    files: the instance files (DICOM-received studies); files_dir: the folder (uploads).
    history: one entry per failed attempt ``{attempt, at, worker, error}``.
    """

    id: str
    study_uid: str
    digest: str
    generation: int
    source: str
    files_dir: str | None
    files: builtins.list[str]
    state: JobState
    attempts: int
    max_attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    worker_id: str | None = None
    lease_until: float | None = None
    lease_token: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    history: builtins.list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.study_uid}:{self.digest}"

    @property
    def inputs(self) -> builtins.list[Path] | Path:
        """What the pipeline reads: the instance files, else the upload folder."""
        if self.files:
            return [Path(p) for p in self.files]
        if self.files_dir is None:
            raise JobInputError(f"job {self.id} has neither files nor a folder")
        return Path(self.files_dir)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("lease_token")
        d["key"] = self.key
        return d

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Job:
        d = dict(row)
        for k, default in (("files", "[]"), ("meta", "{}"), ("history", "[]")):
            d[k] = json.loads(d[k] or default)
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return cls(**d)


def instance_digest(sop_uids: Iterable[str]) -> str:
    """SHA-256 of the sorted, de-duplicated SOP Instance UIDs (the study's instance set)."""
    return hashlib.sha256("\n".join(sorted(set(sop_uids))).encode()).hexdigest()


def content_digest(folder: str | Path) -> str:
    """SHA-256 over (relative path, SHA-256 of bytes) of every file under ``folder``."""
    root = Path(folder)
    h = hashlib.sha256(b"content:")
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
        h.update(f"{p.relative_to(root).as_posix()}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, synchronous=FULL."""
    conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class SqliteStore:
    """One SQLite file, one connection per (process, thread), explicit IMMEDIATE transactions.

    Picklable (path, settings and clock travel; connections are reopened), so an instance can be
    handed to a spawned worker process.
    """

    SCHEMA = ""

    def __init__(self, path: str | Path, busy_timeout: float, clock: Clock) -> None:
        self.path = Path(path)
        self._busy = busy_timeout
        self._clock = clock
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        with self._tx():
            for stmt in self.SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _now(self, now: float | None) -> float:
        return float(self._clock() if now is None else now)

    def _conn(self) -> sqlite3.Connection:
        loc = self._local
        if getattr(loc, "conn", None) is None or loc.pid != os.getpid():
            loc.conn = connect(self.path, self._busy)
            loc.pid = os.getpid()
        conn: sqlite3.Connection = loc.conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's objects go)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
  study_uid TEXT PRIMARY KEY, first_received REAL NOT NULL, last_received REAL NOT NULL,
  pending INTEGER NOT NULL DEFAULT 1, source TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS studies_pending ON studies(pending, last_received);
CREATE TABLE IF NOT EXISTS instances (
  study_uid TEXT NOT NULL, sop_uid TEXT NOT NULL, path TEXT NOT NULL, received REAL NOT NULL,
  PRIMARY KEY (study_uid, sop_uid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, study_uid TEXT NOT NULL, digest TEXT NOT NULL,
  generation INTEGER NOT NULL DEFAULT 0, source TEXT NOT NULL, files_dir TEXT,
  files TEXT NOT NULL DEFAULT '[]', state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,
  updated_at REAL NOT NULL, worker_id TEXT, lease_until REAL, lease_token TEXT,
  started_at REAL, finished_at REAL, error TEXT, result TEXT, meta TEXT NOT NULL DEFAULT '{}',
  history TEXT NOT NULL DEFAULT '[]', UNIQUE (study_uid, digest, generation));
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid, digest)
"""


class JobQueue(SqliteStore):
    """The persistent queue. ``JobQueue(data_dir / "queue.sqlite3", QueueConfig(...))``."""

    SCHEMA = _SCHEMA

    def __init__(self, path: str | Path, config: QueueConfig | None = None, *, clock: Clock = time.time):
        self.config = config or QueueConfig()
        super().__init__(path, self.config.busy_timeout_seconds, clock)

    # ------------------------------------------------------------------ studies (C-STORE)
    def touch_study(self, study_uid: str, sop_uid: str, path: str | Path, *, now: float | None = None,
                    source: str = "dicom", meta: dict[str, Any] | None = None) -> None:
        """Record one received instance (re-sent SOP UIDs update the path); restarts the
        study's stable timer. ``meta`` (e.g. the calling AE title) replaces the study's meta."""
        _check_uid("study_uid", study_uid)
        _check_uid("sop_uid", sop_uid)
        t = self._now(now)
        with self._tx() as c:
            c.execute(
                "INSERT INTO studies(study_uid, first_received, last_received, pending, source, meta) "
                "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(study_uid) DO UPDATE SET pending=1, "
                "last_received=max(last_received, excluded.last_received), "
                "meta=CASE WHEN ? IS NULL THEN meta ELSE excluded.meta END",
                (study_uid, t, t, source, json.dumps(meta or {}), None if meta is None else 1))
            c.execute("INSERT INTO instances(study_uid, sop_uid, path, received) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT(study_uid, sop_uid) DO UPDATE SET path=excluded.path, "
                      "received=excluded.received", (study_uid, sop_uid, str(path), t))

    def promote_stable(self, now: float | None = None) -> builtins.list[Job]:
        """One job per study quiet for ``stable_seconds`` whose instance set has no job yet.
        Returns the jobs created (a stable study already covered creates none)."""
        t = self._now(now)
        limit = t - self.config.stable_seconds
        created: builtins.list[str] = []
        if self._conn().execute("SELECT 1 FROM studies WHERE pending=1 AND last_received <= ? LIMIT 1",
                                (limit,)).fetchone() is None:
            return []  # the common case, without taking the write lock
        with self._tx() as c:
            studies = c.execute("SELECT study_uid, source, meta FROM studies WHERE pending=1 AND "
                                "last_received <= ?", (limit,)).fetchall()
            for st in studies:
                inst = c.execute("SELECT sop_uid, path FROM instances WHERE study_uid=? ORDER BY sop_uid",
                                 (st["study_uid"],)).fetchall()
                digest = instance_digest(r["sop_uid"] for r in inst)
                gen = self._next_generation(c, st["study_uid"], digest)
                if gen is not None:
                    jid = self._insert(c, st["study_uid"], digest, gen, st["source"], None,
                                       [r["path"] for r in inst], json.loads(st["meta"]), t)
                    c.execute("UPDATE jobs SET state='superseded', updated_at=?, error=? WHERE "
                              "study_uid=? AND source=? AND id != ? AND state IN ('queued', 'failed')",
                              (t, f"superseded by job {jid} (new instances)", st["study_uid"], st["source"], jid))
                    created.append(jid)
                c.execute("UPDATE studies SET pending=0 WHERE study_uid=? AND last_received <= ?",
                          (st["study_uid"], limit))
        return [self.get(j) for j in created]

    # ------------------------------------------------------------------ uploads
    def submit(self, study_uid: str, files_dir: str | Path, source: str = "upload", *,
               sop_uids: Iterable[str] | None = None, meta: dict[str, Any] | None = None,
               now: float | None = None) -> str:
        """A job for an uploaded study folder → its id (an existing job's id for an instance set
        already queued/processed). ``sop_uids`` when known, else the files' content, make the
        digest. Raises :class:`QueueFullError` when a new job would exceed ``max_queued``."""
        _check_uid("study_uid", study_uid)
        folder = Path(files_dir)
        if not folder.is_dir():
            raise JobInputError("files folder not found", path=folder)
        digest = instance_digest(sop_uids) if sop_uids is not None else content_digest(folder)
        t = self._now(now)
        with self._tx() as c:
            gen = self._next_generation(c, study_uid, digest)
            if gen is None:
                row = c.execute("SELECT id FROM jobs WHERE study_uid=? AND digest=? ORDER BY generation "
                                "DESC LIMIT 1", (study_uid, digest)).fetchone()
                return str(row["id"])
            self._refuse_if_full(c)
            return self._insert(c, study_uid, digest, gen, source, str(folder.resolve()), [], meta or {}, t)

    def resubmit(self, job_id: str, *, now: float | None = None) -> str:
        """Reprocess a job's instance set (any state) → the new job id; while a later job of the
        same key is still waiting or running, that job's id (so a double click runs once)."""
        t = self._now(now)
        with self._tx() as c:
            old = self._row(c, job_id)
            later = c.execute("SELECT id FROM jobs WHERE study_uid=? AND digest=? AND generation > ? AND "
                              "state IN ('queued', 'running', 'failed') ORDER BY generation DESC LIMIT 1",
                              (old.study_uid, old.digest, old.generation)).fetchone()
            if later is not None:
                return str(later["id"])
            self._refuse_if_full(c)
            gen = int(c.execute("SELECT max(generation) FROM jobs WHERE study_uid=? AND digest=?",
                                (old.study_uid, old.digest)).fetchone()[0]) + 1
            return self._insert(c, old.study_uid, old.digest, gen, old.source, old.files_dir, old.files,
                                {**old.meta, "resubmit_of": old.id}, t)

    # ------------------------------------------------------------------ workers
    def claim(self, worker_id: str, now: float | None = None) -> Job | None:
        """The next due job (oldest due first), now ``running`` under a lease for ``worker_id``;
        None when nothing is due. Expired leases are re-queued first."""
        t = self._now(now)
        if self._conn().execute("SELECT 1 FROM jobs WHERE (state IN ('queued', 'failed') AND next_attempt_at <= ?) "
                                "OR (state='running' AND lease_until < ?) LIMIT 1", (t, t)).fetchone() is None:
            return None  # nothing due: no write lock taken
        with self._tx() as c:
            self._reap(c, t)
            row = c.execute("SELECT id FROM jobs WHERE state IN ('queued', 'failed') AND next_attempt_at <= ? "
                            "ORDER BY next_attempt_at, created_at LIMIT 1", (t,)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE jobs SET state='running', worker_id=?, lease_until=?, lease_token=?, started_at=?, "
                      "attempts=attempts+1, updated_at=? WHERE id=?",
                      (worker_id, t + self.config.lease_seconds, uuid.uuid4().hex, t, t, row["id"]))
            return self._row(c, row["id"])

    def heartbeat(self, job: Job, now: float | None = None) -> bool:
        """Extend the lease of a claimed job; False when the claim is no longer this one's."""
        t = self._now(now)
        with self._tx() as c:
            cur = c.execute("UPDATE jobs SET lease_until=?, updated_at=? WHERE id=? AND state='running' AND "
                            "lease_token=?", (t + self.config.lease_seconds, t, job.id, job.lease_token))
            return cur.rowcount == 1

    def complete(self, job: Job, result: dict[str, Any], now: float | None = None) -> bool:
        """Mark a claimed job ``done`` with its result. Refused (False) once another worker has
        re-claimed it; accepted when its lease ran out but nobody took it over yet."""
        t = self._now(now)
        with self._tx() as c:
            cur = c.execute("UPDATE jobs SET state='done', finished_at=?, updated_at=?, result=?, error=NULL, "
                            "lease_until=NULL WHERE id=? AND lease_token=? AND state IN ('running', 'queued', 'dead')",
                            (t, t, json.dumps(result), job.id, job.lease_token))
            return cur.rowcount == 1

    def fail(self, job: Job, error: str, now: float | None = None, *, permanent: bool = False) -> JobState | None:
        """Record a failed attempt: ``failed`` (retry after back-off) or ``dead`` (attempts used
        up, or ``permanent``). Returns the new state; None when the claim is stale."""
        t = self._now(now)
        with self._tx() as c:
            row = c.execute("SELECT attempts, max_attempts, history FROM jobs WHERE id=? AND state='running' "
                            "AND lease_token=?", (job.id, job.lease_token)).fetchone()
            if row is None:
                return None
            n = int(row["attempts"])
            state: JobState = "dead" if permanent or n >= int(row["max_attempts"]) else "failed"
            history = json.loads(row["history"]) + [{"attempt": n, "at": t, "worker": job.worker_id, "error": error}]
            c.execute("UPDATE jobs SET state=?, error=?, next_attempt_at=?, lease_until=NULL, updated_at=?, "
                      "finished_at=?, history=? WHERE id=?",
                      (state, error, t + self.config.backoff(n), t, t if state == "dead" else None,
                       json.dumps(history), job.id))
            return state

    def reap_expired(self, now: float | None = None) -> builtins.list[str]:
        """Re-queue (or bury, when out of attempts) running jobs whose lease ran out → their ids."""
        with self._tx() as c:
            return self._reap(c, self._now(now))

    def release_dead_workers(self, alive: Callable[[str], bool], now: float | None = None) -> builtins.list[str]:
        """Re-queue at once the running jobs whose worker ``alive(worker_id)`` says is gone (a
        service restarted after a crash need not wait for their leases) → their ids."""
        t = self._now(now)
        with self._tx() as c:
            rows = c.execute("SELECT id, worker_id FROM jobs WHERE state='running'").fetchall()
            gone = [r["id"] for r in rows if not alive(str(r["worker_id"] or ""))]
            for job_id in gone:
                c.execute("UPDATE jobs SET lease_until=? WHERE id=?", (t - 1.0, job_id))
            return self._reap(c, t) if gone else []

    # ------------------------------------------------------------------ reading
    def get(self, job_id: str) -> Job:
        return self._row(self._conn(), job_id)

    def list(self, state: JobState | None = None, *, study_uid: str | None = None, limit: int = 100,
             offset: int = 0) -> builtins.list[Job]:
        """Jobs, newest first, optionally of one state / one study."""
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if state is not None:
            if state not in STATES:
                raise ConfigError(f"state must be one of {', '.join(STATES)}, got {state!r}")
            where.append("state=?")
            args.append(state)
        if study_uid is not None:
            where.append("study_uid=?")
            args.append(study_uid)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._conn().execute(sql + " ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                                    (*args, limit, offset)).fetchall()
        return [Job._from_row(r) for r in rows]

    def dead_letters(self, limit: int = 100) -> builtins.list[Job]:
        return self.list("dead", limit=limit)

    def stats(self, now: float | None = None) -> dict[str, float]:
        """Jobs per state, studies still receiving, and the age of the oldest due waiting job."""
        c = self._conn()
        out: dict[str, float] = {s: 0 for s in STATES}
        for row in c.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state"):
            out[row["state"]] = int(row["n"])
        out["receiving"] = int(c.execute("SELECT count(*) FROM studies WHERE pending=1").fetchone()[0])
        t = self._now(now)
        oldest = c.execute("SELECT min(next_attempt_at) FROM jobs WHERE state IN ('queued', 'failed') "
                           "AND next_attempt_at <= ?", (t,)).fetchone()[0]
        out["oldest_due_age_seconds"] = 0.0 if oldest is None else max(0.0, t - float(oldest))
        return out

    def queue_full(self) -> bool:
        """True when ``max_queued`` jobs are waiting (queued or awaiting a retry)."""
        return self._waiting(self._conn()) >= self.config.max_queued

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _waiting(c: sqlite3.Connection) -> int:
        return int(c.execute("SELECT count(*) FROM jobs WHERE state IN ('queued', 'failed')").fetchone()[0])

    def _refuse_if_full(self, c: sqlite3.Connection) -> None:
        n = self._waiting(c)
        if n >= self.config.max_queued:
            raise QueueFullError(f"{n} jobs are waiting (max_queued={self.config.max_queued}); try again later")

    @staticmethod
    def _next_generation(c: sqlite3.Connection, study_uid: str, digest: str) -> int | None:
        """None when the key is covered by a live job; else the generation a new job gets."""
        row = c.execute("SELECT generation, state FROM jobs WHERE study_uid=? AND digest=? AND state != "
                        "'superseded' ORDER BY generation DESC LIMIT 1", (study_uid, digest)).fetchone()
        if row is not None and row["state"] != "dead":
            return None
        top = c.execute("SELECT max(generation) FROM jobs WHERE study_uid=? AND digest=?",
                        (study_uid, digest)).fetchone()[0]
        return 0 if top is None else int(top) + 1

    def _insert(self, c: sqlite3.Connection, study_uid: str, digest: str, generation: int, source: str,
                files_dir: str | None, files: builtins.list[str], meta: dict[str, Any], t: float) -> str:
        jid = uuid.uuid4().hex
        c.execute("INSERT INTO jobs(id, study_uid, digest, generation, source, files_dir, files, state, "
                  "max_attempts, next_attempt_at, created_at, updated_at, meta) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                  (jid, study_uid, digest, generation, source, files_dir, json.dumps(files),
                   self.config.max_attempts, t, t, t, json.dumps(meta)))
        return jid

    @staticmethod
    def _row(c: sqlite3.Connection, job_id: str) -> Job:
        row = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return Job._from_row(row)

    def _reap(self, c: sqlite3.Connection, t: float) -> builtins.list[str]:
        rows = c.execute("SELECT id, attempts, max_attempts, worker_id, history FROM jobs WHERE state='running' "
                         "AND lease_until < ?", (t,)).fetchall()
        for r in rows:
            dead = int(r["attempts"]) >= int(r["max_attempts"])
            err = f"worker {r['worker_id']} stopped (lease expired) during attempt {r['attempts']}"
            history = json.loads(r["history"]) + [{"attempt": r["attempts"], "at": t, "worker": r["worker_id"],
                                                   "error": err}]
            c.execute("UPDATE jobs SET state=?, error=?, next_attempt_at=?, lease_until=NULL, updated_at=?, "
                      "finished_at=?, history=? WHERE id=?",
                      ("dead" if dead else "queued", err, t, t, t if dead else None, json.dumps(history), r["id"]))
        return [str(r["id"]) for r in rows]


def _check_uid(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > 128 or "\0" in value:
        raise JobInputError(f"{name} must be a non-empty string of at most 128 characters, got {value!r}")


__all__ = [
    "STATES",
    "Job",
    "JobInputError",
    "JobNotFoundError",
    "JobQueue",
    "JobState",
    "QueueConfig",
    "QueueFullError",
    "SqliteStore",
    "connect",
    "content_digest",
    "instance_digest",
]

"""Durable delivery of result objects (SR/SEG/GSPS) to their destinations.

One row per (SOP Instance UID, destination), in SQLite next to the job queue (it may share the
queue's file). Rules:

* **Never dropped.** A failed send is retried with exponential back-off (capped at
  ``max_backoff_seconds``) for as long as it takes; there is no dead state. Rows that keep
  failing show in :meth:`Outbox.stats` (``failing``) and :meth:`Outbox.list`.
* **Exactly once from our side.** ``enqueue`` of an existing (SOP UID, destination) is a
  no-op; a row marked ``delivered`` is never returned by ``due`` or sent again. Before sending,
  :meth:`Outbox.deliver_due` claims the rows (``sending``, with a lease) in one transaction, so
  two delivery loops never send the same row at once. If the process dies between the send and
  ``mark_delivered`` the row is sent again after the lease (the one unavoidable at-least-once
  window; receivers store by SOP Instance UID, so that repeat overwrites itself).

The sending itself is injected: ``send(destination, [paths]) -> {path: ok}`` (a C-STORE SCU or a
STOW-RS client); a sender that raises fails every file of that call.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.service.jobs import Clock, SqliteStore, backoff_delay

DeliveryState = Literal["pending", "sending", "delivered"]
Sender = Callable[[str, list[Path]], Mapping[Path, bool]]


class OutboxError(LesionLensError):
    """A result file cannot be put in the outbox (unreadable, no SOP Instance UID)."""

    code = "outbox"


@dataclass(frozen=True)
class OutboxConfig:
    """backoff_seconds doubles per failed attempt up to max_backoff_seconds; lease_seconds: how
    long a claimed (``sending``) row waits before another loop may send it; batch: rows per call."""

    backoff_seconds: float = 10.0
    max_backoff_seconds: float = 900.0
    lease_seconds: float = 300.0
    batch: int = 100
    busy_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ConfigError("backoff_seconds and max_backoff_seconds must be >= 0")
        if self.lease_seconds <= 0 or self.busy_timeout_seconds <= 0:
            raise ConfigError("lease_seconds and busy_timeout_seconds must be > 0")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")

    def backoff(self, attempts: int) -> float:
        return backoff_delay(self.backoff_seconds, self.max_backoff_seconds, attempts)


@dataclass
class Delivery:
    """One (result object, destination) pair and its delivery record."""

    id: int
    job_id: str
    sop_uid: str
    destination: str
    path: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    lease_until: float | None = None
    delivered_at: float | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeliveryReport:
    """What one :meth:`Outbox.deliver_due` call did; ``errors`` by destination."""

    delivered: int = 0
    failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, sop_uid TEXT NOT NULL,
  destination TEXT NOT NULL, path TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,
  updated_at REAL NOT NULL, lease_until REAL, delivered_at REAL, last_error TEXT,
  UNIQUE (sop_uid, destination));
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox(job_id)
"""


def sop_instance_uid(path: str | Path) -> str:
    """The SOP Instance UID of a DICOM file (header only)."""
    from lesionlens.dicom.io import read_dataset

    try:
        uid = str(read_dataset(path, stop_before_pixels=True).get("SOPInstanceUID", "") or "")
    except LesionLensError as exc:
        raise OutboxError(f"cannot read the result object: {exc.reason}", path=path) from exc
    if not uid:
        raise OutboxError("the result object has no SOP Instance UID", path=path)
    return uid


class Outbox(SqliteStore):
    """``Outbox(data_dir / "queue.sqlite3", OutboxConfig(...))``; see the module rules."""

    SCHEMA = _SCHEMA

    def __init__(self, path: str | Path, config: OutboxConfig | None = None, *, clock: Clock = time.time):
        self.config = config or OutboxConfig()
        super().__init__(path, self.config.busy_timeout_seconds, clock)

    def enqueue(self, job_id: str, destination: str, files: Mapping[str, str | Path] | Iterable[str | Path],
                now: float | None = None) -> int:
        """Queue result objects for ``destination`` → the number of rows added (existing
        (SOP UID, destination) pairs are left as they are). ``files``: DICOM paths (their SOP
        Instance UIDs are read) or a mapping SOP UID → path. All rows in one transaction."""
        if not destination or not isinstance(destination, str):
            raise ConfigError(f"destination must be a non-empty string, got {destination!r}")
        if isinstance(files, Mapping):
            pairs = [(str(uid), Path(p)) for uid, p in files.items()]
        else:
            pairs = [(sop_instance_uid(p), Path(p)) for p in files]
        t = self._now(now)
        added = 0
        with self._tx() as c:
            for uid, p in pairs:
                cur = c.execute("INSERT INTO outbox(job_id, sop_uid, destination, path, next_attempt_at, created_at, "
                                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sop_uid, destination) DO NOTHING",
                                (job_id, uid, destination, str(p.resolve()), t, t, t))
                added += cur.rowcount
        return added

    def due(self, now: float | None = None, *, limit: int | None = None) -> builtins.list[Delivery]:
        """Rows to send now: pending and due, or ``sending`` under an expired lease (read only)."""
        t = self._now(now)
        rows = self._conn().execute(
            "SELECT * FROM outbox WHERE (state='pending' AND next_attempt_at <= ?) OR "
            "(state='sending' AND lease_until < ?) ORDER BY next_attempt_at, id LIMIT ?",
            (t, t, limit or self.config.batch)).fetchall()
        return [Delivery(**dict(r)) for r in rows]

    def claim_due(self, now: float | None = None, *, limit: int | None = None) -> builtins.list[Delivery]:
        """The due rows, marked ``sending`` under a lease (atomically: no other loop gets them)."""
        t = self._now(now)
        with self._tx():
            rows = self.due(t, limit=limit)
            c = self._conn()
            for d in rows:
                c.execute("UPDATE outbox SET state='sending', lease_until=?, updated_at=? WHERE id=?",
                          (t + self.config.lease_seconds, t, d.id))
                d.state, d.lease_until = "sending", t + self.config.lease_seconds
        return rows

    def mark_delivered(self, ids: int | Iterable[int], now: float | None = None) -> int:
        """Mark rows delivered → how many changed (already delivered ones do not count)."""
        t = self._now(now)
        n = 0
        with self._tx() as c:
            for i in [ids] if isinstance(ids, int) else ids:
                n += c.execute("UPDATE outbox SET state='delivered', delivered_at=?, updated_at=?, lease_until=NULL, "
                               "last_error=NULL WHERE id=? AND state != 'delivered'", (t, t, i)).rowcount
        return n

    def mark_failed(self, ids: int | Iterable[int], error: str, now: float | None = None) -> int:
        """Record a failed send: back to ``pending``, retried after back-off. Never dropped."""
        t = self._now(now)
        n = 0
        with self._tx() as c:
            for i in [ids] if isinstance(ids, int) else ids:
                row = c.execute("SELECT attempts FROM outbox WHERE id=? AND state != 'delivered'", (i,)).fetchone()
                if row is None:
                    continue
                attempts = int(row["attempts"]) + 1
                c.execute("UPDATE outbox SET state='pending', attempts=?, next_attempt_at=?, last_error=?, "
                          "lease_until=NULL, updated_at=? WHERE id=?",
                          (attempts, t + self.config.backoff(attempts), error, t, i))
                n += 1
        return n

    def deliver_due(self, send: Sender, now: float | None = None) -> DeliveryReport:
        """Claim the due rows, call ``send`` once per destination, record each file's outcome."""
        t = self._now(now)
        report = DeliveryReport()
        by_dest: dict[str, builtins.list[Delivery]] = {}
        for d in self.claim_due(t):
            by_dest.setdefault(d.destination, []).append(d)
        for dest, rows in by_dest.items():
            missing = [d for d in rows if not Path(d.path).is_file()]
            if missing:
                report.failed += self.mark_failed([d.id for d in missing], "result file missing", t)
                report.errors[dest] = f"result file missing: {missing[0].path}"
            rows = [d for d in rows if d not in missing]
            if not rows:
                continue
            try:
                outcome = dict(send(dest, [Path(d.path) for d in rows]))
            except Exception as exc:  # the sender's failure is data here: recorded, retried later
                msg = f"{type(exc).__name__}: {exc}"
                report.failed += self.mark_failed([d.id for d in rows], msg, t)
                report.errors[dest] = msg
                continue
            ok = [d.id for d in rows if outcome.get(Path(d.path)) is True]
            bad = [d.id for d in rows if outcome.get(Path(d.path)) is not True]
            report.delivered += self.mark_delivered(ok, t)
            if bad:
                report.failed += self.mark_failed(bad, "the destination did not accept the object", t)
                report.errors.setdefault(dest, "the destination did not accept some objects")
        return report

    # ------------------------------------------------------------------ reading
    def get(self, delivery_id: int) -> Delivery | None:
        row = self._conn().execute("SELECT * FROM outbox WHERE id=?", (delivery_id,)).fetchone()
        return None if row is None else Delivery(**dict(row))

    def list(self, *, job_id: str | None = None, state: DeliveryState | None = None,
             limit: int = 1000) -> builtins.list[Delivery]:
        where, args = [], []
        if job_id is not None:
            where.append("job_id=?")
            args.append(job_id)
        if state is not None:
            where.append("state=?")
            args.append(state)
        sql = "SELECT * FROM outbox" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id LIMIT ?"
        return [Delivery(**dict(r)) for r in self._conn().execute(sql, (*args, limit)).fetchall()]

    def stats(self) -> dict[str, int]:
        """Rows per state, plus ``failing``: undelivered rows with at least one failed attempt."""
        c = self._conn()
        out = {"pending": 0, "sending": 0, "delivered": 0}
        for row in c.execute("SELECT state, count(*) AS n FROM outbox GROUP BY state"):
            out[row["state"]] = int(row["n"])
        out["failing"] = int(c.execute("SELECT count(*) FROM outbox WHERE state != 'delivered' AND attempts > 0")
                             .fetchone()[0])
        return out


def run_outbox(outbox: Outbox, send: Sender, stop_event: threading.Event, *, poll_seconds: float = 2.0) -> None:
    """Deliver due rows until ``stop_event`` is set (a thread of the service process)."""
    while not stop_event.is_set():
        report = outbox.deliver_due(send)
        if not report.delivered and not report.failed:
            stop_event.wait(poll_seconds)


__all__ = [
    "Delivery",
    "DeliveryReport",
    "DeliveryState",
    "Outbox",
    "OutboxConfig",
    "OutboxError",
    "Sender",
    "run_outbox",
    "sop_instance_uid",
]

"""The SQLite job queue: stable studies, idempotency, leases, retries, concurrency."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.service.jobs import (
    JobInputError,
    JobNotFoundError,
    JobQueue,
    QueueConfig,
    QueueFullError,
    instance_digest,
)

CFG = QueueConfig(stable_seconds=10, lease_seconds=30, max_attempts=3, backoff_seconds=5,
                  max_backoff_seconds=100, max_queued=50)


@pytest.fixture
def q(tmp_path: Path) -> JobQueue:
    return JobQueue(tmp_path / "q.sqlite3", CFG, clock=lambda: 0.0)


def receive(q: JobQueue, study: str, sops: list[str], t: float) -> None:
    for s in sops:
        q.touch_study(study, s, f"/data/{study}/{s}.dcm", now=t)


def test_database_settings(q: JobQueue) -> None:
    conn = sqlite3.connect(q.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert q._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_study_becomes_a_job_only_when_stable(q: JobQueue) -> None:
    receive(q, "1.2.3", ["1.2.3.1", "1.2.3.2"], t=100)
    assert q.promote_stable(now=105) == []
    receive(q, "1.2.3", ["1.2.3.3"], t=108)  # restarts the stable timer
    assert q.promote_stable(now=115) == []
    assert q.stats(now=115)["receiving"] == 1
    (job,) = q.promote_stable(now=118)
    assert job.state == "queued" and job.study_uid == "1.2.3" and job.source == "dicom"
    assert job.files == [f"/data/1.2.3/1.2.3.{i}.dcm" for i in (1, 2, 3)]
    assert job.digest == instance_digest(["1.2.3.3", "1.2.3.1", "1.2.3.2"])
    assert q.promote_stable(now=500) == []  # promoted once
    assert q.stats(now=500)["receiving"] == 0


def finish(q: JobQueue, t: float) -> str:
    job = q.claim("w", now=t)
    assert job is not None
    assert q.complete(job, {"ok": True}, now=t + 1)
    return job.id


def test_identical_resend_after_done_is_not_reprocessed(q: JobQueue) -> None:
    receive(q, "S", ["a", "b"], t=0)
    q.promote_stable(now=20)
    first = finish(q, 21)
    receive(q, "S", ["b", "a"], t=100)  # the PACS sends the same study again
    assert q.promote_stable(now=200) == []
    assert q.claim("w", now=300) is None
    assert [j.id for j in q.list()] == [first]


def test_new_instances_reprocess_the_whole_study_once(q: JobQueue) -> None:
    receive(q, "S", ["a", "b"], t=0)
    q.promote_stable(now=20)
    finish(q, 21)
    receive(q, "S", ["a", "b", "c"], t=100)
    (job,) = q.promote_stable(now=200)
    assert len(job.files) == 3 and job.digest == instance_digest("abc")
    assert q.promote_stable(now=300) == []
    finish(q, 301)
    assert q.stats()["done"] == 2


def test_waiting_job_is_superseded_by_new_instances(q: JobQueue) -> None:
    receive(q, "S", ["a"], t=0)
    (old,) = q.promote_stable(now=20)
    receive(q, "S", ["b"], t=30)
    (new,) = q.promote_stable(now=50)
    assert q.get(old.id).state == "superseded" and "new instances" in (q.get(old.id).error or "")
    job = q.claim("w", now=60)
    assert job is not None and job.id == new.id and len(job.files) == 2
    assert q.claim("w", now=61) is None


def test_running_job_is_not_superseded(q: JobQueue) -> None:
    receive(q, "S", ["a"], t=0)
    q.promote_stable(now=20)
    running = q.claim("w1", now=21)
    receive(q, "S", ["b"], t=22)
    q.promote_stable(now=40)
    assert running is not None and q.get(running.id).state == "running"
    assert q.stats()["queued"] == 1


def test_resend_after_dead_retries_as_new_generation(q: JobQueue) -> None:
    receive(q, "S", ["a"], t=0)
    (job,) = q.promote_stable(now=20)
    t = 20.0
    for _ in range(3):
        t += 1000
        claimed = q.claim("w", now=t)
        assert claimed is not None
        q.fail(claimed, "boom", now=t)
    assert q.get(job.id).state == "dead"
    receive(q, "S", ["a"], t=t + 1)
    (again,) = q.promote_stable(now=t + 100)
    assert again.generation == 1 and again.digest == job.digest


def test_submit_is_idempotent_by_content_and_by_sop_uids(q: JobQueue, tmp_path: Path) -> None:
    up = tmp_path / "upload"
    up.mkdir()
    (up / "x.dcm").write_bytes(b"one")
    j1 = q.submit("U", up, now=1)
    assert q.submit("U", up, now=2) == j1
    assert q.get(j1).files_dir == str(up.resolve()) and q.get(j1).source == "upload"
    (up / "y.dcm").write_bytes(b"two")
    j2 = q.submit("U", up, now=3)
    assert j2 != j1
    j3 = q.submit("V", up, sop_uids=["2", "1"], now=4)
    assert q.submit("V", up, sop_uids=["1", "2", "2"], now=5) == j3
    with pytest.raises(JobInputError):
        q.submit("U", tmp_path / "missing")
    with pytest.raises(JobInputError):
        q.submit("", up)


def test_resubmit_reprocesses_once(q: JobQueue, tmp_path: Path) -> None:
    jid = q.submit("U", tmp_path, sop_uids=["1"], now=1)
    finish(q, 2)
    r1 = q.resubmit(jid, now=10)
    assert q.resubmit(jid, now=11) == r1  # double click
    assert q.get(r1).generation == 1 and q.get(r1).meta["resubmit_of"] == jid
    assert finish(q, 12) == r1
    r2 = q.resubmit(jid, now=20)
    assert r2 not in (jid, r1) and q.get(r2).generation == 2
    with pytest.raises(JobNotFoundError):
        q.resubmit("nope")


def test_failures_back_off_exponentially_then_dead(q: JobQueue, tmp_path: Path) -> None:
    jid = q.submit("U", tmp_path, sop_uids=["1"], now=0)
    job = q.claim("w", now=0)
    assert job is not None and job.attempts == 1 and job.state == "running"
    assert q.fail(job, "err 1", now=10) == "failed"
    assert q.get(jid).next_attempt_at == 15  # 5 s
    assert q.claim("w", now=14) is None
    job = q.claim("w", now=15)
    assert job is not None and job.attempts == 2
    assert q.fail(job, "err 2", now=20) == "failed"
    assert q.get(jid).next_attempt_at == 30  # 10 s
    job = q.claim("w", now=30)
    assert job is not None
    assert q.fail(job, "err 3", now=31) == "dead"
    assert q.claim("w", now=10_000) is None
    (dead,) = q.dead_letters()
    assert dead.id == jid and dead.error == "err 3"
    assert [h["error"] for h in dead.history] == ["err 1", "err 2", "err 3"]
    assert q.stats()["dead"] == 1


def test_permanent_failure_goes_dead_at_once(q: JobQueue, tmp_path: Path) -> None:
    q.submit("U", tmp_path, sop_uids=["1"], now=0)
    job = q.claim("w", now=0)
    assert job is not None and q.fail(job, "not CT", now=1, permanent=True) == "dead"


def test_expired_lease_is_requeued_and_stale_worker_is_fenced(q: JobQueue, tmp_path: Path) -> None:
    jid = q.submit("U", tmp_path, sop_uids=["1"], now=0)
    a = q.claim("A", now=0)
    assert a is not None
    assert q.heartbeat(a, now=25)  # lease now until 55
    assert q.claim("B", now=50) is None
    b = q.claim("B", now=56)  # A was killed: no heartbeat since 25
    assert b is not None and b.id == jid and b.attempts == 2 and b.worker_id == "B"
    assert "lease expired" in (q.get(jid).history[0]["error"])
    assert not q.heartbeat(a, now=57)
    assert not q.complete(a, {"from": "A"}, now=58)
    assert q.fail(a, "late", now=58) is None
    assert q.complete(b, {"from": "B"}, now=60)
    assert q.get(jid).state == "done" and q.get(jid).result == {"from": "B"}


def test_late_result_accepted_when_nobody_took_over(q: JobQueue, tmp_path: Path) -> None:
    jid = q.submit("U", tmp_path, sop_uids=["1"], now=0)
    a = q.claim("A", now=0)
    assert a is not None
    assert q.reap_expired(now=100) == [jid]
    assert q.get(jid).state == "queued"
    assert q.complete(a, {"late": True}, now=101)
    assert q.get(jid).state == "done"


def test_worker_that_keeps_dying_ends_dead(q: JobQueue, tmp_path: Path) -> None:
    jid = q.submit("U", tmp_path, sop_uids=["1"], now=0)
    t = 0.0
    for _ in range(3):
        assert q.claim("w", now=t) is not None
        t += 31
    assert q.claim("w", now=t) is None
    assert q.get(jid).state == "dead" and len(q.get(jid).history) == 3


def test_queue_full_and_stats(q: JobQueue, tmp_path: Path) -> None:
    small = JobQueue(tmp_path / "small.sqlite3", QueueConfig(max_queued=2))
    small.submit("A", tmp_path, sop_uids=["1"], now=0)
    assert not small.queue_full()
    small.submit("B", tmp_path, sop_uids=["1"], now=0)
    assert small.queue_full()
    with pytest.raises(QueueFullError) as err:
        small.submit("C", tmp_path, sop_uids=["1"], now=0)
    assert isinstance(err.value, LesionLensError) and err.value.code == "queue-full"
    assert small.submit("A", tmp_path, sop_uids=["1"], now=0)  # existing job: not refused
    st = small.stats(now=7)
    assert st["queued"] == 2 and st["running"] == 0 and st["oldest_due_age_seconds"] == 7
    assert set(st) >= {"queued", "running", "done", "failed", "dead", "superseded", "receiving"}


def test_list_get_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    q1 = JobQueue(path, CFG)
    ids = [q1.submit(f"S{i}", tmp_path, sop_uids=[str(i)], now=i) for i in range(3)]
    q1.close()
    q2 = pickle.loads(pickle.dumps(JobQueue(path, CFG)))
    assert [j.id for j in q2.list()] == ids[::-1]
    assert [j.id for j in q2.list("queued", study_uid="S1")] == [ids[1]]
    assert q2.get(ids[0]).to_dict()["key"].startswith("S0:")
    with pytest.raises(JobNotFoundError):
        q2.get("missing")
    with pytest.raises(ConfigError):
        q2.list("bogus")  # type: ignore[arg-type]


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        QueueConfig(max_attempts=0)
    with pytest.raises(ConfigError):
        QueueConfig(lease_seconds=0)


def test_concurrent_claims_from_threads_take_each_job_once(q: JobQueue, tmp_path: Path) -> None:
    ids = {q.submit(f"S{i}", tmp_path, sop_uids=[str(i)], now=0) for i in range(40)}
    got: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := q.claim(name, now=1)) is not None:
            with lock:
                got.append(job.id)
            q.complete(job, {}, now=2)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)


def _claim_all(path: str, name: str, out: mp.Queue, start: threading.Barrier) -> None:  # type: ignore[type-arg]
    q = JobQueue(path, CFG)
    mine = []
    start.wait(30)
    while (job := q.claim(name, now=1)) is not None:
        mine.append(job.id)
        time.sleep(0.005)
        q.complete(job, {}, now=2)
    out.put(mine)


def test_concurrent_claims_from_processes_take_each_job_once(q: JobQueue, tmp_path: Path) -> None:
    ids = {q.submit(f"S{i}", tmp_path, sop_uids=[str(i)], now=0) for i in range(45)}
    ctx = mp.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_claim_all, args=(str(q.path), f"p{i}", out, start)) for i in range(2)]
    for p in procs:
        p.start()
    got = [jid for _ in procs for jid in out.get(timeout=60)]
    for p in procs:
        p.join(30)
    assert sorted(got) == sorted(ids)
    assert q.stats()["done"] == 45

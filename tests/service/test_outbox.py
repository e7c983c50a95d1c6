"""The outbox: one row per (SOP instance, destination), retried with back-off, delivered once."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lesionlens.dicom.write import save_dataset
from lesionlens.service.outbox import (
    Outbox,
    OutboxConfig,
    OutboxError,
    run_outbox,
    sop_instance_uid,
)

CFG = OutboxConfig(backoff_seconds=10, max_backoff_seconds=40, lease_seconds=60, batch=50)


def dicom_file(path: Path) -> tuple[Path, str]:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.3"
    ds.Modality = "SR"
    save_dataset(ds, path)
    return path, str(ds.SOPInstanceUID)


@pytest.fixture
def box(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "q.sqlite3", CFG, clock=lambda: 0.0)


@pytest.fixture
def results(tmp_path: Path) -> list[tuple[Path, str]]:
    return [dicom_file(tmp_path / name) for name in ("sr.dcm", "seg.dcm", "gsps.dcm")]


class FlakySender:
    """Our own sender interface: refuses the first ``fail_times`` calls, then accepts everything."""

    def __init__(self, fail_times: int, mode: str = "false"):
        self.fail_times, self.mode = fail_times, mode
        self.calls: list[tuple[str, list[Path]]] = []

    def __call__(self, destination: str, files: list[Path]) -> dict[Path, bool]:
        self.calls.append((destination, list(files)))
        if len(self.calls) <= self.fail_times:
            if self.mode == "raise":
                raise ConnectionError("association rejected")
            return {f: False for f in files}
        return {f: True for f in files}


def test_enqueue_reads_sop_uids_and_is_idempotent(box: Outbox, results: list[tuple[Path, str]]) -> None:
    paths = [p for p, _ in results]
    assert sop_instance_uid(paths[0]) == results[0][1]
    assert box.enqueue("job1", "PACS", paths) == 3
    assert box.enqueue("job1", "PACS", paths) == 0  # same (sop, destination): no-op
    assert box.enqueue("job2", "PACS", {uid: p for p, uid in results}) == 0  # re-run of a job, too
    assert box.enqueue("job1", "ARCHIVE", paths[:1]) == 1
    assert {d.sop_uid for d in box.list(job_id="job1")} == {uid for _, uid in results}
    assert box.stats() == {"pending": 4, "sending": 0, "delivered": 0, "failing": 0}


def test_enqueue_refuses_non_dicom(box: Outbox, tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(OutboxError):
        box.enqueue("j", "PACS", [bad])


def test_fails_n_times_then_delivers_exactly_once(box: Outbox, results: list[tuple[Path, str]]) -> None:
    box.enqueue("job1", "PACS", [p for p, _ in results], now=0)
    send = FlakySender(fail_times=3)
    t, delays = 0.0, []
    for _ in range(3):
        report = box.deliver_due(send, now=t)
        assert report.failed == 3 and report.delivered == 0 and "PACS" in report.errors
        nxt = box.list()[0].next_attempt_at
        delays.append(nxt - t)
        assert box.due(now=nxt - 0.1) == []  # back-off respected
        t = nxt
    assert delays == [10, 20, 40]  # exponential
    assert box.stats()["failing"] == 3
    report = box.deliver_due(send, now=t)
    assert report.delivered == 3 and report.failed == 0
    assert box.stats() == {"pending": 0, "sending": 0, "delivered": 3, "failing": 0}
    for later in (t + 1, t + 1000, t + 10**6):
        assert box.deliver_due(send, now=later).delivered == 0
    sent = Counter(f for dest, files in send.calls[3:] for f in files)
    assert len(send.calls) == 4 and all(n == 1 for n in sent.values()) and len(sent) == 3
    assert box.mark_delivered([d.id for d in box.list()], now=t) == 0  # already delivered
    assert box.mark_failed(box.list()[0].id, "late", now=t) == 0


def test_backoff_is_capped_and_rows_are_never_dropped(box: Outbox, results: list[tuple[Path, str]]) -> None:
    box.enqueue("job1", "PACS", [results[0][0]], now=0)
    send = FlakySender(fail_times=10**9, mode="raise")
    t = 0.0
    for _ in range(12):
        report = box.deliver_due(send, now=t)
        assert report.failed == 1 and "ConnectionError" in report.errors["PACS"]
        t = box.list()[0].next_attempt_at
    (row,) = box.list()
    assert row.state == "pending" and row.attempts == 12 and "association rejected" in (row.last_error or "")
    assert row.next_attempt_at - box.list()[0].updated_at == 40  # capped


def test_partial_acceptance(box: Outbox, results: list[tuple[Path, str]]) -> None:
    box.enqueue("job1", "PACS", [p for p, _ in results], now=0)
    refused = results[1][0]

    def send(destination: str, files: list[Path]) -> dict[Path, bool]:
        return {f: f != refused for f in files}

    report = box.deliver_due(send, now=0)
    assert report.delivered == 2 and report.failed == 1
    assert [d.path for d in box.list(state="pending")] == [str(refused.resolve())]


def test_missing_file_is_kept_and_retried(box: Outbox, results: list[tuple[Path, str]]) -> None:
    path, uid = results[0]
    box.enqueue("job1", "PACS", {uid: path}, now=0)
    path.unlink()
    send = FlakySender(0)
    report = box.deliver_due(send, now=0)
    assert report.failed == 1 and send.calls == [] and "missing" in report.errors["PACS"]
    dicom_file(path)  # restored (e.g. a volume re-mounted)
    assert box.deliver_due(send, now=100).delivered == 1


def test_claimed_rows_are_not_sent_twice_until_their_lease_expires(box: Outbox,
                                                                   results: list[tuple[Path, str]]) -> None:
    box.enqueue("job1", "PACS", [p for p, _ in results], now=0)
    claimed = box.claim_due(now=0)  # then the delivering process dies before marking anything
    assert len(claimed) == 3 and all(d.state == "sending" for d in claimed)
    assert box.due(now=30) == [] and box.claim_due(now=30) == []
    send = FlakySender(0)
    assert box.deliver_due(send, now=61).delivered == 3  # lease over: sent again


def test_concurrent_delivery_loops_send_each_row_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "q.sqlite3", OutboxConfig(batch=5))
    files = [dicom_file(tmp_path / f"sr{i}.dcm")[0] for i in range(30)]
    box.enqueue("job", "PACS", files)
    sent: list[Path] = []
    lock = threading.Lock()

    def send(destination: str, batch: list[Path]) -> dict[Path, bool]:
        with lock:
            sent.extend(batch)
        return {f: True for f in batch}

    def loop() -> None:
        while box.deliver_due(send).delivered:
            pass

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sent) == sorted(p.resolve() for p in files)


def test_run_outbox_loop_delivers_and_stops(tmp_path: Path, results: list[tuple[Path, str]]) -> None:
    box = Outbox(tmp_path / "loop.sqlite3", CFG)
    box.enqueue("job1", "PACS", [p for p, _ in results])
    send = FlakySender(0)
    stop = threading.Event()
    th = threading.Thread(target=run_outbox, args=(box, send, stop), kwargs={"poll_seconds": 0.01})
    th.start()
    try:
        for _ in range(500):
            if box.stats()["delivered"] == 3:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        th.join(10)
    assert box.stats()["delivered"] == 3 and not th.is_alive()

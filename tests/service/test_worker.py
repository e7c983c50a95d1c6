"""Workers: a job runs through the pipeline, outputs are committed once, a killed worker's job is
re-run to completion, results reach the outbox exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lesionlens.dicom.write import save_dataset
from lesionlens.pipeline.types import StudyResult
from lesionlens.service.jobs import JobQueue, QueueConfig
from lesionlens.service.outbox import Outbox
from lesionlens.service.worker import (
    LeaseLostError,
    WorkerConfig,
    load_outcome,
    process_job,
    run_worker,
    start_workers,
)

MODEL = {"name": "fake", "version": "9.9.9", "sha256": "ab" * 32}


def _sr(path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = generate_uid()  # random: a recomputation would change it
    ds.Modality = "SR"
    save_dataset(ds, path)


def fake_writer(results: list[Any], out_dir: Path) -> dict[str, Any]:
    """Our stand-in for write_outputs: findings.json, an SR and a SEG per study."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "findings.json").write_text("{}")
    _sr(out_dir / "sr.dcm")
    _sr(out_dir / "seg.dcm")
    (out_dir / "report.html").write_text("<html></html>")
    return {}


@dataclass
class FakeDetector:
    delay: float = 0.0
    marker: str | None = None
    fail: str | None = None
    calls: list[Any] = field(default_factory=list)

    def detect(self, inputs: Any) -> list[StudyResult]:
        self.calls.append(inputs)
        if self.marker:
            Path(self.marker).write_text(str(os.getpid()))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError(self.fail)
        return [StudyResult(study_instance_uid="1.2.3", model=dict(MODEL), status="ok")]


@dataclass
class FakeFactory:
    """Picklable detector factory (travels to spawned workers)."""

    delay: float = 0.0
    marker: str | None = None
    fail: str | None = None
    _det: FakeDetector | None = None

    def __call__(self) -> FakeDetector:
        if self._det is None:
            self._det = FakeDetector(self.delay, self.marker, self.fail)
        return self._det


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def study(tmp_path: Path, n: int = 3) -> Path:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    for i in range(n):
        (d / f"CT{i}.dcm").write_bytes(b"x")
    return d


def test_process_job_commits_outputs_once(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.sqlite3")
    jid = q.submit("1.2.3", study(tmp_path))
    job = q.claim("w")
    assert job is not None and job.id == jid
    fac = FakeFactory()
    out = process_job(job, detector_factory=fac, out_root=tmp_path / "out", writer=fake_writer)
    assert out.out_dir == tmp_path / "out" / jid
    assert [p.name for p in out.dicom_files] == ["seg.dcm", "sr.dcm"]
    assert all(p.is_file() for p in out.dicom_files) and (out.out_dir / "findings.json").is_file()
    assert out.model == MODEL and out.studies[0]["status"] == "ok"
    assert not list((tmp_path / "out" / ".staging").iterdir())
    again = process_job(job, detector_factory=fac, out_root=tmp_path / "out", writer=fake_writer)
    assert again.to_dict() == out.to_dict() and len(fac().calls) == 1  # committed: not recomputed


def test_lost_lease_discards_the_work(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.sqlite3")
    q.submit("1.2.3", study(tmp_path))
    job = q.claim("w")
    assert job is not None
    with pytest.raises(LeaseLostError):
        process_job(job, detector_factory=FakeFactory(), out_root=tmp_path / "out", writer=fake_writer,
                    still_ours=lambda: False)
    assert load_outcome(job.id, tmp_path / "out") is None and not (tmp_path / "out" / job.id).exists()


def test_worker_loop_promotes_processes_and_queues_delivery(tmp_path: Path) -> None:
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite3", QueueConfig(stable_seconds=30), clock=clock)
    box = Outbox(tmp_path / "q.sqlite3", clock=clock)
    files = study(tmp_path)
    for i, f in enumerate(sorted(files.iterdir())):
        q.touch_study("1.2.3", f"1.2.3.{i}", f, meta={"destinations": ["PACS", "ARCHIVE"]})
    cfg = WorkerConfig(out_root=tmp_path / "out", poll_seconds=0.01, max_jobs=1, writer=fake_writer)
    clock.t += 10
    assert run_worker(q, box, detector_factory=FakeFactory(), config=cfg,
                      stop_event=_stop_after(threading.Event(), 0.2)) == 0
    clock.t += 30  # the study is now stable
    assert run_worker(q, box, detector_factory=FakeFactory(), config=cfg, stop_event=threading.Event()) == 1
    (job,) = q.list()
    assert job.state == "done" and job.result is not None and job.result["model"] == MODEL
    rows = box.list(job_id=job.id)
    assert sorted((r.destination, Path(r.path).name) for r in rows) == [
        ("ARCHIVE", "seg.dcm"), ("ARCHIVE", "sr.dcm"), ("PACS", "seg.dcm"), ("PACS", "sr.dcm")]


def _stop_after(event: threading.Event, seconds: float) -> threading.Event:
    threading.Timer(seconds, event.set).start()
    return event


def test_failures_are_retried_then_dead_and_missing_input_is_permanent(tmp_path: Path) -> None:
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite3", QueueConfig(max_attempts=2, backoff_seconds=5), clock=clock)
    jid = q.submit("1.2.3", study(tmp_path))
    cfg = WorkerConfig(out_root=tmp_path / "out", max_jobs=1, writer=fake_writer)
    bad = FakeFactory(fail="model exploded")
    run_worker(q, None, detector_factory=bad, config=cfg, stop_event=threading.Event())
    assert q.get(jid).state == "failed" and "RuntimeError: model exploded" in (q.get(jid).error or "")
    clock.t += 5
    run_worker(q, None, detector_factory=bad, config=cfg, stop_event=threading.Event())
    assert q.get(jid).state == "dead" and [j.id for j in q.dead_letters()] == [jid]
    gone = tmp_path / "gone"
    gone.mkdir()
    jid2 = q.submit("4.5.6", gone)
    gone.rmdir()
    run_worker(q, None, detector_factory=FakeFactory(), config=cfg, stop_event=threading.Event())
    assert q.get(jid2).state == "dead" and q.get(jid2).attempts == 1


def test_simulated_worker_death_is_rerun_to_completion(tmp_path: Path) -> None:
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite3", QueueConfig(lease_seconds=60), clock=clock)
    box = Outbox(tmp_path / "q.sqlite3", clock=clock)
    jid = q.submit("1.2.3", study(tmp_path), meta={"destinations": ["PACS"]})
    dead_worker = q.claim("worker-A")  # ... and worker A is killed mid-study: no heartbeats any more
    assert dead_worker is not None
    cfg = WorkerConfig(out_root=tmp_path / "out", max_jobs=1, poll_seconds=0.01, writer=fake_writer)
    assert run_worker(q, box, detector_factory=FakeFactory(), config=cfg,
                      stop_event=_stop_after(threading.Event(), 0.2)) == 0  # lease still running
    clock.t += 61
    assert run_worker(q, box, detector_factory=FakeFactory(), config=cfg, stop_event=threading.Event()) == 1
    job = q.get(jid)
    assert job.state == "done" and job.attempts == 2 and "lease expired" in job.history[0]["error"]
    assert not q.complete(dead_worker, {"stale": True})  # the dead claim cannot overwrite it
    assert (tmp_path / "out" / jid / "sr.dcm").is_file() and len(box.list(job_id=jid)) == 2


def test_crash_after_commit_reuses_outputs_and_delivers_once(tmp_path: Path) -> None:
    clock = Clock()
    q = JobQueue(tmp_path / "q.sqlite3", QueueConfig(lease_seconds=60), clock=clock)
    box = Outbox(tmp_path / "q.sqlite3", clock=clock)
    jid = q.submit("1.2.3", study(tmp_path), meta={"destinations": ["PACS"]})
    job = q.claim("worker-A")
    assert job is not None
    first = process_job(job, detector_factory=FakeFactory(), out_root=tmp_path / "out", writer=fake_writer)
    box.enqueue(job.id, "PACS", first.dicom_files[:1])  # died half-way through queuing delivery
    clock.t += 61
    fac = FakeFactory()
    cfg = WorkerConfig(out_root=tmp_path / "out", max_jobs=1, writer=fake_writer)
    run_worker(q, box, detector_factory=fac, config=cfg, stop_event=threading.Event())
    assert q.get(jid).state == "done" and fac._det is None  # not recomputed
    rows = box.list(job_id=jid)
    assert sorted(Path(r.path).name for r in rows) == ["seg.dcm", "sr.dcm"]  # completed, no duplicates
    sent: list[Path] = []

    def send(destination: str, files: list[Path]) -> dict[Path, bool]:
        sent.extend(files)
        return {f: True for f in files}

    assert box.deliver_due(send).delivered == 2 and box.deliver_due(send).delivered == 0
    assert sorted(p.name for p in sent) == ["seg.dcm", "sr.dcm"]


def _wait(cond: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_kill_9_mid_study_recovers(tmp_path: Path) -> None:
    """Real worker processes: SIGKILL one in the middle of a study; another finishes the job."""
    qcfg = QueueConfig(lease_seconds=2.0)
    q = JobQueue(tmp_path / "q.sqlite3", qcfg)
    box = Outbox(tmp_path / "q.sqlite3")
    jid = q.submit("1.2.3", study(tmp_path), meta={"destinations": ["PACS"]})
    marker = tmp_path / "started"
    cfg = WorkerConfig(out_root=tmp_path / "out", poll_seconds=0.05, heartbeat_seconds=0.3, writer=fake_writer)
    slow = start_workers(1, q, box, FakeFactory(delay=120, marker=str(marker)), cfg)
    try:
        assert _wait(marker.exists, 60), "the worker never started the job"
        time.sleep(1.0)  # heartbeats keep the lease alive past its 2 s
        assert q.get(jid).state == "running"
        os.kill(slow.processes[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
        slow.processes[0].join(10)
    finally:
        slow.stop(timeout=5)
    assert q.get(jid).state == "running"  # nobody knows yet
    fast = start_workers(1, q, box, FakeFactory(), cfg)
    try:
        assert _wait(lambda: q.get(jid).state == "done", 60)
    finally:
        fast.stop(timeout=10)
    job = q.get(jid)
    assert job.attempts == 2 and "lease expired" in job.history[0]["error"]
    assert (tmp_path / "out" / jid / "outcome.json").is_file()
    assert len(box.list(job_id=jid)) == 2 and fast.alive() == 0


def _detector_available() -> bool:
    try:
        import lesionlens.pipeline.detect  # noqa: F401
        import lesionlens.reports.bundle  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _detector_available(), reason="the study pipeline is not importable yet")
def test_real_detector_on_a_small_phantom(tmp_path: Path) -> None:
    from lesionlens.service.worker import DetectorFactory
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    cfg = CTPhantomConfig(matrix=(128, 128), n_slices=20, slice_spacings_mm=(2.5,), n_nodules=(1, 1),
                          p_no_nodules=0.0, nodule_diameter_mm=(10.0, 14.0), small_nodule_fraction=0.0)
    folder = write_ct_study(generate_ct(7, cfg), tmp_path / "study")
    q = JobQueue(tmp_path / "q.sqlite3")
    box = Outbox(tmp_path / "q.sqlite3")
    jid = q.submit("study", folder, meta={"destinations": ["PACS"]})
    wcfg = WorkerConfig(out_root=tmp_path / "out", max_jobs=1)
    assert run_worker(q, box, detector_factory=DetectorFactory("default", threads=1), config=wcfg,
                      stop_event=threading.Event()) == 1
    job = q.get(jid)
    assert job.state == "done", job.error
    out = load_outcome(jid, tmp_path / "out")
    assert out is not None and (out.out_dir / "findings.json").is_file()
    assert out.model["name"] == "lesionlens-ct-nodule-n" and out.model["version"]
    assert all(p.is_file() for p in out.dicom_files)
    assert {r.path for r in box.list(job_id=jid)} == {str(p.resolve()) for p in out.dicom_files}


@pytest.mark.slow
@pytest.mark.skipif(not _detector_available(), reason="the study pipeline is not importable yet")
def test_detector_factory_follows_the_registry(tmp_path: Path) -> None:
    from lesionlens.engine.predict import PACKAGED_MODELS
    from lesionlens.service.registry import ModelRegistry, build_manifest
    from lesionlens.service.signing import generate_keypair, sign_manifest
    from lesionlens.service.worker import DetectorFactory

    priv, pub = generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    reg = ModelRegistry(tmp_path / "reg", trusted_keys=[pub])
    pkg = PACKAGED_MODELS / "default"
    v1 = reg.add(pkg, sign_manifest(build_manifest(pkg, version="1.0.0"), priv), version="1.0.0", activate=True)
    fac = DetectorFactory(registry_root=str(reg.root), registry_name=v1.name, trusted_keys=(str(pub),))
    d1 = fac()
    assert fac() is d1 and Path(d1.predictor.package) == v1.path
    assert fac.registry_version == (v1.name, "1.0.0")
    reg.add(pkg, sign_manifest(build_manifest(pkg, version="1.1.0"), priv), version="1.1.0", activate=True)
    d2 = fac()
    assert d2 is not d1 and Path(d2.predictor.package).name == "1.1.0"

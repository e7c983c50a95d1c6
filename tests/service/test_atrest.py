"""Encryption at rest in the service: the instance store, job outputs and delivery.

What is under the data folder is ciphertext; the detector and the PACS see plaintext, which only
ever exists in private RAM working folders that are gone afterwards.
"""

from __future__ import annotations

import json
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lesionlens.dicom.io import parse_bytes, read_dataset
from lesionlens.dicom.write import save_dataset
from lesionlens.net.storage import InstanceStore
from lesionlens.pipeline.types import StudyResult
from lesionlens.privacy.crypto import decrypt_bytes, encrypt_file, is_encrypted, open_decrypted
from lesionlens.privacy.keys import DataKey, KeyRing, WrongKeyError, create_key_file
from lesionlens.service import atrest
from lesionlens.service.atrest import decrypting_sender, ram_workdir, read_result
from lesionlens.service.jobs import JobQueue
from lesionlens.service.outbox import Outbox
from lesionlens.service.worker import OUTCOME, WorkerConfig, load_outcome, process_job, run_worker

PATIENT = "Doe^Jane"
MODEL = {"name": "fake", "version": "1.0.0", "sha256": "cd" * 32}


@pytest.fixture()
def ring() -> KeyRing:
    return KeyRing(DataKey.generate())


def _ct_dataset(study: str, series: str, n: int = 0) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality, ds.InstanceNumber = PATIENT, "PID-4711", "CT", n + 1
    return ds


def _part10(tmp_path: Path, ds: Dataset) -> bytes:
    path = save_dataset(ds, tmp_path / "src" / f"{ds.SOPInstanceUID}.dcm")
    return path.read_bytes()


def _assert_ciphertext(path: Path) -> None:
    raw = path.read_bytes()
    assert is_encrypted(path), path
    assert b"DICM" not in raw and PATIENT.encode() not in raw and b"PID-4711" not in raw, path


def _ram_leftovers(prefix: str) -> list[Path]:
    return sorted(atrest.RAM_DIR.glob(f"{prefix}*")) if atrest.RAM_DIR.is_dir() else []


# ------------------------------------------------------------------------- (a) the instance store

def test_store_writes_ciphertext_that_decrypts_to_the_received_bytes(tmp_path: Path, ring: KeyRing) -> None:
    store = InstanceStore(tmp_path / "incoming", keyring=ring, fsync=False)
    blob = _part10(tmp_path, _ct_dataset("1.2.3", "1.2.3.4"))
    first = store.put(blob, source="test")
    assert store.encrypted and first.path.is_file() and not first.replaced
    _assert_ciphertext(first.path)
    assert decrypt_bytes(first.path.read_bytes(), ring) == blob
    assert read_result(ring, first.path) == blob
    again = store.put(blob, source="test")  # idempotent, as without encryption
    assert again.replaced and again.path == first.path
    assert list(store.iter_instances("1.2.3")) == [first.path]
    assert decrypt_bytes(again.path.read_bytes(), ring) == blob
    with pytest.raises(WrongKeyError):
        decrypt_bytes(first.path.read_bytes(), KeyRing(DataKey.generate()))


def test_store_encrypts_datasets_and_network_bytes(tmp_path: Path, ring: KeyRing) -> None:
    store = InstanceStore(tmp_path / "incoming", keyring=ring, fsync=False)
    ds = _ct_dataset("1.2.3", "1.2.3.5")
    got = store.put(ds, source="c-get:TEST")
    _assert_ciphertext(got.path)
    assert [p.name for p in got.path.parent.iterdir()] == [got.path.name]  # no plaintext temp file
    back = parse_bytes(open_decrypted(got.path, ring), "x").dataset
    assert back.SOPInstanceUID == ds.SOPInstanceUID and str(back.PatientName) == PATIENT
    # raw dataset bytes + file meta, as a C-STORE handler passes them
    src = tmp_path / "plain.dcm"
    save_dataset(_ct_dataset("1.2.3", "1.2.3.5", 1), src)
    hdr = read_dataset(src)
    stored = store.put(src.read_bytes(), source="c-store:X")
    _assert_ciphertext(stored.path)
    assert stored.sop_instance_uid == hdr.SOPInstanceUID and stored.transfer_syntax_uid


def test_plaintext_store_is_unchanged(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "incoming", fsync=False)
    blob = _part10(tmp_path, _ct_dataset("1.2.3", "1.2.3.4"))
    got = store.put(blob)
    assert not store.encrypted and got.path.read_bytes() == blob and read_result(None, got.path) == blob


# ------------------------------------------------------------------------- working folders

def test_ram_workdir_is_private_and_removed(tmp_path: Path) -> None:
    with ram_workdir("lesionlens-test-", tmp_path / ".work") as work:
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        if atrest.RAM_DIR.is_dir():
            assert work.parent == atrest.RAM_DIR
        (work / "a").write_bytes(b"secret")
    assert not work.exists()


def test_ram_workdir_falls_back_when_there_is_no_dev_shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atrest, "RAM_DIR", tmp_path / "no-shm")
    with pytest.raises(RuntimeError), ram_workdir("x-", tmp_path / ".work") as work:
        assert work.parent == tmp_path / ".work" and stat.S_IMODE(work.stat().st_mode) == 0o700
        raise RuntimeError("boom")
    assert not work.exists()


# ------------------------------------------------------------------------- (b) the worker

def _study_in_store(tmp_path: Path, ring: KeyRing, n: int = 3) -> tuple[InstanceStore, str, list[Path]]:
    store = InstanceStore(tmp_path / "incoming", keyring=ring, fsync=False)
    study, series = generate_uid(), generate_uid()
    paths = [store.put(_part10(tmp_path, _ct_dataset(study, series, i))).path for i in range(n)]
    return store, study, paths


def _sr(path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientName = "SR", PATIENT
    save_dataset(ds, path)


def fake_writer(results: list[Any], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "findings.json").write_text(json.dumps({"patient": PATIENT}))
    _sr(out_dir / "sr.dcm")
    _sr(out_dir / "seg.dcm")
    (out_dir / "images").mkdir()
    (out_dir / "images" / "L1_slice.png").write_bytes(b"\x89PNG" + PATIENT.encode())
    return {}


@dataclass
class PeekingDetector:
    """Records where its inputs were and that they were plaintext DICOM while it ran."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def detect(self, inputs: Any) -> list[StudyResult]:
        files = inputs if isinstance(inputs, list) else sorted(p for p in Path(inputs).rglob("*") if p.is_file())
        self.seen.append({
            "files": list(files),
            "folder_mode": stat.S_IMODE((Path(files[0]).parent if isinstance(inputs, list)
                                         else Path(inputs)).stat().st_mode),
            "patients": [str(read_dataset(p, stop_before_pixels=True).PatientName) for p in files],
        })
        return [StudyResult(study_instance_uid="1.2.3", model=dict(MODEL), status="ok")]


def _assert_outputs_encrypted(out_dir: Path, ring: KeyRing) -> None:
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    assert files and (out_dir / OUTCOME) in files
    for p in files:
        if p.name == OUTCOME:
            assert not is_encrypted(p) and PATIENT not in p.read_text()
        else:
            _assert_ciphertext(p)


def test_process_job_reads_plaintext_in_ram_and_commits_ciphertext(tmp_path: Path, ring: KeyRing) -> None:
    store, study, paths = _study_in_store(tmp_path, ring)
    q = JobQueue(tmp_path / "q.sqlite3")
    jid = q.submit(study, store.study_dir(study))  # the upload route's way: the study folder
    job = q.get(jid)
    det = PeekingDetector()
    out = process_job(job, detector_factory=lambda: det, out_root=tmp_path / "jobs", writer=fake_writer,
                      keyring=ring)
    (seen,) = det.seen
    assert seen["patients"] == [PATIENT] * 3 and seen["folder_mode"] == 0o700
    assert all(not p.exists() for p in seen["files"])  # the working copies are gone
    if atrest.RAM_DIR.is_dir():
        assert all(atrest.RAM_DIR in p.parents for p in seen["files"])
    assert not _ram_leftovers(f"lesionlens-{jid}-")
    assert not (tmp_path / "jobs" / ".work").exists() or not any((tmp_path / "jobs" / ".work").iterdir())
    _assert_outputs_encrypted(out.out_dir, ring)
    assert sorted(out.sop_uids) == ["seg.dcm", "sr.dcm"]
    for rel, uid in out.sop_uids.items():
        assert parse_bytes(open_decrypted(out.out_dir / rel, ring), rel).dataset.SOPInstanceUID == uid
    assert json.loads(open_decrypted(out.out_dir / "findings.json", ring)) == {"patient": PATIENT}
    assert not any((tmp_path / "jobs" / ".staging").iterdir())
    assert load_outcome(jid, tmp_path / "jobs").sop_uids == out.sop_uids  # persisted in outcome.json


def test_process_job_on_a_list_of_encrypted_files(tmp_path: Path, ring: KeyRing) -> None:
    _, study, paths = _study_in_store(tmp_path, ring, n=2)
    q = JobQueue(tmp_path / "q.sqlite3")
    jid = q.submit(study, paths[0].parent)
    job = q.get(jid)
    job.files = [str(p) for p in paths]  # a DICOM-received study: the instance files
    det = PeekingDetector()
    out = process_job(job, detector_factory=lambda: det, out_root=tmp_path / "jobs", writer=fake_writer,
                      keyring=ring)
    assert det.seen[0]["patients"] == [PATIENT] * 2 and len(det.seen[0]["files"]) == 2
    _assert_outputs_encrypted(out.out_dir, ring)


def test_worker_queues_encrypted_results_with_their_uids(tmp_path: Path, ring: KeyRing) -> None:
    key_file = tmp_path / "data.key"
    key = create_key_file(key_file)
    ring = KeyRing(key)
    _, study, paths = _study_in_store(tmp_path, ring)
    q = JobQueue(tmp_path / "q.sqlite3")
    box = Outbox(tmp_path / "q.sqlite3")
    jid = q.submit(study, paths[0].parent, meta={"destinations": ["PACS"]})
    cfg = WorkerConfig(out_root=tmp_path / "jobs", max_jobs=1, writer=fake_writer, data_key=f"file:{key_file}")
    assert run_worker(q, box, detector_factory=PeekingDetector, config=cfg, stop_event=threading.Event()) == 1
    job = q.get(jid)
    assert job.state == "done", job.error
    out = load_outcome(jid, tmp_path / "jobs")
    rows = box.list(job_id=jid)
    assert {r.sop_uid: r.path for r in rows} == {uid: str((out.out_dir / rel).resolve())
                                                  for rel, uid in out.sop_uids.items()}
    for r in rows:
        _assert_ciphertext(Path(r.path))


def test_wrong_key_fails_the_job_without_leaving_plaintext(tmp_path: Path, ring: KeyRing) -> None:
    _, study, paths = _study_in_store(tmp_path, ring, n=1)
    q = JobQueue(tmp_path / "q.sqlite3")
    job = q.get(q.submit(study, paths[0].parent))
    with pytest.raises(WrongKeyError):
        process_job(job, detector_factory=PeekingDetector, out_root=tmp_path / "jobs", writer=fake_writer,
                    keyring=KeyRing(DataKey.generate()))
    assert not _ram_leftovers(f"lesionlens-{job.id}-") and load_outcome(job.id, tmp_path / "jobs") is None


def _detector_available() -> bool:
    try:
        import lesionlens.pipeline.detect  # noqa: F401
        import lesionlens.reports.bundle  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _detector_available(), reason="the study pipeline is not importable")
def test_real_detector_on_an_encrypted_store(tmp_path: Path, ring: KeyRing) -> None:
    from lesionlens.service.worker import DetectorFactory
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    cfg = CTPhantomConfig(matrix=(512, 512), n_slices=32, slice_spacings_mm=(2.5,), n_nodules=(2, 2),
                          p_no_nodules=0.0, nodule_diameter_mm=(10.0, 16.0), small_nodule_fraction=0.0)
    folder = write_ct_study(generate_ct(7, cfg), tmp_path / "study")
    store = InstanceStore(tmp_path / "data" / "incoming", keyring=ring, fsync=False)
    stored = [store.put(p.read_bytes(), source="test") for p in sorted(folder.glob("CT_*.dcm"))]
    study = stored[0].study_uid
    for s in stored:
        assert is_encrypted(s.path) and b"DICM" not in s.path.read_bytes()
    q = JobQueue(tmp_path / "q.sqlite3")
    box = Outbox(tmp_path / "q.sqlite3")
    jid = q.submit(study, store.study_dir(study), meta={"destinations": ["PACS"]})
    jobs = tmp_path / "data" / "jobs"

    class RingConfig(WorkerConfig):  # the ring in memory (a spec would do the same in a real worker)
        def keyring(self) -> Any:
            return ring

    wcfg = RingConfig(out_root=jobs, max_jobs=1, data_key="test")
    assert run_worker(q, box, detector_factory=DetectorFactory("default", threads=1), config=wcfg,
                      stop_event=threading.Event()) == 1
    job = q.get(jid)
    assert job.state == "done", job.error
    out = load_outcome(jid, jobs)
    assert out is not None and out.studies[0]["lesions"] >= 1
    _assert_outputs_encrypted(out.out_dir, ring)
    findings = json.loads(open_decrypted(out.out_dir / "findings.json", ring))
    assert isinstance(findings, dict) and findings
    sr_rel = next(rel for rel in out.sop_uids if rel.startswith("sr"))
    sr = parse_bytes(open_decrypted(out.out_dir / sr_rel, ring), sr_rel).dataset
    assert sr.Modality == "SR" and sr.SOPInstanceUID == out.sop_uids[sr_rel]
    assert {r.sop_uid: r.path for r in box.list(job_id=jid)} == {
        uid: str((out.out_dir / rel).resolve()) for rel, uid in out.sop_uids.items()}
    assert not _ram_leftovers(f"lesionlens-{jid}-")
    assert not (jobs / ".work").exists() or not any((jobs / ".work").iterdir())
    plain = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.name != OUTCOME
             and not is_encrypted(p)]
    assert plain == []


# ------------------------------------------------------------------------- (c) delivery

def test_decrypting_sender_sends_plaintext_and_maps_back(tmp_path: Path, ring: KeyRing) -> None:
    store, _, paths = _study_in_store(tmp_path, ring, n=3)
    stranger = tmp_path / "other.dcm"
    stranger.write_bytes(open_decrypted(paths[0], ring))
    encrypt_file(stranger, stranger, KeyRing(DataKey.generate()))  # cannot be decrypted with ours
    sent: list[tuple[str, list[Path], list[str]]] = []

    def send(dest: str, files: list[Path]) -> dict[Path, bool]:
        uids = [str(read_dataset(f, stop_before_pixels=True).SOPInstanceUID) for f in files]  # plaintext DICOM
        sent.append((dest, list(files), uids))
        return {f: True for f in files}

    wrapped = decrypting_sender(send, ring, fallback_root=tmp_path / "tmp")
    result = wrapped("PACS", [*paths, stranger])
    assert result == {**{p: True for p in paths}, stranger: False}
    ((dest, tmp_files, uids),) = sent
    assert dest == "PACS" and uids == [p.stem for p in paths]
    assert all(not f.exists() for f in tmp_files) and not _ram_leftovers("lesionlens-send-")
    assert all(is_encrypted(p) for p in paths)  # the stored copies are untouched


def test_outbox_delivers_encrypted_results_through_the_wrapper(tmp_path: Path, ring: KeyRing) -> None:
    _, _, paths = _study_in_store(tmp_path, ring, n=2)
    box = Outbox(tmp_path / "outbox.sqlite3")
    box.enqueue("job-1", "PACS", {p.stem: p for p in paths})  # what the worker does: no file is read
    got: list[bytes] = []

    def send(dest: str, files: list[Path]) -> dict[Path, bool]:
        got.extend(f.read_bytes() for f in files)
        return {f: True for f in files}

    report = box.deliver_due(decrypting_sender(send, ring, fallback_root=tmp_path / "tmp"))
    assert report.delivered == 2 and report.failed == 0
    assert sorted(got) == sorted(open_decrypted(p, ring) for p in paths)
    assert all(b[128:132] == b"DICM" for b in got)



def test_start_sweep_removes_folders_of_killed_workers_only(tmp_path: Path) -> None:
    """A worker killed with SIGKILL inside ``ram_workdir`` leaves its plaintext folder; the sweep
    a restarted service runs removes it, and leaves a live process's folder alone."""
    import signal
    import subprocess
    import sys
    import time

    from lesionlens.service.atrest import sweep_ram_workdirs

    fallback = tmp_path / ".work"
    code = ("import sys, time\n"
            "from lesionlens.service.atrest import ram_workdir\n"
            f"with ram_workdir('lesionlens-sweeptest-', {str(fallback)!r}) as w:\n"
            "    (w / 'plain.dcm').write_bytes(b'secret')\n"
            "    print(w, flush=True)\n"
            "    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        left = Path(child.stdout.readline().strip())
        assert (left / "plain.dcm").read_bytes() == b"secret"
        assert f"-p{child.pid}-" in left.name
        with ram_workdir("lesionlens-sweeptest-", fallback) as mine:
            assert sweep_ram_workdirs(fallback) == []  # the child still runs: nothing removed
            assert left.exists()
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            time.sleep(0.05)
            assert left.exists()  # SIGKILL skips the context manager's cleanup
            removed = sweep_ram_workdirs(fallback)
            assert removed == [left]
            assert not left.exists()
            assert mine.exists()  # this (live) process's folder stays
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

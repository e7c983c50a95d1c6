"""The whole service against a real PACS: dcmtk's storescu as the modality, a real Orthanc as the
PACS, a real ``lesionlens serve`` process (HTTP + DICOM listener + worker + outbox).

* push: storescu → our listener → job → SR/SEG/GSPS stored into Orthanc, referencing the study;
* PACS down: results wait in the outbox and reach Orthanc exactly once after it restarts;
* crash: ``kill -9`` of the whole service mid-study → every acknowledged instance is on disk,
  and after a restart (and the modality's re-send) the study completes;
* pull: ``lesionlens pacs process`` with C-FIND + C-GET and with QIDO/WADO + STOW.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.orthanc import OrthancServer, find_orthanc
from integration.service import ServiceProcess, wait_for
from lesionlens.dicom.io import read_dataset
from tests.conftest import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT_MODALITIES = ("SR", "SEG", "PR")


@dataclass(frozen=True)
class Study:
    folder: Path
    files: list[Path]
    study_uid: str
    sop_uids: frozenset[str]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """32 CT slices of 512×512 with two 10–16 mm nodules (the default model finds them)."""
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    cfg = CTPhantomConfig(matrix=(512, 512), n_slices=32, slice_spacings_mm=(2.5,), n_nodules=(2, 2),
                          p_no_nodules=0.0, nodule_diameter_mm=(10.0, 16.0), small_nodule_fraction=0.0)
    ph = generate_ct(7, cfg)
    folder = write_ct_study(ph, tmp_path_factory.mktemp("push-study"))
    files = sorted(folder.glob("CT_*.dcm"))
    return Study(folder, files, ph.uids["study"], frozenset(read_dataset(f, stop_before_pixels=True).SOPInstanceUID
                                                            for f in files))


@pytest.fixture
def pacs(tmp_path: Path):
    if find_orthanc() is None:
        pytest.skip("Orthanc is not installed (make sysdeps installs it when run as root)")
    server = OrthancServer(tmp_path / "orthanc", count_stores=True)
    server.start()
    try:
        yield server
    finally:
        server.stop(graceful=False)


@pytest.fixture
def services():
    started: list[ServiceProcess] = []
    yield started
    for svc in started:
        svc.kill9()


def storescu(peer_port: int, files: list[Path], *, aet: str = "SCANNER", aec: str = "LLTEST",
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("storescu"), "-v", "-aet", aet, "-aec", aec, "127.0.0.1", str(peer_port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout)


def results_in(pacs: OrthancServer, study_uid: str) -> dict[str, list[dict]]:
    """Result objects Orthanc holds for the study, by modality."""
    out: dict[str, list[dict]] = {}
    for inst in pacs.find_instances(study_uid):
        tags = pacs.instance_tags(inst["ID"])
        if tags.get("Modality") in RESULT_MODALITIES:
            out.setdefault(tags["Modality"], []).append(tags)
    return out


def wait_results(pacs: OrthancServer, study_uid: str, kinds: tuple[str, ...] = ("SR", "SEG", "PR"),
                 timeout: float = 180) -> None:
    """Wait until Orthanc holds at least one result object of every kind (they arrive one by one)."""
    wait_for(lambda: all(results_in(pacs, study_uid).get(k) for k in kinds), timeout, what=f"{'/'.join(kinds)} in Orthanc")


def evidence_uids(sr_tags: dict) -> set[str]:
    return {inst["ReferencedSOPInstanceUID"]
            for study in sr_tags.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for inst in series.get("ReferencedSOPSequence", [])}


def check_results(pacs: OrthancServer, study: Study, svc: ServiceProcess) -> dict[str, list[dict]]:
    res = results_in(pacs, study.study_uid)
    assert len(res.get("SR", [])) == 1 and len(res.get("SEG", [])) == 1, res.keys()
    sr = res["SR"][0]
    assert sr["StudyInstanceUID"] == study.study_uid
    assert evidence_uids(sr) == set(study.sop_uids)  # the SR references every image of the study
    findings = svc.get(f"/v1/studies/{study.study_uid}/findings").json()
    model = findings["model"]
    assert model["name"] and model["version"]
    sr_file = svc.get(f"/v1/studies/{study.study_uid}/sr").content
    assert model["version"].encode() in sr_file  # the SR says which model made it
    return res


def test_push_storescu_to_results_in_orthanc(pacs: OrthancServer, study: Study, services, tmp_path: Path) -> None:
    svc = ServiceProcess(tmp_path / "svc", send_to=[pacs.peer], extra=["--allow-ae", "SCANNER"])
    services.append(svc.start())
    r = storescu(svc.dicom_port, study.files)
    assert r.returncode == 0, r.stderr
    t_last = time.monotonic()
    wait_results(pacs, study.study_uid)
    elapsed = time.monotonic() - t_last
    res = check_results(pacs, study, svc)
    assert "PR" in res  # the GSPS too
    print(f"last instance → results in Orthanc: {elapsed:.1f} s for {len(study.files)} slices")
    # a calling AE outside the allow-list is refused at association
    denied = storescu(svc.dicom_port, study.files[:1], aet="INTRUDER")
    assert denied.returncode != 0 and "Rejected" in denied.stdout + denied.stderr


def test_pacs_down_results_delivered_exactly_once_after_restart(pacs: OrthancServer, study: Study, services,
                                                                tmp_path: Path) -> None:
    pacs.stop()
    svc = ServiceProcess(tmp_path / "svc", send_to=[pacs.peer],
                         env={"LESIONLENS_DELIVERY_BACKOFF_SECONDS": "1", "LESIONLENS_DELIVERY_MAX_BACKOFF_SECONDS": "2"})
    services.append(svc.start())
    assert storescu(svc.dicom_port, study.files).returncode == 0

    def failing_job() -> dict | None:
        jobs = svc.get("/v1/jobs", params={"study_uid": study.study_uid}).json()["jobs"]
        if not jobs or jobs[0]["state"] != "done":
            return None
        job = svc.get(f"/v1/jobs/{jobs[0]['id']}").json()
        if job["deliveries"] and all(d["attempts"] >= 2 and d["state"] != "delivered" for d in job["deliveries"]):
            return job
        return None

    job = wait_for(failing_job, 180, what="a finished job whose deliveries failed twice")
    assert {d["destination"] for d in job["deliveries"]} == {pacs.peer} and len(job["deliveries"]) == 3
    pacs.start()
    wait_for(lambda: all(d["state"] == "delivered" for d in svc.get(f"/v1/jobs/{job['id']}").json()["deliveries"]),
             60, what="delivery after the PACS came back")
    check_results(pacs, study, svc)
    time.sleep(4)  # longer than the back-off: nothing is sent again
    result_uids = {d["sop_uid"] for d in job["deliveries"]}
    stores = [u for u in pacs.stores() if u in result_uids]
    assert sorted(stores) == sorted(result_uids)  # each result object stored exactly once


def _acknowledged(storescu_log: str, files: list[Path]) -> list[Path]:
    """Files storescu got a Success response for (``-v`` log: 'Sending file' ... 'Received Store Response')."""
    acked, current = [], None
    for line in storescu_log.splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = Path(m.group(1).strip())
        elif "Received Store Response" in line and "Success" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def test_kill_9_mid_study_then_restart_completes(pacs: OrthancServer, study: Study, services, tmp_path: Path) -> None:
    svc = ServiceProcess(tmp_path / "svc", send_to=[pacs.peer], stable_seconds=2)
    services.append(svc.start())
    incoming = svc.data_dir / "incoming"
    proc = subprocess.Popen([require_tool("storescu"), "-v", "-aet", "SCANNER", "-aec", "LLTEST", "127.0.0.1",
                             str(svc.dicom_port), *map(str, study.files)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(list(incoming.rglob("*.dcm"))) >= 10, 60, 0.02, what="10 instances stored")
    svc.kill9()  # the service and its worker, mid-transfer
    log, _ = proc.communicate(timeout=60)
    acked = _acknowledged(log, study.files)
    assert 5 <= len(acked) < len(study.files), log[-2000:]  # some acknowledged, not all
    stored = {read_dataset(p, stop_before_pixels=True).SOPInstanceUID for p in incoming.rglob("*.dcm")}
    for f in acked:  # every acknowledged instance survived the kill, complete
        uid = read_dataset(f, stop_before_pixels=True).SOPInstanceUID
        assert uid in stored
    for p in incoming.rglob("*.dcm"):
        assert read_dataset(p).pixel_array.shape == (512, 512)
    svc.start()  # same data folder and ports
    assert storescu(svc.dicom_port, study.files).returncode == 0  # the modality re-sends the study
    wait_for(lambda: any(evidence_uids(sr) == set(study.sop_uids)
                         for sr in results_in(pacs, study.study_uid).get("SR", [])), 180,
             what="an SR over the whole study in Orthanc")


def _pacs_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lesionlens.cli.main", "pacs", "process", *args],
                          capture_output=True, text=True, timeout=300)


def test_pull_with_c_get_and_with_dicomweb(pacs: OrthancServer, study: Study, tmp_path: Path) -> None:
    from lesionlens.net.scu import send_files

    assert send_files(pacs.peer, study.files).all_ok
    r = _pacs_process(study.study_uid, "--from", pacs.peer, "--out", str(tmp_path / "pull"), "--threads", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(study.files)} instances" in r.stdout and "delivered" in r.stdout
    res = results_in(pacs, study.study_uid)
    assert len(res["SR"]) == 1 and len(res["SEG"]) == 1
    assert evidence_uids(res["SR"][0]) == set(study.sop_uids)
    before = len(pacs.stores())
    # the same study over DICOMweb (QIDO + WADO in, STOW out): same deterministic result UIDs
    r = _pacs_process(study.study_uid, "--from-dicomweb", pacs.dicomweb_url, "--out", str(tmp_path / "web"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p.name for p in (tmp_path / "web").glob("*.dcm")} == {"sr.dcm", "seg.dcm", "gsps.dcm"}
    assert len(pacs.stores()) == before + 3 and len(results_in(pacs, study.study_uid)["SR"]) == 1
    # C-MOVE to a listener the command starts for the call (the PACS knows our AE → host:port)
    from integration.orthanc import free_port

    port = free_port()
    pacs.add_modality("LLPULL", "LLPULL", "127.0.0.1", port)
    r = _pacs_process(study.study_uid, "--from", pacs.peer, "--method", "move", "--ae-title", "LLPULL",
                      "--move-port", str(port), "--no-store", "--out", str(tmp_path / "move"))
    assert r.returncode == 0, r.stdout + r.stderr
    # the study in the PACS now holds our 3 result objects too: C-MOVE brings all 35
    assert f"{len(study.files) + 3} instances" in r.stdout and len(pacs.stores()) == before + 3
    assert len(list((tmp_path / "move" / "work" / "received").rglob("*.dcm"))) == len(study.files) + 3
    # a study the PACS does not have: one clear line, exit 2
    r = _pacs_process("1.2.3.4.5.6.7", "--from", pacs.peer, "--out", str(tmp_path / "none"))
    assert r.returncode == 2 and "1.2.3.4.5.6.7 is not in" in r.stderr and "Traceback" not in r.stderr

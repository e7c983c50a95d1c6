"""A real ``lesionlens serve`` with encryption at rest against a real Orthanc: storescu pushes a
study, the results reach Orthanc as plaintext DICOM, and everything the service keeps under
``data/incoming`` and ``data/jobs`` is ciphertext (``outcome.json`` aside)."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import httpx
import pytest

from integration.orthanc import OrthancServer
from integration.service import ServiceProcess
from integration.test_service_pacs import (  # noqa: F401
    Study,
    pacs,
    results_in,
    services,
    storescu,
    study,
    wait_results,
)
from lesionlens.dicom.io import parse_bytes
from lesionlens.privacy.crypto import is_encrypted, open_decrypted
from lesionlens.privacy.keys import DataKey, KeyRing, decode_key_text

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_encrypted_service_delivers_plaintext_and_keeps_ciphertext(
        pacs: OrthancServer, study: Study, services, tmp_path: Path) -> None:  # noqa: F811
    key_text = base64.b64encode(os.urandom(32)).decode()
    ring = KeyRing(DataKey(decode_key_text(key_text, source="test")))  # what the service derives
    svc = ServiceProcess(tmp_path / "svc", send_to=[pacs.peer], extra=["--allow-ae", "SCANNER", "--data-key", "env"],
                         env={"LESIONLENS_DATA_KEY": key_text})
    services.append(svc.start())
    r = storescu(svc.dicom_port, study.files)
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    wait_results(pacs, study.study_uid)
    print(f"last instance → results in Orthanc (encrypted service): {time.monotonic() - t0:.1f} s")
    res = results_in(pacs, study.study_uid)
    assert len(res.get("SR", [])) == 1
    (sr_inst,) = pacs.find_instances(study.study_uid, "SR")
    blob = httpx.get(f"{pacs.url}/instances/{sr_inst['ID']}/file", timeout=30).content
    sr = parse_bytes(blob, "orthanc SR").dataset  # plaintext, valid DICOM in the PACS
    assert blob[128:132] == b"DICM" and sr.Modality == "SR" and sr.StudyInstanceUID == study.study_uid

    data = svc.data_dir
    incoming = [p for p in (data / "incoming").rglob("*") if p.is_file()]
    assert len(incoming) == len(study.files)
    jobs = [p for p in (data / "jobs").rglob("*") if p.is_file() and p.name != "outcome.json"]
    assert any(p.name == "sr.dcm" for p in jobs) and any(p.name == "findings.json" for p in jobs)
    for p in incoming + jobs:
        raw = p.read_bytes()
        assert is_encrypted(p) and b"DICM" not in raw, p
    stored_sr = next(p for p in jobs if p.name == "sr.dcm")
    assert parse_bytes(open_decrypted(stored_sr, ring), "sr").dataset.SOPInstanceUID == sr.SOPInstanceUID
    job_ids = [d.name for d in (data / "jobs").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert job_ids
    for jid in job_ids:  # the plaintext working folders are gone
        assert not list(Path("/dev/shm").glob(f"lesionlens-{jid}-*"))

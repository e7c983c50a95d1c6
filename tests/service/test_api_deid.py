"""De-identified research exports from the service: ``GET /v1/studies/{uid}/findings?deid=true``
and ``/sr?deid=true`` on a real pipeline result (default model on a phantom study). The copies
carry none of the study's identifiers, their UIDs are the keyed remap (so the findings and the SR
still refer to each other), the SR stays valid DICOM, and each copy is audited as an export."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from lesionlens.privacy.audit_export import iter_records  # noqa: E402
from lesionlens.privacy.uidmap import make_key_file, resolve_key  # noqa: E402
from lesionlens.service.app import create_app  # noqa: E402
from lesionlens.service.auth import TokenStore, create_token  # noqa: E402
from lesionlens.service.runtime import Runtime  # noqa: E402
from lesionlens.service.settings import Settings  # noqa: E402
from lesionlens.service.worker import process_job  # noqa: E402
from tests.reports.test_sr import dciodvfy_problems  # noqa: E402
from tests.service.test_worker import study  # noqa: E402

NAME, PID, ACCESSION, BIRTH = "SENTINEL^PATIENTNAME", "SENTINELPID4711", "SENTACC0815", "19230405"


@pytest.fixture(scope="module")
def real_outputs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """findings.json + SR (+ SEG, GSPS) of the default model on a small phantom with sentinel PHI."""
    from lesionlens.pipeline.detect import DetectConfig, Detector
    from lesionlens.reports.bundle import write_outputs
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    root = tmp_path_factory.mktemp("deid-export")
    cfg = CTPhantomConfig(matrix=(256, 256), pixel_spacing_mm=(1.2, 1.3), slice_spacings_mm=(2.5,), n_slices=40,
                          n_nodules=(2, 2), p_no_nodules=0.0, nodule_diameter_mm=(12.0, 18.0),
                          small_nodule_fraction=0.0)
    src = write_ct_study(generate_ct(11, cfg), root / "study")
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.PatientBirthDate = NAME, PID, ACCESSION, BIRTH
        ds.save_as(f)
    results = Detector("default", config=DetectConfig(workers=1)).detect(src)
    write_outputs(results, root / "out")
    doc = json.loads((root / "out" / "findings.json").read_text())
    assert doc["studies"][0]["series"][0]["findings"], "the phantom's nodules should give findings"
    return SimpleNamespace(out=root / "out", doc=doc, study_uid=doc["studies"][0]["study_instance_uid"])


def _service(tmp: Path, real: SimpleNamespace, deid: bool) -> SimpleNamespace:
    tokens = tmp / "tokens.json"
    tok = create_token(tokens, "viewer", "researcher")
    key = make_key_file(tmp / "deid.key") if deid else None
    settings = Settings(data_dir=tmp / "data", tokens=tokens, workers=0, dicom_port=0, deid_key_file=key,
                        deid_options=["retain-long-modified-dates"] if deid else [])
    rt = Runtime(settings, tokens=TokenStore.load(tokens), load_model=False)

    def copy_real(results: list, out_dir: Path) -> dict:
        shutil.copytree(real.out, out_dir, dirs_exist_ok=True)
        return {}

    class _Det:
        def detect(self, inputs: object) -> list:
            return []

    rt.queue.submit(real.study_uid, study(tmp), meta={})
    job = rt.queue.claim("w1")
    outcome = process_job(job, detector_factory=_Det, out_root=rt.out_root, writer=copy_real)
    assert rt.queue.complete(job, outcome.to_dict())
    return SimpleNamespace(rt=rt, c=TestClient(create_app(settings, rt)), h={"Authorization": f"Bearer {tok}"},
                           key=resolve_key(key) if key else None)


def _strings(obj: object) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_deidentified_findings_and_sr_match_each_other_and_hold_no_identifiers(
        tmp_path: Path, real_outputs: SimpleNamespace) -> None:
    svc = _service(tmp_path, real_outputs, deid=True)
    uid = real_outputs.study_uid
    log = svc.rt.audit.log.path
    before = len(list(iter_records(log))) if log.exists() else 0
    r = svc.c.get(f"/v1/studies/{uid}/findings", params={"deid": "true"}, headers=svc.h)
    assert r.status_code == 200
    doc = r.json()
    s = svc.c.get(f"/v1/studies/{uid}/sr", params={"deid": "true"}, headers=svc.h)
    assert s.status_code == 200 and s.headers["content-type"] == "application/dicom"

    # no identifier anywhere (the originals are in the plain copies: the check can fail)
    plain = svc.c.get(f"/v1/studies/{uid}/findings", headers=svc.h).content
    plain_sr = svc.c.get(f"/v1/studies/{uid}/sr", headers=svc.h).content
    for sentinel in (NAME, "SENTINEL", PID, ACCESSION, BIRTH, uid):
        assert sentinel.encode() in plain or sentinel.encode() in plain_sr or sentinel in (ACCESSION, BIRTH)
        assert sentinel.encode() not in r.content, sentinel
        assert sentinel.encode() not in s.content, sentinel
    orig_uids = {v for v in _strings(real_outputs.doc) if v.startswith("2.25.") or v.startswith("1.2.826")}
    assert orig_uids and not orig_uids & set(_strings(doc))

    # the findings and the SR of the same key refer to the same (remapped) study, patient, images
    sr = pydicom.dcmread(io.BytesIO(s.content))
    (st,) = doc["studies"]
    assert st["study_instance_uid"] == svc.key.map_uid(uid) == sr.StudyInstanceUID
    assert st["patient"]["PatientID"] == svc.key.pseudonym(PID) == sr.PatientID
    assert sr.PatientIdentityRemoved == "YES" and st["patient"]["PatientIdentityRemoved"] == "YES"
    evidence = {ref.ReferencedSOPInstanceUID for item in sr.CurrentRequestedProcedureEvidenceSequence
                for series in item.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    finding_sops = {f["sop_instance_uid"] for se in st["series"] for f in se["findings"]}
    assert finding_sops and finding_sops <= evidence
    orig_date = real_outputs.doc["studies"][0]["study"].get("StudyDate")
    if orig_date:  # modified dates: shifted by the patient's one shift, as in the SR
        assert st["study"]["StudyDate"] == sr.StudyDate != orig_date
    # measurements are not identifying and stay
    f0, p0 = st["series"][0]["findings"][0], real_outputs.doc["studies"][0]["series"][0]["findings"][0]
    assert f0["measurements"] == p0["measurements"] and f0["bbox_px"] == p0["bbox_px"]
    assert doc["deidentification"]["options"] == ["retain-long-modified-dates"]

    # the de-identified SR is still valid DICOM: no more dciodvfy errors than the original
    (tmp_path / "sr-plain.dcm").write_bytes(plain_sr)
    (tmp_path / "sr-deid.dcm").write_bytes(s.content)
    assert len(dciodvfy_problems(tmp_path / "sr-deid.dcm")[0]) <= len(dciodvfy_problems(tmp_path / "sr-plain.dcm")[0])

    # each de-identified copy is audited as an export (110106), the plain reads as accesses
    events = [(e["event"]["id"]["code"], e.get("event", {}).get("outcome_description") or "")
              for e in list(iter_records(svc.rt.audit.log.path))[before:]]
    exports = [d for code, d in events if code == "110106"]
    assert len(exports) == 2 and all("de-identified" in d for d in exports)

    # same key → the same copy; reports are not offered de-identified
    again = svc.c.get(f"/v1/studies/{uid}/findings", params={"deid": "true"}, headers=svc.h).json()
    assert again == doc
    rep = svc.c.get(f"/v1/studies/{uid}/report.html", params={"deid": "true"}, headers=svc.h)
    assert rep.status_code == 409 and "not offered de-identified" in rep.json()["detail"]


def test_without_a_key_deid_is_refused_and_plain_reads_work(tmp_path: Path, real_outputs: SimpleNamespace) -> None:
    svc = _service(tmp_path, real_outputs, deid=False)
    uid = real_outputs.study_uid
    r = svc.c.get(f"/v1/studies/{uid}/sr", params={"deid": "true"}, headers=svc.h)
    assert r.status_code == 409 and "deid_key_file" in r.json()["detail"]
    assert svc.c.get(f"/v1/studies/{uid}/sr", headers=svc.h).status_code == 200


def test_a_bad_deid_setting_is_named_at_start(tmp_path: Path) -> None:
    from lesionlens.errors import ConfigError

    with pytest.raises(ConfigError, match="deid_key_file"):
        Runtime(Settings(data_dir=tmp_path / "d", workers=0, dicom_port=0, insecure_no_auth=True,
                         deid_options=["clean-descriptors"]), load_model=False)
    with pytest.raises(ConfigError) as err:
        Runtime(Settings(data_dir=tmp_path / "d", workers=0, dicom_port=0, insecure_no_auth=True,
                         deid_key_file=tmp_path / "missing.key"), load_model=False)
    assert "missing.key" in str(err.value)

"""The service's audit trail: each scripted operation leaves exactly one record (login failure,
first login, access to results, upload, C-STORE ingest, export, model change, start/stop), each
written before the operation is acknowledged, and the chain verifies."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from lesionlens.privacy.audit_export import iter_records, verify  # noqa: E402
from lesionlens.service.app import create_app  # noqa: E402
from lesionlens.service.auth import TokenStore, create_token  # noqa: E402
from lesionlens.service.runtime import Runtime  # noqa: E402
from lesionlens.service.settings import Settings  # noqa: E402
from lesionlens.service.worker import process_job  # noqa: E402
from tests.service.test_worker import FakeDetector, fake_writer, study  # noqa: E402


def _events(rt: Runtime) -> list[dict]:
    return list(iter_records(rt.audit.log.path)) if rt.audit.log.path.exists() else []


def _new(rt: Runtime, before: int) -> list[tuple[str, str, int, str]]:
    """(event code, action, outcome, first user) of the records after ``before``."""
    return [(r["event"]["id"]["code"], r["event"]["action"], r["event"]["outcome"],
             r["active_participants"][0]["user_id"]) for r in _events(rt)[before:]]


@pytest.fixture
def svc(tmp_path: Path) -> SimpleNamespace:
    tokens = tmp_path / "tokens.json"
    tok = {r: create_token(tokens, r, f"{r}-user") for r in ("viewer", "radiologist", "model-admin")}
    key = tmp_path / "audit.key"
    key.write_bytes(b"k" * 32)
    settings = Settings(data_dir=tmp_path / "data", tokens=tokens, workers=0, dicom_port=0,
                        audit_key_file=key)
    rt = Runtime(settings, tokens=TokenStore.load(tokens), load_model=False)
    return SimpleNamespace(rt=rt, client=TestClient(create_app(settings, rt)), tok=tok, key=key.read_bytes(),
                           tmp=tmp_path)


def _h(svc: SimpleNamespace, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {svc.tok[role]}"}


def test_each_operation_leaves_exactly_one_record(svc: SimpleNamespace) -> None:
    rt, c = svc.rt, svc.client
    # a finished study to look at
    jid = rt.queue.submit("1.2.3", study(svc.tmp), meta={})
    job = rt.queue.claim("w1")
    assert job is not None and job.id == jid
    out = process_job(job, detector_factory=FakeDetector, out_root=rt.out_root, writer=fake_writer)
    assert rt.queue.complete(job, out.to_dict())

    n = len(_events(rt))
    assert c.get("/v1/studies/1.2.3/findings", headers={"Authorization": "Bearer llt_wrong"}).status_code == 401
    assert _new(rt, n) == [("110114", "E", 4, "unknown")]  # User Authentication, failed

    n = len(_events(rt))
    assert c.get("/v1/studies/1.2.3/findings", headers=_h(svc, "viewer")).status_code == 200
    assert _new(rt, n) == [("110114", "E", 0, "viewer-user"), ("110110", "R", 0, "viewer-user")]
    access = _events(rt)[-1]
    assert access["objects"][0]["object_id"] == "1.2.3" and "findings" in access["objects"][0]["description"]

    n = len(_events(rt))
    assert c.get("/v1/studies/1.2.3/report.html", headers=_h(svc, "viewer")).status_code == 200
    assert c.get("/v1/studies/1.2.3/sr", headers=_h(svc, "viewer")).status_code == 200
    assert _new(rt, n) == [("110110", "R", 0, "viewer-user")] * 2  # logged in once per process
    n = len(_events(rt))
    assert c.get("/v1/studies/9.9.9/findings", headers=_h(svc, "viewer")).status_code == 404
    assert _new(rt, n) == []  # nothing was accessed

    # C-STORE ingest: one record per study and calling AE, before the success status
    n = len(_events(rt))
    for sop in ("1", "2", "3"):
        rt._on_stored(SimpleNamespace(study_uid="4.5.6", sop_instance_uid=f"4.5.6.{sop}", source="c-store:SCANNER",
                                      path=svc.tmp / f"{sop}.dcm"))
    assert _new(rt, n) == [("110107", "C", 0, "c-store:SCANNER")]  # Import

    # export: the delivery sender records one event per study and destination
    n = len(_events(rt))
    files = [out.out_dir / "sr.dcm", out.out_dir / "seg.dcm"]
    send = rt._audited(lambda dest, fs: {f: True for f in fs})
    assert send("PACS@127.0.0.1:104", files) == {f: True for f in files}
    failing = rt._audited(lambda dest, fs: {f: False for f in fs})
    failing("PACS@127.0.0.1:104", files)
    assert _new(rt, n) == [("110106", "R", 0, "lesionlens"), ("110106", "R", 4, "lesionlens")]
    assert _events(rt)[-1]["objects"][0]["object_id"] == "1.2.3"

    # a refused model upload is an attempted change: recorded with a failure outcome
    n = len(_events(rt))
    r = c.post("/v1/models", headers=_h(svc, "model-admin"), files={"package": ("m.zip", b"not a zip")})
    assert r.status_code == 422
    assert _new(rt, n) == [("110114", "E", 0, "model-admin-user"), ("110113", "E", 4, "model-admin-user")]

    res = verify(rt.audit.log.path, svc.key)
    assert res.ok and res.records == len(_events(rt))
    assert not verify(rt.audit.log.path, b"x" * 32).ok  # keyed: another key does not verify


def test_a_failing_audit_write_refuses_the_action(svc: SimpleNamespace) -> None:
    rt = svc.rt
    jid = rt.queue.submit("1.2.3", study(svc.tmp), meta={})
    job = rt.queue.claim("w1")
    out = process_job(job, detector_factory=FakeDetector, out_root=rt.out_root, writer=fake_writer)
    rt.queue.complete(job, out.to_dict())
    assert jid
    broken = svc.tmp / "not-a-file"
    broken.mkdir()
    rt.audit.log.path = broken  # any write fails, as on a full or read-only disk
    c = TestClient(svc.client.app, raise_server_exceptions=False)
    r = c.get("/v1/studies/1.2.3/findings", headers=_h(svc, "viewer"))
    assert r.status_code == 500 and b"1.2.3" not in r.content  # the findings are not served
    with pytest.raises(Exception, match="audit"):  # a C-STORE is not acknowledged either
        rt._on_stored(SimpleNamespace(study_uid="7.7", sop_instance_uid="7.7.1", source="c-store:X",
                                      path=svc.tmp / "x.dcm"))
    assert rt.queue.list(study_uid="7.7") == []

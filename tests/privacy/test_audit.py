"""Audit trail: chain verification and tampering, durability, concurrency, helpers, exports, CLI."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from lesionlens.cli import audit_cmd
from lesionlens.privacy import audit as audit_mod
from lesionlens.privacy.audit import (
    AuditError,
    AuditEvent,
    AuditLog,
    EventID,
    ParticipantObject,
    canonical,
    head_path,
)
from lesionlens.privacy.audit_export import (
    iter_records,
    to_syslog,
    to_xml,
    verify,
    write_xml,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
KEY = bytes(range(32))


def _fill(log: AuditLog, n: int = 6) -> None:
    for i in range(n):
        log.access(f"user{i}", [ParticipantObject.study(f"{STUDY}.{i}")], source_ip="10.0.0.7")


@pytest.fixture()
def log_path(tmp_path: Path) -> Path:
    p = tmp_path / "audit" / "audit.jsonl"
    _fill(AuditLog(p))
    return p


def _lines(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


# -- chain basics ------------------------------------------------------------------------------

def test_records_chain_and_verify_ok(log_path: Path) -> None:
    recs = list(iter_records(log_path))
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[0]["prev_hash"] == "0" * 64
    for a, b in zip(recs, recs[1:], strict=False):
        assert b["prev_hash"] == a["hash"]
    body = dict(recs[2])
    digest = body.pop("hash")
    assert digest == hashlib.sha256(canonical(body)).hexdigest()
    res = verify(log_path)
    assert (res.ok, res.records, res.first_bad, res.head_hash) == (True, 6, None, recs[-1]["hash"])
    assert oct(log_path.stat().st_mode & 0o777) == "0o600"
    assert json.loads(head_path(log_path).read_text()) == {"seq": 6, "hash": recs[-1]["hash"]}


# -- the four tampering cases ------------------------------------------------------------------

def test_flipped_byte_anywhere_names_its_line(tmp_path: Path) -> None:
    log_path = tmp_path / "flip.jsonl"
    _fill(AuditLog(log_path), 3)
    data = log_path.read_bytes()
    first_nl = data.index(b"\n")
    second_nl = data.index(b"\n", first_nl + 1)
    # every byte of the middle record, every newline, and a sample of the rest
    positions = sorted(set(range(first_nl, second_nl + 1)) | set(range(0, len(data), 13))
                       | {i for i, b in enumerate(data) if b == 0x0A})
    for i in positions:
        bad = bytearray(data)
        bad[i] ^= 0x01
        log_path.write_bytes(bytes(bad))
        res = verify(log_path)
        line = data[:i].count(b"\n") + 1
        assert not res.ok and res.first_bad == line, (i, res)
    log_path.write_bytes(data)
    assert verify(log_path).ok


def test_deleted_record_detected(log_path: Path) -> None:
    lines = _lines(log_path)
    log_path.write_bytes(b"".join(lines[:2] + lines[3:]))
    res = verify(log_path)
    assert (res.ok, res.first_bad, res.first_bad_seq, res.records) == (False, 3, 4, 2)
    assert "records deleted" in res.reason


def test_reordered_records_detected(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[2], lines[3] = lines[3], lines[2]
    log_path.write_bytes(b"".join(lines))
    res = verify(log_path)
    assert (res.ok, res.first_bad, res.first_bad_seq) == (False, 3, 4)
    assert "reordered" in res.reason


def test_truncated_log_detected_by_head_file(log_path: Path) -> None:
    lines = _lines(log_path)
    log_path.write_bytes(b"".join(lines[:4]))
    res = verify(log_path)
    assert (res.ok, res.records, res.first_bad, res.first_bad_seq) == (False, 4, 5, 5)
    assert "truncated" in res.reason and "seq 6" in res.reason
    # without the head file: only an external anchor catches it
    assert verify(log_path, use_head_file=False).ok
    res = verify(log_path, use_head_file=False, expect_count=6)
    assert (res.ok, res.first_bad) == (False, 5) and "truncated" in res.reason
    assert not verify(log_path, use_head_file=False, expect_head="deadbeef").ok


def test_writer_refuses_to_append_after_truncation(log_path: Path) -> None:
    lines = _lines(log_path)
    log_path.write_bytes(b"".join(lines[:4]))
    with pytest.raises(AuditError, match="truncated or rewritten"):
        AuditLog(log_path).login("eve", True)
    assert len(_lines(log_path)) == 4


def test_partial_last_line_reported_then_recovered(log_path: Path) -> None:
    full = log_path.read_bytes()
    with log_path.open("ab") as fh:
        fh.write(b'{"active_participants":[{"network_acc')  # a crash mid-write
    res = verify(log_path)
    assert (res.ok, res.records, res.first_bad) == (False, 6, 7)
    assert "partial last line" in res.reason
    seq = AuditLog(log_path).login("alice", True)
    assert seq == 8  # 7 is the recovery record keeping the cut-off bytes
    recs = list(iter_records(log_path))
    assert recs[6]["event"]["outcome"] == 4 and "partial last line" in recs[6]["event"]["outcome_description"]
    assert log_path.read_bytes().startswith(full)
    assert verify(log_path).ok


# -- keyed chain -------------------------------------------------------------------------------

def _forge(p: Path, line_no: int, user: str) -> None:
    """An attacker edits a record and recomputes every plain SHA-256 hash after it (and the head)."""
    recs = [json.loads(x) for x in p.read_bytes().splitlines()]
    recs[line_no - 1]["active_participants"][0]["user_id"] = user
    prev = recs[line_no - 2]["hash"] if line_no > 1 else "0" * 64
    for rec in recs[line_no - 1:]:
        rec.pop("hash")
        rec["prev_hash"] = prev
        rec["hash"] = prev = hashlib.sha256(canonical(rec)).hexdigest()
    p.write_bytes(b"".join(canonical(r) + b"\n" for r in recs))
    head_path(p).write_bytes(canonical({"seq": len(recs), "hash": prev}) + b"\n")


def test_unkeyed_chain_can_be_reforged(log_path: Path) -> None:
    _forge(log_path, 2, "mallory")
    assert verify(log_path).ok  # why a key matters: documented limitation of the plain chain


def test_keyed_chain_cannot_be_reforged_without_key(tmp_path: Path) -> None:
    p = tmp_path / "keyed.jsonl"
    _fill(AuditLog(p, key=KEY))
    assert verify(p, key=KEY).ok
    res = verify(p)
    assert not res.ok and res.first_bad == 1 and "keyed" in res.reason
    assert not verify(p, key=bytes(32)).ok  # a wrong key fails too
    _forge(p, 2, "mallory")
    res = verify(p, key=KEY)
    assert (res.ok, res.first_bad, res.first_bad_seq) == (False, 2, 2)
    assert "hash mismatch" in res.reason


def test_keyed_head_file_mac(tmp_path: Path) -> None:
    p = tmp_path / "keyed.jsonl"
    _fill(AuditLog(p, key=KEY), 3)
    head = json.loads(head_path(p).read_text())
    head["seq"] = 2
    head_path(p).write_text(json.dumps(head))
    res = verify(p, key=KEY)
    assert not res.ok and "MAC mismatch" in res.reason


# -- durability and concurrency ----------------------------------------------------------------

def _append_many(path: str, who: str, n: int) -> None:
    log = AuditLog(path)
    for _ in range(n):
        log.login(who, True, source_ip="192.0.2.1")


def test_concurrent_appends_from_two_processes(tmp_path: Path) -> None:
    p = tmp_path / "mp.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(p), f"proc{i}", 200)) for i in range(2)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(120)
        assert pr.exitcode == 0
    res = verify(p)
    assert (res.ok, res.records) == (True, 400), res.reason
    recs = list(iter_records(p))
    assert [r["seq"] for r in recs] == list(range(1, 401))
    assert {r["active_participants"][0]["user_id"] for r in recs} == {"proc0", "proc1"}
    assert len({r["pid"] for r in recs}) == 2


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "t.jsonl")
    seqs: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            s = log.login("t", True)
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 101))
    assert verify(log.path).records == 100


def test_append_fsyncs_before_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(audit_mod.os, "fsync", spy)
    AuditLog(tmp_path / "d.jsonl").login("a", True)
    assert len(synced) >= 2  # the log, then the head file


def test_failing_write_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(AuditError, match="not-a-dir"):
        AuditLog(blocker / "audit.jsonl").login("a", True)

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    log = AuditLog(tmp_path / "full.jsonl")
    monkeypatch.setattr(audit_mod.os, "fsync", broken)
    with pytest.raises(AuditError, match="full.jsonl: cannot append to audit log: No space left"):
        log.login("a", True)


def test_corrupt_last_record_blocks_appends(log_path: Path) -> None:
    data = bytearray(log_path.read_bytes())
    data[-2] = ord(",")
    log_path.write_bytes(bytes(data))
    with pytest.raises(AuditError, match="last audit record is corrupt"):
        AuditLog(log_path).login("a", True)


# -- helpers -----------------------------------------------------------------------------------

HELPERS: list[tuple[str, Any, tuple[str, str, int, str | None]]] = [
    ("access", lambda log: log.access("dr.who", [ParticipantObject.study(STUDY)], source_ip="10.1.2.3"),
     ("110110", "R", 0, None)),
    ("access-images", lambda log: log.access("dr.who", [ParticipantObject.study(STUDY)], instances=True),
     ("110103", "R", 0, None)),
    ("login-ok", lambda log: log.login("dr.who", True, source_ip="10.1.2.3"), ("110114", "E", 0, "110122")),
    ("login-failed", lambda log: log.login("dr.who", False, reason="bad token"),
     ("110114", "E", 4, "110122")),
    ("logout", lambda log: log.login("dr.who", True, logout=True), ("110114", "E", 0, "110123")),
    ("ingest", lambda log: log.ingest("scp", STUDY, patient_id="P1", source="10.9.9.9"),
     ("110107", "C", 0, None)),
    ("export", lambda log: log.export("worker", STUDY, "PACS@10.0.0.2:104"), ("110106", "R", 0, None)),
    ("config", lambda log: log.config_change("admin", "send_to", network=True),
     ("110113", "E", 0, "110128")),
    ("config-sw", lambda log: log.config_change("admin", "workers"), ("110113", "E", 0, "110131")),
    ("model", lambda log: log.model_change("admin", "lesion-det", old="1.0", new="1.1"),
     ("110113", "E", 0, "110131")),
    ("app", lambda log: log.application(True), ("110100", "E", 0, "110120")),
]


@pytest.mark.parametrize("name,call,want", HELPERS, ids=[h[0] for h in HELPERS])
def test_each_helper_writes_one_record(tmp_path: Path, name: str, call: Any,
                                       want: tuple[str, str, int, str | None]) -> None:
    log = AuditLog(tmp_path / "h.jsonl", source_id="LL-TEST")
    assert call(log) == 1
    (rec,) = list(iter_records(log.path))
    ev = rec["event"]
    assert (ev["id"]["code"], ev["action"], ev["outcome"]) == want[:3]
    assert ev["id"]["system"] == "DCM"
    assert [t["code"] for t in ev["types"]] == ([want[3]] if want[3] else [])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ev["datetime"])
    assert rec["source"]["id"] == "LL-TEST"
    assert rec["active_participants"]


def test_access_records_participants(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.access("dr.who", [ParticipantObject.study(STUDY, "findings.json"), ParticipantObject.patient("P1")],
               source_ip="10.1.2.3")
    (rec,) = list(iter_records(log.path))
    ap = rec["active_participants"][0]
    assert (ap["user_id"], ap["user_is_requestor"], ap["network_access_point"],
            ap["network_access_point_type"]) == ("dr.who", True, "10.1.2.3", 2)
    study, patient = rec["objects"]
    assert (study["object_id"], study["id_type"]["code"], study["type_code"], study["role"]) == \
        (STUDY, "110180", 2, 3)
    assert (patient["id_type"]["code"], patient["type_code"], patient["role"]) == ("2", 1, 1)


def test_event_validation() -> None:
    with pytest.raises(AuditError, match="EventActionCode"):
        AuditEvent(EventID.EXPORT, "X", 0, ())  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="EventOutcomeIndicator"):
        AuditEvent(EventID.EXPORT, "R", 3, ())  # type: ignore[arg-type]


# -- exports -----------------------------------------------------------------------------------

def _one(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    log = AuditLog(tmp_path / "x.jsonl")
    log.access(kw.get("user", "dr.who"), [ParticipantObject.study(STUDY, kw.get("desc"))],
               source_ip="10.1.2.3")
    return next(iter(iter_records(log.path)))


def test_xml_holds_the_dicom_fields(tmp_path: Path) -> None:
    rec = _one(tmp_path, user='o\'brien <&> "x"\nnext', desc="report & <SR>")
    root = ET.fromstring(to_xml(rec))
    assert "\n" not in to_xml(rec)
    assert root.tag == "AuditMessage"
    ident = root.find("EventIdentification")
    assert ident is not None
    assert ident.attrib == {"EventActionCode": "R", "EventDateTime": rec["event"]["datetime"],
                            "EventOutcomeIndicator": "0"}
    eid = ident.find("EventID")
    assert eid is not None and eid.attrib == {"csd-code": "110110", "codeSystemName": "DCM",
                                              "originalText": "Patient Record"}
    ap = root.find("ActiveParticipant")
    assert ap is not None
    assert ap.attrib["UserID"] == 'o\'brien <&> "x"\nnext'
    assert (ap.attrib["UserIsRequestor"], ap.attrib["NetworkAccessPointID"],
            ap.attrib["NetworkAccessPointTypeCode"]) == ("true", "10.1.2.3", "2")
    src = root.find("AuditSourceIdentification")
    assert src is not None and src.attrib["AuditSourceID"] == "LESIONLENS"
    obj = root.find("ParticipantObjectIdentification")
    assert obj is not None
    assert (obj.attrib["ParticipantObjectID"], obj.attrib["ParticipantObjectTypeCode"],
            obj.attrib["ParticipantObjectTypeCodeRole"]) == (STUDY, "2", "3")
    idt = obj.find("ParticipantObjectIDTypeCode")
    assert idt is not None and idt.attrib["csd-code"] == "110180"
    assert idt.attrib["originalText"] == "Study Instance UID"
    assert obj.findtext("ParticipantObjectDescription") == "report & <SR>"
    assert [c.tag for c in root] == ["EventIdentification", "ActiveParticipant",
                                     "AuditSourceIdentification", "ParticipantObjectIdentification"]


def test_xml_document_of_all_records(log_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.xml"
    with out.open("w") as fh:
        assert write_xml(iter_records(log_path), fh) == 6
    root = ET.parse(out).getroot()
    assert len(root.findall("AuditMessage")) == 6


def test_syslog_line(tmp_path: Path) -> None:
    rec = _one(tmp_path)
    line = to_syslog(rec)
    m = re.fullmatch(r"<(\d+)>1 (\S+) (\S+) LesionLens (\d+) DICOM\+RFC3881 - (<AuditMessage>.*</AuditMessage>)",
                     line)
    assert m, line
    assert m.group(1) == "85"  # authpriv.notice
    assert m.group(2) == rec["event"]["datetime"] and m.group(2).endswith("Z")
    assert m.group(4) == str(rec["pid"])
    ET.fromstring(m.group(5))
    failed = dict(rec, event=dict(rec["event"], outcome=4))
    assert to_syslog(failed).startswith("<84>1 ")


# -- CLI ---------------------------------------------------------------------------------------

def _cli() -> typer.Typer:
    app = typer.Typer()
    audit_cmd.register(app)
    return app


def test_cli_verify(log_path: Path, tmp_path: Path) -> None:
    runner, app = CliRunner(), _cli()
    res = runner.invoke(app, ["audit", "verify", str(log_path)])
    head = list(iter_records(log_path))[-1]["hash"]
    assert res.exit_code == 0 and f"ok: 6 records, head {head}" in res.output
    res = runner.invoke(app, ["audit", "verify", str(log_path), "--expect-count", "7"])
    assert res.exit_code == 1
    lines = _lines(log_path)
    log_path.write_bytes(b"".join(lines[:1] + lines[2:]))
    res = runner.invoke(app, ["audit", "verify", str(log_path)])
    assert res.exit_code == 1 and "line 2, seq 3" in res.output and "deleted" in res.output


def test_cli_verify_keyed(tmp_path: Path) -> None:
    runner, app = CliRunner(), _cli()
    kf = tmp_path / "audit.key"
    kf.write_bytes(KEY)
    kf.chmod(0o600)
    p = tmp_path / "k.jsonl"
    _fill(AuditLog(p, key=KEY), 2)
    assert runner.invoke(app, ["audit", "verify", str(p), "--key-file", str(kf)]).exit_code == 0
    res = runner.invoke(app, ["audit", "verify", str(p)])
    assert res.exit_code == 1 and "keyed" in res.output
    assert KEY.hex() not in res.output


def test_cli_export_and_show(log_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lesionlens.cli._common import console

    monkeypatch.setattr(console, "width", 200)  # the table's columns, whatever terminal runs the tests
    runner, app = CliRunner(), _cli()
    out = tmp_path / "a.xml"
    res = runner.invoke(app, ["audit", "export", str(log_path), "--format", "xml", "--out", str(out)])
    assert res.exit_code == 0 and "wrote 6" in res.output
    assert len(ET.parse(out).getroot()) == 6
    res = runner.invoke(app, ["audit", "export", str(log_path), "--format", "syslog"])
    assert res.exit_code == 0 and len(res.output.splitlines()) == 6
    assert all(line.startswith("<85>1 ") for line in res.output.splitlines())
    res = runner.invoke(app, ["audit", "export", str(log_path), "--format", "csv"])
    assert res.exit_code == 2 and "xml or syslog" in res.output
    res = runner.invoke(app, ["audit", "show", str(log_path), "--last", "2"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "user5" in res.output and "user4" in res.output and "user3" not in res.output
    assert "Patient Record" in res.output

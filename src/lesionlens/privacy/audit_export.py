"""Reading side of the audit trail: verify the chain, export DICOM audit messages and syslog.

* :func:`verify` checks every record of a log written by :class:`~lesionlens.privacy.audit.AuditLog`
  (JSON, hash, canonical form, ``seq``, ``prev_hash``) and its tail anchors, and names the first
  bad record by its 1-based line number and seq.
* :func:`to_xml` renders one record as a DICOM audit message (PS3.15 A.5, the RFC 3881-derived
  schema); :func:`to_syslog` wraps that in an RFC 5424 line as IHE ATNA does.
"""

from __future__ import annotations

import hmac
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from lesionlens.privacy.audit import (
    GENESIS,
    AuditError,
    canonical,
    head_mac,
    head_path,
    record_hash,
)

# -- reading and verifying ---------------------------------------------------------------------

@dataclass
class VerifyResult:
    """The outcome of :func:`verify`. ``first_bad`` is the 1-based line number of the first bad
    record (for a truncated log: the line where the missing records should start)."""

    ok: bool
    records: int
    first_bad: int | None = None
    reason: str = "ok"
    first_bad_seq: int | None = None
    head_hash: str | None = None
    warnings: list[str] = field(default_factory=list)


def iter_records(path: str | Path) -> Iterable[dict[str, Any]]:
    """Parse each complete line of the log (no verification; see :func:`verify`)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read audit log: {exc.strerror or exc}", path=p) from exc
    for n, line in enumerate(data.split(b"\n")[:-1], 1):
        try:
            yield json.loads(line)
        except ValueError:
            raise AuditError(f"line {n} is not valid JSON; run 'lesionlens audit verify'",
                             path=p) from None


def verify(path: str | Path, key: bytes | None = None, *, expect_count: int | None = None,
           expect_head: str | None = None, use_head_file: bool = True) -> VerifyResult:
    """Check the whole chain of ``path`` and its tail anchors; stops at the first problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read audit log: {exc.strerror or exc}", path=p) from exc
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    prev, seq = GENESIS, 0
    want_chain = "sha256" if key is None else "hmac-sha256"

    def bad(n: int, why: str, at_seq: int | None = None) -> VerifyResult:
        return VerifyResult(False, seq, n, why, at_seq, prev if seq else None)

    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError
        except ValueError:
            return bad(n, f"line {n} is not valid JSON (modified)")
        rseq, digest = rec.get("seq"), rec.pop("hash", None)
        if rec.get("chain") != want_chain:
            why = ("the log is keyed (hmac-sha256): pass its key" if rec.get("chain") == "hmac-sha256"
                   else f"record uses chain {rec.get('chain')!r}, expected {want_chain}")
            return bad(n, f"line {n} (seq {rseq}): {why}", rseq)
        if not isinstance(digest, str) or not hmac.compare_digest(digest, record_hash(rec, key)):
            return bad(n, f"line {n} (seq {rseq}): hash mismatch (record modified)", rseq)
        rec["hash"] = digest
        if canonical(rec) != line:
            return bad(n, f"line {n} (seq {rseq}): not in canonical form (modified)", rseq)
        if not isinstance(rseq, int) or rseq != seq + 1:
            later = rseq is not None and isinstance(rseq, int) and rseq > seq + 1 \
                and not _seq_later(lines[n:], seq + 1)
            why = f"seq {rseq} where {seq + 1} was expected: " + \
                ("records deleted" if later else "records reordered")
            return bad(n, f"line {n}: {why}", rseq if isinstance(rseq, int) else None)
        if rec.get("prev_hash") != prev:
            return bad(n, f"line {n} (seq {rseq}): prev_hash does not match the previous record "
                          "(records deleted or reordered)", rseq)
        prev, seq = digest, rseq
    n_bad = len(lines) + 1
    if tail:
        return bad(n_bad, f"line {n_bad}: partial last line of {len(tail)} bytes (a crash mid-write, "
                          "or the log was truncated mid-record)")
    result = VerifyResult(True, seq, head_hash=prev if seq else None)
    if use_head_file:
        problem = _check_head(p, key, seq, prev, lines, result)
        if problem:
            return bad(n_bad, problem, seq + 1)
    if expect_count is not None and seq != expect_count:
        return bad(n_bad, f"truncated: the log has {seq} records, {expect_count} were expected"
                   if seq < expect_count else
                   f"the log has {seq} records, {expect_count} were expected", seq + 1)
    if expect_head is not None and not (seq and prev.startswith(expect_head.lower())):
        return bad(n_bad, f"the last record's hash is {prev if seq else 'none'}, "
                          f"expected {expect_head}", seq + 1)
    return result


def _seq_later(lines: list[bytes], seq: int) -> bool:
    """Whether a record with ``seq`` appears in ``lines`` (tells reordering from deletion)."""
    for line in lines:
        try:
            if json.loads(line).get("seq") == seq:
                return True
        except (ValueError, AttributeError):
            continue
    return False


def _check_head(p: Path, key: bytes | None, seq: int, last: str, lines: list[bytes],
                result: VerifyResult) -> str | None:
    """Compare the chain with ``<log>.head``; returns a problem or None (warnings go in result)."""
    hp = head_path(p)
    if not hp.exists():
        if seq:
            result.warnings.append(f"no head file {hp.name}: truncation of the tail cannot be "
                                   "detected without --expect-count/--expect-head")
        return None
    try:
        head = json.loads(hp.read_bytes())
        hseq, hhash = int(head["seq"]), str(head["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"head file {hp.name} is unreadable or modified"
    if key is not None and not hmac.compare_digest(str(head.get("mac", "")), head_mac(hseq, hhash, key)):
        return f"head file {hp.name}: MAC mismatch (modified)"
    if hseq > seq:
        return f"truncated: the log ends at seq {seq} but {hp.name} records seq {hseq}"
    anchored = json.loads(lines[hseq - 1]).get("hash") if hseq else GENESIS
    if anchored != hhash:
        return f"record seq {hseq} does not match {hp.name} (log rewritten)"
    if hseq < seq:
        result.warnings.append(f"{hp.name} lags the log by {seq - hseq} record(s) "
                               "(a crash between an append and the head update)")
    return None



# -- DICOM audit message XML -------------------------------------------------------------------

_SOURCE_TYPE = {"4": "Application Server Process"}
SYSLOG_MSGID = "DICOM+RFC3881"
_FACILITY_AUTHPRIV = 10


def _code(parent: ET.Element, tag: str, code: dict[str, Any]) -> None:
    ET.SubElement(parent, tag, {"csd-code": str(code["code"]), "codeSystemName": str(code["system"]),
                                "originalText": str(code["meaning"])})


def _attrs(pairs: Iterable[tuple[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs:
        if v is not None:
            out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


def to_xml_element(rec: dict[str, Any]) -> ET.Element:
    """One record as an ``<AuditMessage>`` element (PS3.15 A.5.1 element order)."""
    ev = rec["event"]
    msg = ET.Element("AuditMessage")
    ident = ET.SubElement(msg, "EventIdentification", _attrs([
        ("EventActionCode", ev["action"]), ("EventDateTime", ev["datetime"]),
        ("EventOutcomeIndicator", ev["outcome"])]))
    _code(ident, "EventID", ev["id"])
    for t in ev.get("types") or []:
        _code(ident, "EventTypeCode", t)
    if ev.get("outcome_description"):
        ET.SubElement(ident, "EventOutcomeDescription").text = str(ev["outcome_description"])
    for ap in rec.get("active_participants") or []:
        el = ET.SubElement(msg, "ActiveParticipant", _attrs([
            ("UserID", ap["user_id"]), ("UserName", ap.get("user_name")),
            ("UserIsRequestor", bool(ap.get("user_is_requestor"))),
            ("NetworkAccessPointID", ap.get("network_access_point")),
            ("NetworkAccessPointTypeCode", ap.get("network_access_point_type"))]))
        if ap.get("role"):
            _code(el, "RoleIDCode", ap["role"])
    src = rec.get("source") or {}
    sel = ET.SubElement(msg, "AuditSourceIdentification", _attrs([
        ("AuditEnterpriseSiteID", src.get("site")), ("AuditSourceID", src.get("id", ""))]))
    stype = str(src.get("type", "4"))
    _code(sel, "AuditSourceTypeCode", {"code": stype, "system": "DCM",
                                       "meaning": _SOURCE_TYPE.get(stype, stype)})
    for obj in rec.get("objects") or []:
        oel = ET.SubElement(msg, "ParticipantObjectIdentification", _attrs([
            ("ParticipantObjectID", obj["object_id"]), ("ParticipantObjectTypeCode", obj["type_code"]),
            ("ParticipantObjectTypeCodeRole", obj["role"])]))
        _code(oel, "ParticipantObjectIDTypeCode", obj["id_type"])
        if obj.get("name"):
            ET.SubElement(oel, "ParticipantObjectName").text = str(obj["name"])
        if obj.get("description"):
            ET.SubElement(oel, "ParticipantObjectDescription").text = str(obj["description"])
    return msg


def to_xml(rec: dict[str, Any]) -> str:
    """One record as a one-line ``<AuditMessage>`` string (newlines in values are escaped)."""
    return ET.tostring(to_xml_element(rec), encoding="unicode")


def write_xml(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """A well-formed document: ``<AuditMessages>`` holding one ``<AuditMessage>`` per record."""
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n')
    n = 0
    for rec in records:
        out.write(to_xml(rec) + "\n")
        n += 1
    out.write("</AuditMessages>\n")
    return n


def _token(text: Any, limit: int) -> str:
    """An RFC 5424 header field: printable ASCII without spaces, or ``-``."""
    s = re.sub(r"[^\x21-\x7e]", "_", str(text or ""))[:limit]
    return s or "-"


def syslog_pri(outcome: int) -> int:
    """Facility authpriv (10); severity notice (5) for success, warning (4) / error (3) otherwise."""
    severity = 5 if outcome == 0 else 4 if outcome == 4 else 3
    return _FACILITY_AUTHPRIV * 8 + severity


def to_syslog(rec: dict[str, Any], app_name: str = "LesionLens") -> str:
    """``<PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG`` with the audit message XML as MSG."""
    ev = rec["event"]
    stamp = datetime.fromisoformat(ev["datetime"].replace("Z", "+00:00")).isoformat(
        timespec="microseconds").replace("+00:00", "Z")
    return (f"<{syslog_pri(int(ev['outcome']))}>1 {stamp} {_token(rec.get('host'), 255)} "
            f"{_token(app_name, 48)} {_token(rec.get('pid'), 128)} {SYSLOG_MSGID} - {to_xml(rec)}")


def write_syslog(records: Iterable[dict[str, Any]], out: TextIO, app_name: str = "LesionLens") -> int:
    """One RFC 5424 line per record."""
    n = 0
    for rec in records:
        out.write(to_syslog(rec, app_name) + "\n")
        n += 1
    return n


__all__ = ["VerifyResult", "verify", "iter_records", "to_xml_element", "to_xml", "write_xml",
           "to_syslog", "write_syslog", "syslog_pri", "SYSLOG_MSGID"]

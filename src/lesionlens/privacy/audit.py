"""Audit trail: an append-only, hash-chained JSON Lines log of DICOM audit events (PS3.15 A.5).

Each line is one record in canonical JSON (sorted keys, no spaces, ASCII)::

    {"active_participants":[...],"chain":"sha256","event":{...},"hash":"...","host":"...",
     "objects":[...],"pid":123,"prev_hash":"000...","seq":1,"source":{...}}

``hash`` is SHA-256 (no key) or HMAC-SHA256 (with a key) over the canonical JSON of the record
without ``hash``; ``prev_hash`` is the previous record's ``hash`` (64 zeros for the first) and
``seq`` counts from 1. Unkeyed, the chain detects accidental damage and edits by someone who does
not rewrite the rest of the file; only a keyed chain stops an attacker who can write the file from
recomputing every hash after an edit. ``chain`` names the algorithm so a keyed log is never
verified as an unkeyed one.

The tail is anchored by ``<log>.head`` (the last seq and hash; HMAC'd when keyed), rewritten after
each append: deleting records from the end is detected against it (or against ``expect_count`` /
``expect_head`` kept elsewhere, e.g. in the syslog server the log is exported to).

Appends are durable before :meth:`AuditLog.record` returns (write, flush, ``fsync``), serialised
between threads (a lock) and processes (``fcntl.flock`` on the log; the tail is re-read under the
lock). A failed write raises :class:`AuditError`: the caller must not acknowledge the action.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import socket
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Literal

from lesionlens.errors import LesionLensError

GENESIS = "0" * 64
_MAC_LABEL = b"lesionlens/audit-chain/v1"


class AuditError(LesionLensError):
    """The audit log could not be written or read (names the log file and the reason)."""

    code = "audit"


# -- codes (PS3.16 CID 400-405, RFC 3881) ------------------------------------------------------

@dataclass(frozen=True)
class Code:
    """A coded value: ``csd-code``, ``codeSystemName``, ``originalText`` in the XML."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


class EventID:
    """Audit Event IDs (CID 400)."""

    APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
    AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
    INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
    STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
    EXPORT = _dcm("110106", "Export")
    IMPORT = _dcm("110107", "Import")
    PATIENT_RECORD = _dcm("110110", "Patient Record")
    QUERY = _dcm("110112", "Query")
    SECURITY_ALERT = _dcm("110113", "Security Alert")
    USER_AUTHENTICATION = _dcm("110114", "User Authentication")


class EventType:
    """Audit Event Type Codes (CID 401)."""

    APPLICATION_START = _dcm("110120", "Application Start")
    APPLICATION_STOP = _dcm("110121", "Application Stop")
    LOGIN = _dcm("110122", "Login")
    LOGOUT = _dcm("110123", "Logout")
    NETWORK_CONFIGURATION = _dcm("110128", "Network Configuration")
    SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
    SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")


class RoleID:
    """Audit Active Participant Role ID Codes (CID 402)."""

    APPLICATION = _dcm("110150", "Application")
    DESTINATION = _dcm("110152", "Destination Role ID")
    SOURCE = _dcm("110153", "Source Role ID")
    DESTINATION_MEDIA = _dcm("110154", "Destination Media")
    SOURCE_MEDIA = _dcm("110155", "Source Media")


class ObjectIDType:
    """Participant Object ID Type Codes (RFC 3881 and CID 404)."""

    PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
    URI = Code("12", "RFC-3881", "URI")
    STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
    SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
    NODE_ID = _dcm("110182", "Node ID")


Action = Literal["C", "R", "U", "D", "E"]
Outcome = Literal[0, 4, 8, 12]
"""0 success, 4 minor failure, 8 serious failure, 12 major failure."""

# ParticipantObjectTypeCode / ...TypeCodeRole (RFC 3881)
TYPE_PERSON, TYPE_SYSTEM, TYPE_ORGANIZATION, TYPE_OTHER = 1, 2, 3, 4
ROLE_PATIENT, ROLE_REPORT, ROLE_RESOURCE, ROLE_MASTER_FILE, ROLE_USER = 1, 3, 4, 5, 6
ROLE_SECURITY_RESOURCE, ROLE_DATA_REPOSITORY = 13, 17


# -- the event ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ActiveParticipant:
    """A user or process taking part (``NetworkAccessPointTypeCode``: 1 name, 2 IP address)."""

    user_id: str
    user_is_requestor: bool = True
    network_access_point: str | None = None
    network_access_point_type: int | None = None
    user_name: str | None = None
    role: Code | None = None

    @classmethod
    def user(cls, user_id: str, source_ip: str | None = None, *, requestor: bool = True,
             user_name: str | None = None, role: Code | None = None) -> ActiveParticipant:
        """A participant whose access point type is inferred (2 for an IP address, else 1)."""
        kind = None if source_ip is None else (2 if _is_ip(source_ip) else 1)
        return cls(user_id, requestor, source_ip, kind, user_name, role)


@dataclass(frozen=True)
class ParticipantObject:
    """An object the event is about: a study, a patient, a report, a setting, a model."""

    object_id: str
    id_type: Code = ObjectIDType.STUDY_INSTANCE_UID
    type_code: int = TYPE_SYSTEM
    role: int = ROLE_REPORT
    name: str | None = None
    description: str | None = None

    @classmethod
    def study(cls, study_uid: str, description: str | None = None, *,
              role: int = ROLE_REPORT) -> ParticipantObject:
        return cls(study_uid, ObjectIDType.STUDY_INSTANCE_UID, TYPE_SYSTEM, role, None, description)

    @classmethod
    def patient(cls, patient_id: str, name: str | None = None) -> ParticipantObject:
        return cls(patient_id, ObjectIDType.PATIENT_NUMBER, TYPE_PERSON, ROLE_PATIENT, name)


@dataclass(frozen=True)
class AuditEvent:
    """One DICOM audit message's content. ``when`` defaults to now (UTC) at recording time."""

    event_id: Code
    action: Action
    outcome: Outcome
    participants: tuple[ActiveParticipant, ...]
    objects: tuple[ParticipantObject, ...] = ()
    event_types: tuple[Code, ...] = ()
    outcome_description: str | None = None
    when: datetime | None = None

    def __post_init__(self) -> None:
        if self.action not in ("C", "R", "U", "D", "E"):
            raise AuditError(f"EventActionCode must be C, R, U, D or E, not {self.action!r}")
        if self.outcome not in (0, 4, 8, 12):
            raise AuditError(f"EventOutcomeIndicator must be 0, 4, 8 or 12, not {self.outcome!r}")
        if not self.participants:
            raise AuditError("an audit event needs at least one active participant")


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _utc(when: datetime | None) -> str:
    t = (when or datetime.now(UTC)).astimezone(UTC)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- chain -------------------------------------------------------------------------------------

def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes hashed by the chain (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def mac_key(key: bytes) -> bytes:
    """The HMAC key derived from a configured key (domain-separated from other uses of it)."""
    return hmac.new(key, _MAC_LABEL, hashlib.sha256).digest()


def record_hash(body: dict[str, Any], key: bytes | None) -> str:
    """SHA-256 (``key`` None) or HMAC-SHA256 of ``canonical(body)``; ``body`` excludes ``hash``."""
    data = canonical(body)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(mac_key(key), data, hashlib.sha256).hexdigest()


def head_mac(seq: int, digest: str, key: bytes) -> str:
    """The MAC of the head file of a keyed log."""
    return hmac.new(mac_key(key), canonical({"hash": digest, "seq": seq}), hashlib.sha256).hexdigest()


def head_path(log_path: str | Path) -> Path:
    """Where the tail anchor of ``log_path`` lives: ``<log>.head``."""
    p = Path(log_path)
    return p.with_name(p.name + ".head")


def event_body(event: AuditEvent, source_id: str, site_id: str | None) -> dict[str, Any]:
    """The record fields describing ``event`` (everything but the chain fields)."""
    return {
        "event": {"id": asdict(event.event_id), "action": event.action, "outcome": event.outcome,
                  "datetime": _utc(event.when), "types": [asdict(c) for c in event.event_types],
                  "outcome_description": event.outcome_description},
        "active_participants": [asdict(p) for p in event.participants],
        "objects": [asdict(o) for o in event.objects],
        "source": {"id": source_id, "site": site_id, "type": "4"},
    }


class AuditLog:
    """The writer. One instance per log file is enough for a process; it is thread-safe.

    Args:
        path: the JSON Lines file (created with mode 0600, its folder too).
        key: HMAC key bytes for a keyed chain (None: plain SHA-256; see the module docs).
        source_id: ``AuditSourceID`` of every record.
        site_id: ``AuditEnterpriseSiteID`` (optional).
    """

    def __init__(self, path: str | Path, key: bytes | None = None, source_id: str = "LESIONLENS",
                 site_id: str | None = None):
        self.path = Path(path)
        self.key = key
        self.source_id = source_id
        self.site_id = site_id
        self._lock = threading.Lock()
        self._host = socket.gethostname()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, keyed={self.key is not None})"

    # -- the one write path --
    def record(self, event: AuditEvent) -> int:
        """Append ``event`` durably; returns its ``seq``. Raises :class:`AuditError` on failure."""
        body = event_body(event, self.source_id, self.site_id)
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open audit log: {exc.strerror or exc}", path=self.path) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev, dropped = self._tail(fd)
                self._check_anchor(seq, prev)
                if dropped:
                    seq, prev = self._append(fd, self._recovery_body(seq, dropped), seq, prev)
                seq, prev = self._append(fd, body, seq, prev)
                self._write_head(seq, prev)
            except OSError as exc:
                raise AuditError(f"cannot append to audit log: {exc.strerror or exc}",
                                 path=self.path) from exc
            finally:
                os.close(fd)  # releases the flock
        return seq

    def _append(self, fd: int, body: dict[str, Any], seq: int, prev: str) -> tuple[int, str]:
        body.update(host=self._host, pid=os.getpid(), seq=seq + 1, prev_hash=prev,
                    chain="sha256" if self.key is None else "hmac-sha256")
        body["hash"] = record_hash(body, self.key)
        _write_all(fd, canonical(body) + b"\n")
        os.fsync(fd)
        return seq + 1, str(body["hash"])

    def _recovery_body(self, seq: int, dropped: bytes) -> dict[str, Any]:
        """An Application Activity record keeping the bytes of a partial line it cut off."""
        kept = base64.b64encode(dropped[:4096]).decode("ascii")
        desc = (f"recovered audit log: cut a partial last line of {len(dropped)} bytes after seq "
                f"{seq} (a writer crashed mid-append); its first bytes, base64: {kept}")
        event = AuditEvent(EventID.APPLICATION_ACTIVITY, "E", 4, (ActiveParticipant(
            "lesionlens", False, self._host, 1, role=RoleID.APPLICATION),), outcome_description=desc)
        return event_body(event, self.source_id, self.site_id)

    def _tail(self, fd: int) -> tuple[int, str, bytes]:
        """(seq, hash) of the last complete record and the partial last line it cut off (if any)."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS, b""
        block, end, buf = 4096, size, b""
        while True:
            start = max(0, end - block)
            buf = os.pread(fd, end - start, start) + buf
            end = start
            nl = buf.rfind(b"\n", 0, len(buf) - 1)
            if nl >= 0 or start == 0:
                break
            block *= 2
        dropped = b""
        if not buf.endswith(b"\n"):
            # a writer crashed mid-line: that record was never acknowledged; cut it off (its bytes
            # are kept in a recovery record) and read the tail again
            keep = size - len(buf) + buf.rfind(b"\n") + 1
            dropped = buf[buf.rfind(b"\n") + 1:]
            os.ftruncate(fd, keep)
            os.fsync(fd)
            seq, prev, _ = self._tail(fd)
            return seq, prev, dropped
        last = buf[nl + 1:] if nl >= 0 else buf
        try:
            rec = json.loads(last)
            return int(rec["seq"]), str(rec["hash"]), dropped
        except (ValueError, KeyError, TypeError):
            raise AuditError("the last audit record is corrupt; run 'lesionlens audit verify'",
                             path=self.path) from None

    def _check_anchor(self, seq: int, last: str) -> None:
        """Refuse to append after a truncation: the head file must not be ahead of the log."""
        hp = head_path(self.path)
        try:
            head = json.loads(hp.read_bytes())
            hseq, hhash = int(head["seq"]), str(head["hash"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            raise AuditError(f"head file {hp.name} is unreadable; run 'lesionlens audit verify'",
                             path=self.path) from None
        if hseq > seq or (hseq == seq and hhash != last):
            raise AuditError(f"the audit log ends at seq {seq} but {hp.name} records seq {hseq}: "
                             "truncated or rewritten; run 'lesionlens audit verify'", path=self.path)

    def _write_head(self, seq: int, digest: str) -> None:
        head: dict[str, Any] = {"seq": seq, "hash": digest}
        if self.key is not None:
            head["mac"] = head_mac(seq, digest, self.key)
        target = head_path(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".head-", dir=target.parent)
        try:
            _write_all(fd, canonical(head) + b"\n")
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- helpers: one record each --
    def access(self, user: str, objects: Sequence[ParticipantObject], *, instances: bool = False,
               action: Action = "R", outcome: Outcome = 0, source_ip: str | None = None,
               description: str | None = None) -> int:
        """Patient data viewed or downloaded: findings, reports, SR (110110 Patient Record), or
        images (``instances=True``: 110103 DICOM Instances Accessed)."""
        eid = EventID.INSTANCES_ACCESSED if instances else EventID.PATIENT_RECORD
        return self.record(AuditEvent(eid, action, outcome,
                                      (ActiveParticipant.user(user, source_ip),), tuple(objects),
                                      outcome_description=description))

    def login(self, user: str, ok: bool, *, source_ip: str | None = None, logout: bool = False,
              reason: str | None = None) -> int:
        """A login (outcome 0, or 4 when it failed) or logout: 110114 User Authentication."""
        return self.record(AuditEvent(
            EventID.USER_AUTHENTICATION, "E", 0 if ok else 4,
            (ActiveParticipant.user(user, source_ip),),
            event_types=(EventType.LOGOUT if logout else EventType.LOGIN,),
            outcome_description=reason))

    def ingest(self, user: str, study_uid: str, *, patient_id: str | None = None,
               source: str | None = None, outcome: Outcome = 0, description: str | None = None) -> int:
        """A study received (upload, C-STORE, folder): 110107 Import, action C.

        ``source``: where it came from (calling AE title, IP or path), recorded as the
        Source Role participant.
        """
        parts = [ActiveParticipant.user(user, None, requestor=True, role=RoleID.DESTINATION)]
        if source is not None:
            parts.append(ActiveParticipant.user(source, source if _is_ip(source) else None,
                                                requestor=False, role=RoleID.SOURCE))
        return self.record(AuditEvent(EventID.IMPORT, "C", outcome, tuple(parts),
                                      _study_objects(study_uid, patient_id),
                                      outcome_description=description))

    def export(self, user: str, study_uid: str, destination: str, *, patient_id: str | None = None,
               outcome: Outcome = 0, source_ip: str | None = None,
               description: str | None = None) -> int:
        """Results or images leaving the system (C-STORE, STOW, file): 110106 Export, action R."""
        parts = (ActiveParticipant.user(user, source_ip, role=RoleID.SOURCE),
                 ActiveParticipant.user(destination, destination if _is_ip(destination) else None,
                                        requestor=False, role=RoleID.DESTINATION))
        return self.record(AuditEvent(EventID.EXPORT, "R", outcome, parts,
                                      _study_objects(study_uid, patient_id),
                                      outcome_description=description))

    def config_change(self, user: str, setting: str, *, network: bool = False,
                      description: str | None = None, outcome: Outcome = 0,
                      source_ip: str | None = None) -> int:
        """A configuration change: 110113 Security Alert with 110131 Software Configuration (or
        110128 Network Configuration when ``network``)."""
        etype = EventType.NETWORK_CONFIGURATION if network else EventType.SOFTWARE_CONFIGURATION
        obj = ParticipantObject(setting, ObjectIDType.URI, TYPE_SYSTEM, ROLE_SECURITY_RESOURCE,
                                description=description)
        return self.record(AuditEvent(EventID.SECURITY_ALERT, "E", outcome,
                                      (ActiveParticipant.user(user, source_ip),), (obj,),
                                      event_types=(etype,), outcome_description=description))

    def model_change(self, user: str, model: str, *, old: str | None = None, new: str | None = None,
                     outcome: Outcome = 0, source_ip: str | None = None) -> int:
        """A model added, activated or rolled back: Security Alert / Software Configuration."""
        desc = f"model {model}: {old or '-'} -> {new or '-'}"
        obj = ParticipantObject(model, ObjectIDType.URI, TYPE_SYSTEM, ROLE_MASTER_FILE,
                                name=new, description=desc)
        return self.record(AuditEvent(EventID.SECURITY_ALERT, "E", outcome,
                                      (ActiveParticipant.user(user, source_ip),), (obj,),
                                      event_types=(EventType.SOFTWARE_CONFIGURATION,),
                                      outcome_description=desc))

    def application(self, started: bool, *, user: str = "lesionlens") -> int:
        """The service started or stopped: 110100 Application Activity."""
        etype = EventType.APPLICATION_START if started else EventType.APPLICATION_STOP
        return self.record(AuditEvent(EventID.APPLICATION_ACTIVITY, "E", 0, (ActiveParticipant(
            user, False, self._host, 1, role=RoleID.APPLICATION),), event_types=(etype,)))


def _study_objects(study_uid: str, patient_id: str | None) -> tuple[ParticipantObject, ...]:
    objs = [ParticipantObject.study(study_uid)]
    if patient_id is not None:
        objs.append(ParticipantObject.patient(patient_id))
    return tuple(objs)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


__all__ = [
    "AuditError", "AuditLog", "AuditEvent", "ActiveParticipant", "ParticipantObject", "Code",
    "EventID", "EventType", "RoleID", "ObjectIDType", "canonical", "record_hash", "head_path",
    "head_mac", "GENESIS",
]

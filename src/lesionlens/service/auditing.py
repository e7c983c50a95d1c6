"""Where the service writes its audit trail (:class:`lesionlens.privacy.audit.AuditLog`).

Every record is appended (and fsynced) **before** the action is acknowledged: a route records
before it returns its response, the DICOM listener's ``on_stored`` before the C-STORE success
status. If the record cannot be written the action fails (HTTP 500 / DIMSE 0xA700-class status)
rather than happen unrecorded.

What is recorded:

* logins — a failed bearer token (each time), the first successful use of a token per process;
* access to patient data — findings, HTML/PDF report, SR downloads (Patient Record, Read);
* ingest — HTTP uploads (per study) and C-STORE (per study and calling AE, once per hour);
* export — result objects delivered to a PACS (per job and destination);
* model changes — upload, activation, roll back; application start and stop with its
  network configuration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from lesionlens.privacy.audit import AuditLog, ParticipantObject

INGEST_REPEAT_SECONDS = 3600.0


def client_ip(request: Any) -> str | None:
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


class ServiceAudit:
    """The service's audit hooks over one :class:`AuditLog` (thread-safe)."""

    def __init__(self, log: AuditLog):
        self.log = log
        self._lock = threading.Lock()
        self._logged_in: set[str] = set()
        self._ingests: dict[tuple[str, str], float] = {}

    # --------------------------------------------------------------- HTTP
    def login_failed(self, request: Any, reason: str) -> None:
        self.log.login("unknown", False, source_ip=client_ip(request), reason=reason)

    def login_ok(self, request: Any, name: str) -> None:
        with self._lock:
            if name in self._logged_in:
                return
        self.log.login(name, True, source_ip=client_ip(request))
        with self._lock:
            self._logged_in.add(name)

    def accessed(self, request: Any, user: str, study_uid: str, what: str) -> None:
        self.log.access(user, [ParticipantObject.study(study_uid, what)], source_ip=client_ip(request))

    def exported_deidentified(self, request: Any, user: str, study_uid: str, what: str) -> None:
        """A de-identified copy handed to a user (research export): 110106 Export."""
        self.log.export(user, study_uid, client_ip(request) or "http", source_ip=client_ip(request),
                        description=f"{what} (de-identified)")

    def predicted(self, request: Any, user: str, study_uid: str | None, kind: str) -> None:
        """An image uploaded to /v1/predict (patient data processed, nothing stored): 110107
        Import with the study's UID (DICOM) or the image format."""
        self.log.ingest(user, study_uid or "-", source=client_ip(request) or "http",
                        description=f"/v1/predict {kind} image (not stored)")

    def uploaded(self, request: Any, user: str, study_uids: Iterable[str]) -> None:
        for uid in study_uids:
            self.log.ingest(user, uid, source=client_ip(request) or "http")

    def model_changed(self, request: Any, user: str, model: str, old: str | None, new: str | None,
                      ok: bool = True) -> None:
        self.log.model_change(user, model, old=old, new=new, outcome=0 if ok else 4, source_ip=client_ip(request))

    # --------------------------------------------------------------- DICOM and delivery
    def received(self, study_uid: str, source: str) -> None:
        """A C-STORE'd instance: one record per (study, calling AE) per hour."""
        key = (study_uid, source)
        now = time.monotonic()
        with self._lock:
            last = self._ingests.get(key)
            if last is not None and now - last < INGEST_REPEAT_SECONDS:
                return
        self.log.ingest(source, study_uid, source=source, description="DICOM C-STORE")
        with self._lock:
            self._ingests[key] = now
            if len(self._ingests) > 10_000:  # bounded: forget the oldest half
                for k, _ in sorted(self._ingests.items(), key=lambda kv: kv[1])[:5_000]:
                    self._ingests.pop(k, None)

    def exported(self, study_uid: str, destination: str, ok: bool, count: int) -> None:
        self.log.export("lesionlens", study_uid, destination, outcome=0 if ok else 4,
                        description=f"{count} result object(s) " + ("delivered" if ok else "refused"))

    def started(self, settings: Any) -> None:
        self.log.application(True)
        net = (f"ae_title={settings.ae_title} dicom_port={settings.dicom_port} http_port={settings.http_port} "
               f"send_to={','.join(settings.send_to) or '-'} stow_url={settings.stow_url or '-'} "
               f"allow_ae={','.join(settings.allow_ae) or 'ANY'}")
        self.log.config_change("lesionlens", "network", network=True, description=net)

    def stopped(self) -> None:
        self.log.application(False)


__all__ = ["INGEST_REPEAT_SECONDS", "ServiceAudit", "client_ip"]

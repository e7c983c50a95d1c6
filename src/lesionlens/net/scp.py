"""The DICOM listener: C-ECHO and C-STORE SCP (pynetdicom) in a background thread.

The C-STORE handler is small (STYLE.md §7): it checks the calling AE and the back-pressure hook,
stores the instance durably through :class:`~lesionlens.net.storage.InstanceStore`, calls the
cheap ``on_stored`` callback (the service enqueues work there), and returns a status. Every
error becomes a DIMSE status with an ErrorComment and a log line; nothing is raised out of the
handler, so one bad instance never kills the association.

>>> with DicomListener("/data/incoming", DicomListenerConfig(port=0)) as listener:  # doctest: +SKIP
...     print(listener.port)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.net.address import validate_ae_title, validate_host, validate_port
from lesionlens.net.errors import InvalidInstanceError, InvalidUIDError, NetworkError, StorageError
from lesionlens.net.storage import InstanceStore, StoredInstance

log = logging.getLogger(__name__)

#: Transfer syntaxes accepted for storage: uncompressed first, then the common compressed ones
#: (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE). Instances are stored in the syntax they arrive in.
STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Multi-component Lossless
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Multi-component
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
)

# DIMSE statuses the C-STORE handler returns (PS3.4 B.2.3, PS3.7 C)
STATUS_SUCCESS = 0x0000
STATUS_NOT_AUTHORIZED = 0x0124  # Refused: not authorized (calling AE not allowed)
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (back-pressure)
STATUS_STORE_FAILED = 0xA701  # Refused: out of resources (could not write durably)
STATUS_NOT_QUEUED = 0xA702  # Refused: out of resources (stored, but could not be queued)
STATUS_SOP_CLASS_MISMATCH = 0xA900  # Error: data set does not match SOP class
STATUS_CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand (unparseable)
STATUS_INVALID_UID = 0xC001  # Error: cannot understand (UID missing or malformed)
STATUS_UID_MISMATCH = 0xC002  # Error: cannot understand (request and data set disagree)
STATUS_INTERNAL = 0xC0FF  # Error: cannot understand (unexpected failure, logged)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    # ErrorComment is LO: at most 64 characters, no backslash or control characters
    ds.ErrorComment = "".join(c if 32 <= ord(c) < 127 and c != "\\" else "?" for c in comment)[:64]
    return ds


@dataclass
class DicomListenerConfig:
    """Settings of a :class:`DicomListener`.

    ae_title: our AE title. host: the address to listen on (``"0.0.0.0"`` for all interfaces;
    loopback by default). port: TCP port (0 = any free port; see :attr:`DicomListener.port`).
    allow_ae: calling AE titles allowed to associate; empty = any (a warning is logged at start).
    max_pdu: largest PDU we receive, in bytes (0 = unlimited); larger PDUs mean fewer round trips.
    transfer_syntaxes: accepted for every storage SOP class (default :data:`STORAGE_TRANSFER_SYNTAXES`).
    max_associations: concurrent associations; more are rejected (transient, "try later").
    *_timeout_s: ACSE (association setup), DIMSE (between messages) and network (idle) timeouts.
    require_called_aet: reject associations whose Called AE title is not ``ae_title``.
    """

    ae_title: str = "LESIONLENS"
    host: str = "127.0.0.1"
    port: int = 11112
    allow_ae: list[str] = field(default_factory=list)
    max_pdu: int = 262_144
    transfer_syntaxes: tuple[str, ...] = STORAGE_TRANSFER_SYNTAXES
    max_associations: int = 10
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    require_called_aet: bool = False

    def __post_init__(self) -> None:
        self.ae_title = validate_ae_title(self.ae_title, field="listener ae_title")
        self.host = validate_host(self.host, field="listener host")
        self.port = validate_port(self.port, field="listener port", allow_zero=True)
        self.allow_ae = [validate_ae_title(a, field="allow_ae entry") for a in self.allow_ae]
        if self.max_pdu != 0 and not 8 <= self.max_pdu <= 2**32 - 1:
            raise ConfigError(f"max_pdu must be 0 (unlimited) or 8…4294967295 bytes, got {self.max_pdu}")
        if not self.transfer_syntaxes:
            raise ConfigError("transfer_syntaxes must list at least one transfer syntax")
        if self.max_associations < 1:
            raise ConfigError(f"max_associations must be ≥ 1, got {self.max_associations}")
        for name in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ListenerStats:
    """Counts since start: instances stored, refused (not allowed, back-pressure) and failed."""

    stored: int = 0
    refused: int = 0
    failed: int = 0


class StoreHandler:
    """The C-STORE handler shared by :class:`DicomListener` and C-GET (``scu.retrieve_study``).

    Call it with a pynetdicom ``EVT_C_STORE`` event; it returns a status (int or a status
    Dataset with ErrorComment) and never raises. ``source`` prefixes :attr:`StoredInstance.source`.
    """

    def __init__(self, store: InstanceStore, *, on_stored: Callable[[StoredInstance], None] | None = None,
                 accepting: Callable[[], bool] | None = None, allow_ae: list[str] | None = None,
                 source: str = "c-store"):
        self.store = store
        self._on_stored = on_stored
        self._accepting = accepting
        self._allow = set(allow_ae or ())
        self._source = source
        self._lock = threading.Lock()
        self._counts = {"stored": 0, "refused": 0, "failed": 0}

    @property
    def stats(self) -> ListenerStats:
        with self._lock:
            return ListenerStats(**self._counts)

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def __call__(self, event: Any) -> int | Dataset:
        try:
            return self._handle(event)
        except Exception as exc:  # the last line of defence: never raise into pynetdicom
            log.exception("C-STORE handler failed unexpectedly")
            self._count("failed")
            return _status(STATUS_INTERNAL, f"internal error: {type(exc).__name__}")

    def _handle(self, event: Any) -> int | Dataset:
        req = event.request
        assoc = event.assoc
        # the remote AE: the requestor for a listener, the acceptor for our own C-GET
        remote = assoc.acceptor if getattr(assoc, "is_requestor", False) else assoc.requestor
        calling = str(remote.ae_title).strip()
        sop = str(req.AffectedSOPInstanceUID or "")[:64]
        who = f"{calling}@{remote.address}"
        if self._allow and calling not in self._allow:
            log.warning("C-STORE %s from %s refused: calling AE %r is not in allow_ae", sop, who, calling)
            self._count("refused")
            return _status(STATUS_NOT_AUTHORIZED, f"calling AE {calling} not allowed")
        if self._accepting is not None and not self._accepting():
            log.warning("C-STORE %s from %s refused: not accepting (back-pressure)", sop, who)
            self._count("refused")
            return _status(STATUS_OUT_OF_RESOURCES, "Refused: out of resources (busy, retry later)")
        try:
            stored = self.store.put(req.DataSet.getvalue(), event.file_meta, source=f"{self._source}:{calling}")
        except InvalidUIDError as exc:
            return self._fail(STATUS_INVALID_UID, exc, sop, who)
        except InvalidInstanceError as exc:
            code = STATUS_SOP_CLASS_MISMATCH if exc.code == "sop-class-mismatch" else (
                STATUS_UID_MISMATCH if exc.code == "uid-mismatch" else STATUS_CANNOT_UNDERSTAND)
            return self._fail(code, exc, sop, who)
        except StorageError as exc:
            return self._fail(STATUS_STORE_FAILED, exc, sop, who)
        except LesionLensError as exc:
            return self._fail(STATUS_CANNOT_UNDERSTAND, exc, sop, who)
        if self._on_stored is not None:
            try:
                self._on_stored(stored)
            except Exception:
                # the file is safe on disk; ask the sender to retry (puts are idempotent)
                log.exception("C-STORE %s from %s: stored at %s but on_stored failed", sop, who, stored.path)
                self._count("failed")
                return _status(STATUS_NOT_QUEUED, "stored but not queued; retry later")
        self._count("stored")
        log.debug("C-STORE %s from %s stored at %s", stored.sop_instance_uid, who, stored.path)
        return STATUS_SUCCESS

    def _fail(self, code: int, exc: LesionLensError, sop: str, who: str) -> Dataset:
        log.warning("C-STORE %r from %s failed with 0x%04X: %s", sop, who, code, exc.reason)
        self._count("failed")
        return _status(code, exc.reason)


class DicomListener:
    """A C-ECHO + C-STORE SCP storing into an :class:`InstanceStore`, in a background thread.

    store: an InstanceStore or a folder for one. config: defaults to :class:`DicomListenerConfig()`. on_stored: called (in the association's thread)
    after each durable store; keep it cheap (enqueue). accepting: back-pressure hook; when it
    returns False, C-STOREs are refused with 0xA700 and nothing is stored.
    Use ``start()``/``stop()`` or ``with DicomListener(...) as listener:``.
    """

    def __init__(self, store: InstanceStore | str | Path, config: DicomListenerConfig | None = None,
                 *, on_stored: Callable[[StoredInstance], None] | None = None,
                 accepting: Callable[[], bool] | None = None):
        self.config = config or DicomListenerConfig()
        self.store = store if isinstance(store, InstanceStore) else InstanceStore(store)
        self._handler = StoreHandler(self.store, on_stored=on_stored, accepting=accepting,
                                     allow_ae=self.config.allow_ae, source="c-store")
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None

    # ----------------------------------------------------------------------------- lifecycle

    def _make_ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = cfg.max_pdu
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.require_calling_aet = list(cfg.allow_ae)
        ae.require_called_aet = cfg.require_called_aet
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, list(cfg.transfer_syntaxes))
        return ae

    def start(self) -> DicomListener:
        """Bind and start serving (returns self). Raises :class:`NetworkError` if it cannot bind."""
        if self._server is not None:
            return self
        cfg = self.config
        ae = self._make_ae()
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._handler),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        try:
            server = ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise NetworkError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
                               code="bind") from exc
        assert server is not None
        self._ae, self._server = ae, server
        if not cfg.allow_ae:
            log.warning("DICOM listener %s on %s:%d accepts ANY calling AE title (allow_ae is empty)",
                        cfg.ae_title, cfg.host, self.port)
        log.info("DICOM listener %s listening on %s:%d, storing into %s", cfg.ae_title, cfg.host, self.port,
                 self.store.root)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting associations, let running ones finish (up to ``timeout_s``), then abort."""
        server, ae = self._server, self._ae
        if server is None or ae is None:
            return
        self._server = self._ae = None
        server.shutdown()  # no new associations; closes the listening socket
        deadline = time.monotonic() + timeout_s
        while ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.02)
        ae.shutdown()  # aborts what is still running
        log.info("DICOM listener %s stopped", self.config.ae_title)

    def __enter__(self) -> DicomListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when the config asked for port 0)."""
        if self._server is None:
            raise NetworkError("the listener is not running", code="not-running")
        return int(self._server.server_address[1])

    @property
    def ae_title(self) -> str:
        return self.config.ae_title

    @property
    def stats(self) -> ListenerStats:
        return self._handler.stats

    # ----------------------------------------------------------------------------- handlers

    def _on_echo(self, event: Any) -> int:
        log.debug("C-ECHO from %s@%s", event.assoc.requestor.ae_title, event.assoc.requestor.address)
        return STATUS_SUCCESS

    def _on_rejected(self, event: Any) -> None:
        req = event.assoc.requestor
        calling = str(req.ae_title).strip()
        if self.config.allow_ae and calling not in self.config.allow_ae:
            why = f"calling AE {calling!r} is not in allow_ae"
        else:
            why = "see pynetdicom log (called AE title, no common context or too many associations)"
        log.warning("rejected association from %s@%s:%s: %s", calling, req.address, req.port, why)


__all__ = [
    "DicomListener",
    "DicomListenerConfig",
    "ListenerStats",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_INTERNAL",
    "STATUS_INVALID_UID",
    "STATUS_NOT_AUTHORIZED",
    "STATUS_NOT_QUEUED",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SOP_CLASS_MISMATCH",
    "STATUS_STORE_FAILED",
    "STATUS_SUCCESS",
    "STATUS_UID_MISMATCH",
    "STORAGE_TRANSFER_SYNTAXES",
    "StoreHandler",
]

"""Retrieve a study from a PACS: C-GET (we store on the same association) or C-MOVE."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from lesionlens.errors import ConfigError
from lesionlens.net.address import Peer, parse_peer, validate_ae_title
from lesionlens.net.assoc import (
    DEFAULT_CALLING_AE,
    DEFAULT_OPTIONS,
    MAX_CONTEXTS,
    PENDING,
    ScuOptions,
    association,
    make_ae,
    status_of,
)
from lesionlens.net.errors import DimseError
from lesionlens.net.scp import STORAGE_TRANSFER_SYNTAXES, StoreHandler
from lesionlens.net.storage import InstanceStore, StoredInstance, validate_uid

#: Storage SOP classes offered for C-GET (we take the SCP role for them on the association).
RETRIEVE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography - For Processing
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    "1.2.840.10008.5.1.4.1.1.66.1",  # Spatial Registration
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
)

#: Study-level attributes returned by :func:`find_studies` (besides the query keys).


@dataclass
class RetrieveReport:
    """The outcome of :func:`retrieve_study`.

    status: the final DIMSE status; completed/failed/warning: sub-operation counts the peer
    reported; stored: instances that landed in ``dest_dir`` (C-GET only — with C-MOVE they land
    in the destination listener's store).
    """

    peer: Peer
    study_uid: str
    method: str
    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    stored: list[StoredInstance] = field(default_factory=list)
    error_comment: str | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 0x0000 and self.failed == 0



def _collect(responses: Iterable[tuple[Dataset, Dataset | None]], report: RetrieveReport) -> None:
    for rsp, _ident in responses:
        status = status_of(rsp)
        if status is None:
            raise DimseError(f"{report.peer}: {report.method} got no response (timeout or abort)")
        report.completed = int(rsp.get("NumberOfCompletedSuboperations", report.completed) or 0)
        report.failed = int(rsp.get("NumberOfFailedSuboperations", report.failed) or 0)
        report.warning = int(rsp.get("NumberOfWarningSuboperations", report.warning) or 0)
        if status in PENDING:
            continue
        report.status = status
        report.error_comment = str(rsp.ErrorComment) if "ErrorComment" in rsp else None


def retrieve_study(peer: Peer | str, study_uid: str, dest_dir: str | Path | InstanceStore | None = None, *,
                   method: Literal["get", "move"] = "get", move_destination: str | None = None,
                   calling_ae: str = DEFAULT_CALLING_AE, options: ScuOptions = DEFAULT_OPTIONS,
                   sop_classes: Iterable[str] = RETRIEVE_SOP_CLASSES,
                   on_stored: Callable[[StoredInstance], None] | None = None) -> RetrieveReport:
    """Retrieve one study from ``peer``.

    method="get": C-GET; we act as storage SCP on the same association and the instances land
    in ``dest_dir`` (a folder or an :class:`InstanceStore`) — :attr:`RetrieveReport.stored`.
    ``sop_classes`` are the storage classes offered for that (default :data:`RETRIEVE_SOP_CLASSES`).
    method="move": C-MOVE to the AE title ``move_destination`` — a running
    :class:`~lesionlens.net.scp.DicomListener` the peer knows (host/port configured at the
    peer); the instances land in that listener's store, so ``dest_dir`` must be None.

    Raises :class:`AssociationError`, :class:`DimseError` when the peer reports the whole
    retrieve failed (e.g. 0xA801 unknown move destination); partial failures are in the report.
    """
    peer = parse_peer(peer)
    study_uid = validate_uid(study_uid, field="study_uid")
    t0 = time.perf_counter()
    report = RetrieveReport(peer, study_uid, method, status=-1)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    ae = make_ae(calling_ae, options)
    if method == "get":
        if dest_dir is None:
            raise ConfigError("retrieve_study(method='get') needs dest_dir")
        store = dest_dir if isinstance(dest_dir, InstanceStore) else InstanceStore(dest_dir)

        def collect(inst: StoredInstance) -> None:
            report.stored.append(inst)
            if on_stored is not None:
                on_stored(inst)

        handler = StoreHandler(store, on_stored=collect, source="c-get")
        classes = list(dict.fromkeys(sop_classes))[: MAX_CONTEXTS - 1]
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for sop_class in classes:
            ae.add_requested_context(sop_class, list(STORAGE_TRANSFER_SYNTAXES))
        roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
        with association(ae, peer, options, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handler)]) as assoc:
            _collect(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet), report)
    elif method == "move":
        if move_destination is None:
            raise ConfigError("retrieve_study(method='move') needs move_destination (an AE title)")
        if dest_dir is not None:
            raise ConfigError("with method='move' the instances land in the destination listener's store; "
                              "pass dest_dir=None")
        dest = validate_ae_title(move_destination, field="move_destination")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        with association(ae, peer, options) as assoc:
            _collect(assoc.send_c_move(query, dest, StudyRootQueryRetrieveInformationModelMove), report)
    else:
        raise ConfigError(f"method must be 'get' or 'move', got {method!r}")
    report.elapsed_s = time.perf_counter() - t0
    if report.status not in (0x0000, 0xFE00) and report.status & 0xF000 != 0xB000:
        raise DimseError(f"{peer}: C-{method.upper()} of study {study_uid} failed with status "
                         f"0x{report.status:04X}" + (f": {report.error_comment}" if report.error_comment else ""),
                         status=report.status)
    return report


__all__ = ["RETRIEVE_SOP_CLASSES", "RetrieveReport", "retrieve_study"]

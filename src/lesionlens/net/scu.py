"""DICOM SCU: send (C-STORE), verify (C-ECHO), query (C-FIND) and retrieve (C-GET / C-MOVE).

Every function takes a :class:`~lesionlens.net.address.Peer` (or ``"AET@HOST:PORT"``).
Association failures (peer down, rejected, dropped) raise :class:`AssociationError` after
``retries`` further attempts with exponential back-off; per-instance outcomes of a send are
reported in a :class:`SendReport`, never raised. Retrieval (C-GET / C-MOVE) lives in
:mod:`lesionlens.net.retrieve` and is re-exported here; the association plumbing
(:class:`ScuOptions`, retries) in :mod:`lesionlens.net.assoc`.

>>> report = send_files("ORTHANC@127.0.0.1:4242", paths)  # doctest: +SKIP
>>> report.ok_count, report.failed
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from lesionlens.dicom.io import read_dataset, read_header
from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.net.address import Peer, parse_peer
from lesionlens.net.assoc import (
    DEFAULT_CALLING_AE,
    DEFAULT_OPTIONS,
    MAX_CONTEXTS,
    PENDING,
    ScuOptions,
    associate,
    association,
    make_ae,
    status_of,
)
from lesionlens.net.errors import AssociationError, DimseError
from lesionlens.net.retrieve import RETRIEVE_SOP_CLASSES, RetrieveReport, retrieve_study
from lesionlens.net.storage import validate_uid

log = logging.getLogger(__name__)

_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}

#: Study-level attributes returned by :func:`find_studies` (besides the query keys).
STUDY_RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
    "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)


# --------------------------------------------------------------------------------------------
# reports


def _is_ok(status: int | None) -> bool:
    """Success (0x0000) or a storage warning (0xB000, 0xB006, 0xB007)."""
    return status is not None and (status == 0x0000 or status & 0xF000 == 0xB000)


@dataclass
class FileResult:
    """The outcome of sending one file: ``status`` is the peer's DIMSE status (None: not sent)."""

    path: Path
    sop_instance_uid: str | None = None
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return _is_ok(self.status)


@dataclass
class SendReport:
    """Per-file outcomes of :func:`send_files` (in the order given)."""

    peer: Peer
    results: list[FileResult] = field(default_factory=list)
    associations: int = 0
    elapsed_s: float = 0.0

    @property
    def ok_count(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self.results)

# --------------------------------------------------------------------------------------------
# C-ECHO


def echo(peer: Peer | str, *, calling_ae: str = DEFAULT_CALLING_AE, options: ScuOptions = DEFAULT_OPTIONS) -> int:
    """C-ECHO the peer; returns its status (0x0000 = success).

    Raises :class:`AssociationError` if no association, :class:`DimseError` if no response.
    """
    peer = parse_peer(peer)
    ae = make_ae(calling_ae, options)
    ae.add_requested_context(Verification)
    with association(ae, peer, options) as assoc:
        status = status_of(assoc.send_c_echo())
    if status is None:
        raise DimseError(f"{peer} sent no C-ECHO response (timeout or abort)")
    return status


# --------------------------------------------------------------------------------------------
# C-STORE


@dataclass
class _Item:
    result: FileResult
    sop_class: str = ""
    ts: str = ""


def _contexts_for(items: list[_Item]) -> list[tuple[str, list[str]]]:
    """Presentation contexts: per SOP class one uncompressed, plus one per compressed syntax."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for it in items:
        wanted[it.sop_class].add(it.ts)
    cxs: list[tuple[str, list[str]]] = []
    for sop_class, syntaxes in wanted.items():
        cxs.append((sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        for ts in sorted(syntaxes - _UNCOMPRESSED):
            cxs.append((sop_class, [ts]))
    return cxs


def _batches(items: list[_Item]) -> list[list[_Item]]:
    """Split the files so that no association needs more than 128 presentation contexts."""
    by_class: dict[str, list[_Item]] = defaultdict(list)
    for it in items:
        by_class[it.sop_class].append(it)
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    n = 0
    for group in by_class.values():
        need = len(_contexts_for(group))
        if current and n + need > MAX_CONTEXTS:
            batches.append(current)
            current, n = [], 0
        current.extend(group)
        n += need
    if current:
        batches.append(current)
    return batches


def _accepted(assoc: Association, sop_class: str, ts: str) -> bool:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == sop_class and cx.transfer_syntax and cx.transfer_syntax[0] == ts:
            return True
    return False


def _send_one(assoc: Association, it: _Item, msg_id: int) -> None:
    res = it.result
    res.status = res.error = None  # a resend after a lost association starts afresh
    try:
        ds = read_dataset(res.path)
    except LesionLensError as exc:
        res.error = exc.reason
        return
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ts not in _UNCOMPRESSED and not _accepted(assoc, it.sop_class, ts):
        # the peer does not take this compression: send it decompressed
        try:
            ds.decompress(generate_instance_uid=False)  # the same instance, only re-encoded
        except Exception as exc:  # codec errors of many types
            res.error = f"peer refused {ts} and decompression failed: {exc}"
            return
    try:
        rsp = assoc.send_c_store(ds, msg_id=msg_id)
    except (ValueError, AttributeError) as exc:  # no accepted context / cannot encode
        res.error = str(exc)
        return
    res.status = status_of(rsp)
    if res.status is None:
        res.error = "no response (timeout or association lost)"
    elif not res.ok:
        comment = rsp.get("ErrorComment")
        res.error = f"peer status 0x{res.status:04X}" + (f": {comment}" if comment else "")


def send_files(peer: Peer | str, files: Iterable[str | Path], *, calling_ae: str = DEFAULT_CALLING_AE,
               options: ScuOptions = DEFAULT_OPTIONS) -> SendReport:
    """C-STORE ``files`` to ``peer`` over one association (more only past 128 contexts or
    after a dropped association, which is re-established and the transfer resumed).

    Files that cannot be read, or that the peer refuses, are reported in
    :attr:`SendReport.results` with their status and reason. Raises :class:`AssociationError`
    (carrying the partial report as ``.report``) when the peer cannot be reached.
    """
    peer = parse_peer(peer)
    t0 = time.perf_counter()
    report = SendReport(peer)
    items: list[_Item] = []
    for f in files:
        res = FileResult(Path(f))
        report.results.append(res)
        try:
            hr = read_header(res.path, specific_tags=[0x00080016, 0x00080018])
            meta = hr.dataset.file_meta
            res.sop_instance_uid = str(hr.dataset.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID", ""))
            sop_class = str(hr.dataset.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", ""))
            validate_uid(sop_class, field="SOPClassUID")
            ts = str(meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian)
        except LesionLensError as exc:
            res.error = exc.reason
            continue
        items.append(_Item(res, sop_class, ts))
    ae = make_ae(calling_ae, options)
    msg_id = 0
    for batch in _batches(items):
        cxs = _contexts_for(batch)
        pending = list(batch)
        lost = 0
        while pending:
            ae.requested_contexts = []
            for sop_class, syntaxes in cxs:
                ae.add_requested_context(sop_class, syntaxes)
            try:
                assoc = associate(ae, peer, options)
            except AssociationError as exc:
                for it in pending:
                    it.result.error = it.result.error or "not sent: association failed"
                report.elapsed_s = time.perf_counter() - t0
                raise AssociationError(str(exc), report=report) from exc
            report.associations += 1
            try:
                while pending:
                    it = pending[0]
                    msg_id = msg_id % 65535 + 1
                    _send_one(assoc, it, msg_id)
                    if it.result.status is None and not assoc.is_established:
                        lost += 1
                        if lost > options.retries:
                            pending.pop(0)  # give up on this file, go on with the rest
                        log.warning("association with %s lost while sending %s; re-associating",
                                    peer, it.result.path)
                        break
                    pending.pop(0)
            finally:
                if assoc.is_established:
                    assoc.release()
    report.elapsed_s = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------------------------
# C-FIND


def _text(elem_value: Any) -> str:
    if elem_value is None:
        return ""
    if isinstance(elem_value, (list, tuple)) or type(elem_value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in elem_value)
    return str(elem_value)


def _query_dataset(level: str, keys: dict[str, Any], return_keys: Iterable[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for kw in return_keys:
        tag = tag_for_keyword(kw)
        if tag is None:
            raise ConfigError(f"return key {kw!r} is not a DICOM keyword")
        setattr(ds, kw, None if dictionary_VR(tag) in ("US", "UL") else "")
    for kw, value in keys.items():
        if tag_for_keyword(kw) is None:
            raise ConfigError(f"query key {kw!r} is not a DICOM keyword (e.g. PatientID, StudyDate)")
        if isinstance(value, (list, tuple)):
            value = "\\".join(str(v) for v in value)
        setattr(ds, kw, value)
    return ds


def find_studies(peer: Peer | str, *, calling_ae: str = DEFAULT_CALLING_AE, options: ScuOptions = DEFAULT_OPTIONS,
                 **keys: Any) -> list[dict[str, str]]:
    """C-FIND (Study Root, STUDY level) with matching ``keys`` (DICOM keywords, e.g.
    ``PatientID="123"``, ``StudyDate="20240101-20241231"``, ``StudyInstanceUID=uid``).

    Returns one dict per matching study: keyword → text (multi-values joined with ``\\``),
    for :data:`STUDY_RETURN_KEYS` and the query keys. Raises :class:`ConfigError` for an
    unknown keyword, :class:`AssociationError`, :class:`DimseError` (failure status).
    """
    peer = parse_peer(peer)
    query = _query_dataset("STUDY", keys, [k for k in STUDY_RETURN_KEYS if k not in keys])
    ae = make_ae(calling_ae, options)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    out: list[dict[str, str]] = []
    with association(ae, peer, options) as assoc:
        for rsp, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            status = status_of(rsp)
            if status is None:
                raise DimseError(f"{peer}: C-FIND got no response (timeout or abort)")
            if status in PENDING:
                if ident is not None:
                    out.append({e.keyword: _text(e.value) for e in ident if e.keyword and e.keyword != "QueryRetrieveLevel"})
                continue
            if status != 0x0000:
                raise DimseError(f"{peer}: C-FIND failed with status 0x{status:04X}"
                                 + (f": {rsp.ErrorComment}" if "ErrorComment" in rsp else ""), status=status)
    return out


__all__ = [
    "DEFAULT_CALLING_AE",
    "FileResult",
    "RETRIEVE_SOP_CLASSES",
    "RetrieveReport",
    "STUDY_RETURN_KEYS",
    "ScuOptions",
    "SendReport",
    "echo",
    "find_studies",
    "retrieve_study",
    "send_files",
]

"""Header scan: find every file under some inputs, classify it, group patient → study → series.

No pixel values are decoded here. Each file's header is read once through
:func:`lesionlens.dicom.io.read_header` (which stops before Pixel Data and checks its length).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pydicom
import pydicom.datadict
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from lesionlens.dicom.io import (
    DEFAULT_LIMITS,
    HeaderRead,
    ReadLimits,
    is_zip,
    iter_zip_members,
    read_header,
    read_source_bytes,
)
from lesionlens.dicom.types import (
    Catalog,
    InstanceKind,
    InstanceRecord,
    PatientRecord,
    Problem,
    SeriesRecord,
    StudyRecord,
)
from lesionlens.errors import DicomReadError, LesionLensError, NotDicomError, PixelDecodeError

Inputs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SKIP_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db"}


def iter_sources(inputs: Inputs, limits: ReadLimits = DEFAULT_LIMITS, problems: list[Problem] | None = None) -> Iterator[str]:
    """Every file source under ``inputs`` (files, folders walked recursively, zip members).

    A path that does not exist raises :class:`DicomReadError` (code ``not-found``) when it is the
    only input, and is recorded in ``problems`` otherwise. Hidden files and DICOMDIR are skipped.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            err = DicomReadError("path does not exist", path=path, code="not-found")
            if len(paths) == 1 or problems is None:
                raise err
            problems.append(Problem.from_error(err))
            continue
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith(".") or name in _SKIP_NAMES:
                        continue
                    yield from _expand_file(Path(root) / name, limits, problems)
        else:
            yield from _expand_file(path, limits, problems)


def _expand_file(path: Path, limits: ReadLimits, problems: list[Problem] | None) -> Iterator[str]:
    if is_zip(path):
        try:
            yield from iter_zip_members(path, limits)
        except LesionLensError as exc:
            if problems is None:
                raise
            problems.append(Problem.from_error(exc))
    else:
        yield str(path)


def _str(ds: Dataset, kw: str) -> str:
    v = ds.get(kw)
    return "" if v is None else str(v).strip()


def _int_or_none(ds: Dataset, kw: str) -> int | None:
    try:
        v = ds.get(kw)
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError):
        return None


def _floats(ds: Dataset, kw: str, n: int) -> tuple[float, ...] | None:
    try:
        v = ds.get(kw)
        if v is None:
            return None
        vals = tuple(float(x) for x in (v if hasattr(v, "__len__") and not isinstance(v, str) else [v]))
        return vals if len(vals) == n else None
    except (TypeError, ValueError):
        return None


def _first_item(ds: Dataset, *path: str) -> Dataset | None:
    cur: Dataset | None = ds
    for kw in path:
        if cur is None:
            return None
        seq = cur.get(kw)
        cur = seq[0] if seq else None
    return cur


def pixel_spacing_of(ds: Dataset) -> tuple[float, float] | None:
    """(row spacing, column spacing) mm: PixelSpacing, then the shared functional groups'
    PixelMeasuresSequence, then ImagerPixelSpacing (projection radiography), then the first
    ultrasound region's PhysicalDelta (cm → mm)."""
    ps = _floats(ds, "PixelSpacing", 2)
    if ps is None:
        item = _first_item(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence") or _first_item(
            ds, "PerFrameFunctionalGroupsSequence", "PixelMeasuresSequence"
        )
        if item is not None:
            ps = _floats(item, "PixelSpacing", 2)
    if ps is None:
        ps = _floats(ds, "ImagerPixelSpacing", 2)
    if ps is None:
        region = _first_item(ds, "SequenceOfUltrasoundRegions")
        if region is not None and int(region.get("PhysicalUnitsXDirection", 0) or 0) == 3:
            dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
            if dx and dy:
                ps = (abs(float(dy)) * 10.0, abs(float(dx)) * 10.0)
    if ps is not None and (ps[0] <= 0 or ps[1] <= 0):
        return None
    return ps  # type: ignore[return-value]


def record_from_header(ds: Dataset, source: str, has_pixels: bool) -> InstanceRecord:
    """An :class:`InstanceRecord` from a header-only dataset (geometry of frame 1 for enhanced)."""
    ipp = _floats(ds, "ImagePositionPatient", 3)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    thickness = _floats(ds, "SliceThickness", 1)
    if ipp is None:
        item = _first_item(ds, "PerFrameFunctionalGroupsSequence", "PlanePositionSequence") or _first_item(
            ds, "SharedFunctionalGroupsSequence", "PlanePositionSequence"
        )
        ipp = _floats(item, "ImagePositionPatient", 3) if item is not None else None
    if iop is None:
        item = _first_item(ds, "SharedFunctionalGroupsSequence", "PlaneOrientationSequence") or _first_item(
            ds, "PerFrameFunctionalGroupsSequence", "PlaneOrientationSequence"
        )
        iop = _floats(item, "ImageOrientationPatient", 6) if item is not None else None
    if thickness is None:
        item = _first_item(ds, "SharedFunctionalGroupsSequence", "PixelMeasuresSequence")
        thickness = _floats(item, "SliceThickness", 1) if item is not None else None
    image_type = ds.get("ImageType")
    if image_type is None:
        image_type = ()
    elif isinstance(image_type, str):
        image_type = (image_type,)
    ts = ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else ""
    return InstanceRecord(
        source=source,
        kind=InstanceKind.IMAGE if has_pixels else InstanceKind.NON_IMAGE,
        sop_class_uid=_str(ds, "SOPClassUID"),
        sop_instance_uid=_str(ds, "SOPInstanceUID"),
        study_instance_uid=_str(ds, "StudyInstanceUID"),
        series_instance_uid=_str(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=_str(ds, "FrameOfReferenceUID"),
        patient_id=_str(ds, "PatientID"),
        patient_name=_str(ds, "PatientName"),
        modality=_str(ds, "Modality").upper(),
        study_description=_str(ds, "StudyDescription"),
        study_date=_str(ds, "StudyDate"),
        series_description=_str(ds, "SeriesDescription"),
        series_number=_int_or_none(ds, "SeriesNumber"),
        instance_number=_int_or_none(ds, "InstanceNumber"),
        image_type=tuple(str(x).strip().upper() for x in image_type),
        transfer_syntax_uid=str(ts),
        rows=_int_or_none(ds, "Rows") or 0,
        columns=_int_or_none(ds, "Columns") or 0,
        frames=(_int_or_none(ds, "NumberOfFrames") or 1) if has_pixels else 0,
        samples_per_pixel=_int_or_none(ds, "SamplesPerPixel") or 1,
        photometric_interpretation=_str(ds, "PhotometricInterpretation").upper(),
        bits_allocated=_int_or_none(ds, "BitsAllocated") or 0,
        bits_stored=_int_or_none(ds, "BitsStored") or 0,
        pixel_representation=_int_or_none(ds, "PixelRepresentation") or 0,
        image_position_patient=ipp,  # type: ignore[arg-type]
        image_orientation_patient=iop,  # type: ignore[arg-type]
        pixel_spacing=pixel_spacing_of(ds),
        slice_thickness=thickness[0] if thickness else None,
    )


class _Slow(Exception):
    """Raised by the raw-value readers when a value needs pydicom's full conversion."""


_NUMBER = re.compile(rb"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_INTEGER = re.compile(rb"\s*[+-]?\d+\s*")
_FAST_BAILS = frozenset(  # present → the slow builder (values nested in sequences)
    int(pydicom.datadict.tag_for_keyword(k) or 0)
    for k in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "SequenceOfUltrasoundRegions")
)


class _Raw:
    """Typed reads of a freshly parsed dataset's raw element bytes, without pydicom's value
    conversion. Only plain printable-ASCII, single-valued text and well-formed numbers are
    handled; anything else raises :class:`_Slow` so the caller uses the converting builder."""

    __slots__ = ("elems", "little")

    def __init__(self, ds: Dataset):
        elems = getattr(ds, "_dict", None)
        if not isinstance(elems, dict) or getattr(ds, "original_encoding", (None, True))[1] is not True:
            raise _Slow
        if not _FAST_BAILS.isdisjoint(elems):
            raise _Slow
        self.elems = elems

    def _bytes(self, tag: int, vrs: tuple[str, ...]) -> bytes | None:
        e = self.elems.get(tag)
        if e is None:
            return None
        if not isinstance(e, RawDataElement) or e.VR not in vrs or not isinstance(e.value, bytes):
            raise _Slow  # already converted, unexpected VR, or deferred value
        return e.value

    def text(self, tag: int, vr: str) -> str:
        """A single-valued printable-ASCII text value, stripped (as ``str(value).strip()``)."""
        b = self._bytes(tag, (vr, None))  # type: ignore[arg-type]
        if b is None:
            return ""
        b = b.rstrip(b"\x00 ")
        if b"\\" in b or not (b.isascii() and b.decode().isprintable()):
            raise _Slow
        return b.decode().strip()

    def texts(self, tag: int, vr: str) -> tuple[str, ...] | None:
        """A multi-valued printable-ASCII text value, each value stripped."""
        b = self._bytes(tag, (vr, None))  # type: ignore[arg-type]
        if b is None:
            return None
        b = b.rstrip(b"\x00 ")
        if not b or not (b.isascii() and b.decode().isprintable()):
            raise _Slow
        return tuple(x.strip() for x in b.decode().split("\\"))

    def integer(self, tag: int) -> int | None:
        """An IS value (None when absent or empty)."""
        b = self._bytes(tag, ("IS", None))  # type: ignore[arg-type]
        if b is None or not b.strip(b"\x00 "):
            return None
        b = b.rstrip(b"\x00")
        if not _INTEGER.fullmatch(b):
            raise _Slow
        return int(b)

    def ushort(self, tag: int) -> int | None:
        b = self._bytes(tag, ("US", None))  # type: ignore[arg-type]
        if b is None:
            return None
        if len(b) != 2:
            raise _Slow
        return b[0] | b[1] << 8

    def floats(self, tag: int, n: int) -> tuple[float, ...] | None:
        """A DS value of ``n`` numbers (None when absent, or when it has another count)."""
        b = self._bytes(tag, ("DS", None))  # type: ignore[arg-type]
        if b is None:
            return None
        b = b.rstrip(b"\x00")
        parts = b.split(b"\\")
        if not b.strip() or not all(_NUMBER.fullmatch(x) for x in parts):
            raise _Slow
        return tuple(float(x) for x in parts) if len(parts) == n else None


def _tag(keyword: str) -> int:
    return int(pydicom.datadict.tag_for_keyword(keyword) or 0)


_T = {k: _tag(k) for k in (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID",
    "PatientName", "Modality", "StudyDescription", "StudyDate", "SeriesDescription", "SeriesNumber",
    "InstanceNumber", "ImageType", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation", "ImagePositionPatient",
    "ImageOrientationPatient", "SliceThickness", "PixelSpacing", "ImagerPixelSpacing",
)}


def _record_from_raw(ds: Dataset, source: str, has_pixels: bool) -> InstanceRecord:
    """:func:`record_from_header` for the common case, reading raw element bytes (about 10×
    faster than converting values). Raises :class:`_Slow` when the slow builder is needed."""
    r, t = _Raw(ds), _T
    ps = r.floats(t["PixelSpacing"], 2)
    if ps is None:
        ps = r.floats(t["ImagerPixelSpacing"], 2)
    if ps is not None and (ps[0] <= 0 or ps[1] <= 0):
        ps = None
    thickness = r.floats(t["SliceThickness"], 1)
    image_type = r.texts(t["ImageType"], "CS") or ()
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID", "") if meta is not None else ""
    return InstanceRecord(
        source=source,
        kind=InstanceKind.IMAGE if has_pixels else InstanceKind.NON_IMAGE,
        sop_class_uid=r.text(t["SOPClassUID"], "UI"),
        sop_instance_uid=r.text(t["SOPInstanceUID"], "UI"),
        study_instance_uid=r.text(t["StudyInstanceUID"], "UI"),
        series_instance_uid=r.text(t["SeriesInstanceUID"], "UI"),
        frame_of_reference_uid=r.text(t["FrameOfReferenceUID"], "UI"),
        patient_id=r.text(t["PatientID"], "LO"),
        patient_name=r.text(t["PatientName"], "PN"),
        modality=r.text(t["Modality"], "CS").upper(),
        study_description=r.text(t["StudyDescription"], "LO"),
        study_date=r.text(t["StudyDate"], "DA"),
        series_description=r.text(t["SeriesDescription"], "LO"),
        series_number=r.integer(t["SeriesNumber"]),
        instance_number=r.integer(t["InstanceNumber"]),
        image_type=tuple(x.upper() for x in image_type),
        transfer_syntax_uid=str(ts),
        rows=r.ushort(t["Rows"]) or 0,
        columns=r.ushort(t["Columns"]) or 0,
        frames=(r.integer(t["NumberOfFrames"]) or 1) if has_pixels else 0,
        samples_per_pixel=r.ushort(t["SamplesPerPixel"]) or 1,
        photometric_interpretation=r.text(t["PhotometricInterpretation"], "CS").upper(),
        bits_allocated=r.ushort(t["BitsAllocated"]) or 0,
        bits_stored=r.ushort(t["BitsStored"]) or 0,
        pixel_representation=r.ushort(t["PixelRepresentation"]) or 0,
        image_position_patient=r.floats(t["ImagePositionPatient"], 3),  # type: ignore[arg-type]
        image_orientation_patient=r.floats(t["ImageOrientationPatient"], 6),  # type: ignore[arg-type]
        pixel_spacing=ps,  # type: ignore[arg-type]
        slice_thickness=thickness[0] if thickness else None,
    )


def fast_record(ds: Dataset, source: str, has_pixels: bool) -> InstanceRecord:
    """:func:`record_from_header` of a freshly parsed header, from raw element bytes where the
    values are plain (the same record, cheaper), else through pydicom's value conversion."""
    try:
        return _record_from_raw(ds, source, has_pixels)
    except _Slow:
        return record_from_header(ds, source, has_pixels)


#: Elements a header scan parses (everything else is skipped): identity, geometry, pixel
#: description, rescale, display (VOI) and the enhanced functional groups.
SCAN_KEYWORDS = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate", "AccessionNumber",
    "Modality", "Manufacturer", "InstitutionName", "StudyDescription", "SeriesDescription",
    "ManufacturerModelName", "PatientName", "PatientID", "PatientSex", "PatientAge", "BodyPartExamined",
    "SliceThickness", "KVP", "SpacingBetweenSlices", "ConvolutionKernel", "ContrastBolusAgent", "SeriesDate",
    "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "FrameOfReferenceUID", "SamplesPerPixel", "PhotometricInterpretation",
    "NumberOfFrames", "Rows", "Columns", "PixelSpacing", "ImagerPixelSpacing", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PlanarConfiguration", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence", "VOILUTSequence",
    "SequenceOfUltrasoundRegions", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "PixelPaddingValue", "FloatPixelPaddingValue",
)
SCAN_TAGS = [int(pydicom.datadict.tag_for_keyword(k) or 0) for k in SCAN_KEYWORDS]


def scan_source(source: str, limits: ReadLimits = DEFAULT_LIMITS) -> InstanceRecord:
    """Classify one source (see :func:`scan_source_header`); never raises."""
    return scan_source_header(source, limits)[0]


def scan_source_header(source: str, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[InstanceRecord, HeaderRead | None]:
    """Classify one source: IMAGE, NON_IMAGE, NOT_DICOM or UNREADABLE (never raises).

    A file whose header parses but whose pixel data is cut short stays an IMAGE record (so it
    shows up in its series) with an error problem; loading skips it. Also returns the header
    read (the :data:`SCAN_KEYWORDS` elements; no buffer kept) for readable files.
    """
    try:
        hr = read_header(source, limits=limits, specific_tags=SCAN_TAGS)
        hr.buffer = None
    except NotDicomError as exc:
        return InstanceRecord(source=source, kind=InstanceKind.NOT_DICOM, reason=exc.reason, problems=[]), None
    except LesionLensError as exc:
        rec = InstanceRecord(source=source, kind=InstanceKind.UNREADABLE, reason=exc.reason)
        rec.problems.append(Problem.from_error(exc, path=source))
        # keep the series identity when the header itself was readable
        return _salvage(rec, source, exc, limits), None
    except Exception as exc:  # pragma: no cover - last resort, a reader bug must not stop a scan
        rec = InstanceRecord(source=source, kind=InstanceKind.UNREADABLE, reason=f"{type(exc).__name__}: {exc}")
        rec.problems.append(Problem("error", "dicom-read", rec.reason, source))
        return rec, None
    ds = hr.dataset
    if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
        return InstanceRecord(source=source, kind=InstanceKind.NOT_DICOM, reason="not DICOM: no SOP Class or Series UID"), None
    rec = fast_record(ds, source, has_pixels=hr.pixel is not None)
    if hr.pixel is None and _is_image_sop_class(rec.sop_class_uid):
        err = PixelDecodeError("image object without Pixel Data", path=source, code="no-pixel-data")
        rec.kind = InstanceKind.UNREADABLE
        rec.reason = err.reason
        rec.problems.append(Problem.from_error(err))
    return rec, hr


def _is_image_sop_class(uid: str) -> bool:
    try:
        return "Image Storage" in UID(uid).name
    except Exception:  # pragma: no cover - malformed UID strings
        return False


def _salvage(rec: InstanceRecord, source: str, exc: LesionLensError, limits: ReadLimits) -> InstanceRecord:
    if getattr(exc, "code", "") != "truncated" or not exc.reason.startswith(_PIXEL_KEYWORDS):
        return rec
    try:  # only the pixel data is cut short: the header before it is whole
        data = read_source_bytes(source, limits)
        with io.BytesIO(data) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        if "SeriesInstanceUID" not in ds or "Rows" not in ds:
            return rec
        good = record_from_header(ds, source, has_pixels=True)
    except Exception:
        return rec
    good.problems = rec.problems
    good.reason = rec.reason
    return good


def build_catalog(records: Iterable[InstanceRecord], problems: Iterable[Problem] = ()) -> Catalog:
    """Group records patient → study → series; NOT_DICOM/UNREADABLE go to ``skipped``.

    Instance problems are copied onto their series; skipped files' problems onto the catalog.
    Order: patients/studies by first appearance, series by series number then UID.
    """
    cat = Catalog(problems=list(problems))
    patients: dict[str, PatientRecord] = {}
    studies: dict[str, StudyRecord] = {}
    series: dict[tuple[str, str], SeriesRecord] = {}
    for rec in records:
        if rec.kind in (InstanceKind.NOT_DICOM, InstanceKind.UNREADABLE):
            cat.skipped.append(rec)
            if rec.kind is InstanceKind.UNREADABLE:
                cat.problems.extend(rec.problems)
            continue
        pkey = rec.patient_id or rec.patient_name or "(no patient id)"
        patient = patients.get(pkey)
        if patient is None:
            patient = patients[pkey] = PatientRecord(patient_id=rec.patient_id, patient_name=rec.patient_name)
            cat.patients.append(patient)
        skey = rec.study_instance_uid or "(no study uid)"
        study = studies.get(skey)
        if study is None:
            study = studies[skey] = StudyRecord(
                study_instance_uid=rec.study_instance_uid,
                description=rec.study_description,
                date=rec.study_date,
                patient_id=rec.patient_id,
                patient_name=rec.patient_name,
            )
            patient.studies.append(study)
        sekey = (skey, rec.series_instance_uid or "(no series uid)")
        se = series.get(sekey)
        if se is None:
            se = series[sekey] = SeriesRecord(
                series_instance_uid=rec.series_instance_uid,
                modality=rec.modality,
                description=rec.series_description,
                series_number=rec.series_number,
            )
            study.series.append(se)
        se.instances.append(rec)
        se.problems.extend(rec.problems)
    for st in studies.values():
        st.series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.series_instance_uid))
    return cat


def scan(inputs: Inputs, *, limits: ReadLimits | None = None) -> Catalog:
    """Scan files/folders/zips (or a list of them) into a :class:`Catalog` without decoding pixels."""
    return scan_with_headers(inputs, limits=limits)[0]


def scan_with_headers(inputs: Inputs, *, limits: ReadLimits | None = None) -> tuple[Catalog, dict[str, HeaderRead]]:
    """:func:`scan`, also returning each readable source's header (so loading need not re-parse)."""
    limits = limits or DEFAULT_LIMITS
    problems: list[Problem] = []
    records: list[InstanceRecord] = []
    headers: dict[str, HeaderRead] = {}
    for src in iter_sources(inputs, limits, problems):
        rec, hr = scan_source_header(src, limits)
        records.append(rec)
        if hr is not None:
            headers[src] = hr
    return build_catalog(records, problems), headers


__all__ = ["Inputs", "build_catalog", "iter_sources", "pixel_spacing_of", "record_from_header", "scan", "scan_source", "scan_source_header", "scan_with_headers"]

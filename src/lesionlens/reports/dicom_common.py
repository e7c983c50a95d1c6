"""What the DICOM writers (SR, SEG, GSPS) share: the source headers, who made the output, its
UIDs, series numbers and descriptions, and the codes for what was found where.

Source headers are read once per series (:func:`read_sources`) through
:func:`lesionlens.dicom.io.read_dataset` without pixel data — highdicom needs only the headers —
and handed to every writer as ``sources``: one dataset per volume slice ``k`` (the same object
repeated for the frames of a multi-frame file).

Identity: every object names LesionLens as manufacturer, ``"LesionLens <model name>"`` as model,
``(lesionlens version, model version)`` as software versions and the first 16 hex digits of the
model's sha256 as device serial number; series descriptions carry the model version and
"NOT FOR CLINICAL USE".

UIDs are deterministic (:func:`~lesionlens.dicom.write.uid_from_seed`): the series UID from the
output kind, the source series and the model; the SOP instance UID from those plus the findings'
tracking UIDs — re-running the same model on the same series gives the same UIDs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from lesionlens import __version__
from lesionlens.dicom.io import read_dataset
from lesionlens.dicom.types import Volume
from lesionlens.dicom.write import uid_from_seed
from lesionlens.errors import LesionLensError, OutputError
from lesionlens.pipeline.types import Lesion, SeriesResult, StudyResult

MANUFACTURER = "LesionLens"
NOT_CLINICAL = "NOT FOR CLINICAL USE"

#: Series numbers of the outputs: base + the source series number (any int is valid; these
#: keep LesionLens outputs together at the end of a viewer's series list).
SERIES_NUMBER_BASE = {"SR": 7000, "SEG": 8000, "PR": 9000}

# Finding types by detector label (SNOMED CT; "Nodule" and "Mass" are in CID 6102/6104/7151).
_FINDING_TYPES: dict[str, Code] = {"nodule": codes.SCT.Nodule, "mass": codes.SCT.Mass}
LESION = codes.SCT.Lesion  # SCT 52988006, for any other label

#: Nodule composition (solidness). SNOMED CT has no concept for these three in the DICOM
#: content mapping resource (PS3.16) nor in pydicom's code dictionaries; RadLex — a coding
#: scheme DICOM recognises (designator "RADLEX") — has them: RID46010 "solidness descriptor"
#: with RID5741 "solid", RID46011 "partially solid", RID46016 "non-solid" (ground glass), as
#: used by the ACR/RSNA pulmonary nodule common data elements.
SOLIDNESS = CodedConcept("RID46010", "RADLEX", "Solidness descriptor")
NODULE_TYPES: dict[str, CodedConcept] = {
    "solid": CodedConcept("RID5741", "RADLEX", "Solid"),
    "part-solid": CodedConcept("RID46011", "RADLEX", "Partially solid"),
    "ground-glass": CodedConcept("RID46016", "RADLEX", "Non-solid"),
}

# Procedures (CID 100 is extensible): LOINC 24627-2 "CT Chest" for CT; otherwise SNOMED CT
# 363679005 "Imaging procedure".
CT_CHEST = CodedConcept("24627-2", "LN", "CT Chest")


@dataclass(frozen=True)
class Identity:
    """Who made an output: the device (LesionLens) and the algorithm (the model package)."""

    model_name: str
    model_version: str
    model_sha256: str
    software_versions: tuple[str, str]
    manufacturer_model_name: str
    device_serial_number: str
    device_uid: str

    def series_description(self, kind: str) -> str:
        """``"LesionLens <kind> <model version> NOT FOR CLINICAL USE"`` (fits LO, 64 chars)."""
        head = f"{MANUFACTURER} {kind} "
        tail = f" {NOT_CLINICAL}"
        return head + self.model_version[: 64 - len(head) - len(tail)] + tail


def identity(result: StudyResult) -> Identity:
    """The identity of the run from ``result.model`` (name, version, sha256; missing → "unknown")."""
    name = str(result.model.get("name") or "unknown")
    version = str(result.model.get("version") or "unknown")
    sha = str(result.model.get("sha256") or "")
    return Identity(
        model_name=name,
        model_version=version,
        model_sha256=sha,
        software_versions=(__version__, version),
        manufacturer_model_name=f"{MANUFACTURER} {name}"[:64],
        device_serial_number=sha[:16] or "unknown",
        device_uid=str(uid_from_seed("lesionlens-device", name, version, sha)),
    )


def output_uids(kind: str, result: StudyResult, series: SeriesResult) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of one output, deterministic from the inputs."""
    m = result.model
    key = (kind, series.volume.series_instance_uid, m.get("name", ""), m.get("version", ""), m.get("sha256", ""))
    series_uid = uid_from_seed("lesionlens-output-series", *key)
    findings = sorted(les.tracking_uid or les.tracking_id for les in series.lesions)
    sop_uid = uid_from_seed("lesionlens-output-instance", *key, *findings)
    return str(series_uid), str(sop_uid)


def series_number(kind: str, sources: Sequence[Dataset]) -> int:
    """The output's series number: ``SERIES_NUMBER_BASE[kind]`` + the source series number."""
    try:
        src = int(sources[0].get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        src = 0
    return SERIES_NUMBER_BASE[kind] + max(src, 0)


def output_attributes(kind: str, label: str, result: StudyResult, series: SeriesResult,
                      sources: Sequence[Dataset]) -> dict[str, Any]:
    """The series/instance/device keyword arguments every highdicom output constructor takes.

    kind: the UID and series-number key ("SR", "SEG", "PR"); label: the word in the series
    description ("SR", "SEG", "GSPS")."""
    ident = identity(result)
    series_uid, sop_uid = output_uids(kind, result, series)
    return {
        "series_instance_uid": series_uid,
        "series_number": series_number(kind, sources),
        "sop_instance_uid": sop_uid,
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": ident.manufacturer_model_name,
        "software_versions": list(ident.software_versions),  # a list: pydicom warns on tuples for LO
        "device_serial_number": ident.device_serial_number,
        "series_description": ident.series_description(label),
    }


# --------------------------------------------------------------------------------------------
# source headers


def read_sources(series: SeriesResult | Volume) -> list[Dataset]:
    """The header (no pixel data) of the file behind every slice ``k`` of the series' volume.

    Each file is read once; the frames of a multi-frame file share one dataset. Raises
    :class:`OutputError` naming the file when a source cannot be read or is not DICOM (a PNG
    input has nothing a DICOM output could reference).
    """
    vol = series.volume if isinstance(series, SeriesResult) else series
    if not vol.sources:
        raise OutputError("the series has no source files: DICOM outputs need the DICOM images they describe")
    cache: dict[str, Dataset] = {}
    out: list[Dataset] = []
    for src in vol.sources:
        ds = cache.get(src)
        if ds is None:
            try:
                ds = read_dataset(src, stop_before_pixels=True)
            except LesionLensError as exc:
                raise OutputError(f"cannot read the source image header for DICOM outputs: {exc.reason}",
                                  path=src) from exc
            cache[src] = ds
        out.append(ds)
    return out


def checked_sources(series: SeriesResult, sources: Sequence[Dataset] | None) -> list[Dataset]:
    """``sources`` (read when None), checked to match the volume slice for slice."""
    vol = series.volume
    srcs = list(sources) if sources is not None else read_sources(series)
    k = vol.pixels.shape[0]
    if len(srcs) != k:
        raise OutputError(f"{len(srcs)} source headers given for a volume of {k} slices")
    for i, ds in enumerate(srcs):
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds or "StudyInstanceUID" not in ds:
            raise OutputError("source header lacks SOPInstanceUID/SOPClassUID/StudyInstanceUID",
                              path=vol.sources[i] if i < len(vol.sources) else None)
        if i < len(vol.sop_instance_uids) and vol.sop_instance_uids[i] and ds.SOPInstanceUID != vol.sop_instance_uids[i]:
            raise OutputError(f"source header of slice {i} is SOP instance {ds.SOPInstanceUID}, "
                              f"but the volume has {vol.sop_instance_uids[i]} there")
    return srcs


_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


def with_patient_study(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` with the type 2 patient/study attributes highdicom reads
    present (empty when the source lacks them), so a sparse header still yields an output."""
    missing = [kw for kw in _TYPE2 if kw not in ds]
    if not missing:
        return ds
    out = Dataset()
    out.update(ds)  # a new element dict: the source dataset is left as it was
    for kw in missing:
        setattr(out, kw, "")
    return out


def unique(sources: Sequence[Dataset]) -> list[Dataset]:
    """Distinct datasets (by SOP instance UID) in slice order."""
    seen: set[str] = set()
    out: list[Dataset] = []
    for ds in sources:
        if ds.SOPInstanceUID not in seen:
            seen.add(ds.SOPInstanceUID)
            out.append(ds)
    return out


def is_multiframe(ds: Dataset) -> bool:
    try:
        return int(ds.get("NumberOfFrames") or 1) > 1
    except (TypeError, ValueError):
        return False


def slice_ref(volume: Volume, sources: Sequence[Dataset], k: int) -> tuple[Dataset, int | None]:
    """(dataset, frame number or None for single-frame) of volume slice ``k``."""
    if not 0 <= k < len(sources):
        raise OutputError(f"slice index {k} is outside the volume (0…{len(sources) - 1})")
    ds = sources[k]
    if not is_multiframe(ds):
        return ds, None
    frames = volume.frame_numbers
    return ds, int(frames[k]) if k < len(frames) else k + 1


# --------------------------------------------------------------------------------------------
# what, where


def finding_type(lesion: Lesion) -> Code:
    """SNOMED CT code of what the lesion is, from its detector label."""
    return _FINDING_TYPES.get(lesion.label.strip().lower(), LESION)


def anatomy(volume: Volume) -> Code | None:
    """The organ the findings are in: Lung for chest CT/radiographs, Breast for mammograms."""
    modality = volume.modality.upper()
    if modality == "MG":
        return codes.SCT.Breast
    if modality in ("CT", "CR", "DX"):
        return codes.SCT.Lung
    return None


def laterality(lesion: Lesion) -> Code | None:
    side = lesion.location.side if lesion.location is not None else None
    return {"right": codes.SCT.Right, "left": codes.SCT.Left}.get(side or "")


def is_ct(volume: Volume) -> bool:
    return volume.modality.upper() == "CT"


__all__ = [
    "CT_CHEST",
    "Identity",
    "MANUFACTURER",
    "NODULE_TYPES",
    "NOT_CLINICAL",
    "SERIES_NUMBER_BASE",
    "SOLIDNESS",
    "anatomy",
    "checked_sources",
    "finding_type",
    "identity",
    "is_ct",
    "is_multiframe",
    "laterality",
    "output_uids",
    "read_sources",
    "series_number",
    "slice_ref",
    "unique",
    "with_patient_study",
]

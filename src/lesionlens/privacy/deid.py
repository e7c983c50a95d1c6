"""DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, on one dataset.

``Deidentifier(config).deidentify_dataset(ds)`` applies Table E.1-1 (see
:mod:`lesionlens.privacy.deid_table`) to every attribute, at any sequence depth, with the options
of ``config``, and returns the (in-place) de-identified dataset — or :class:`Quarantined` when the
object may carry burned-in text and no mask regions were configured.

Action semantics (documented in docs/privacy-deid.md):

* ``X`` remove; ``Z`` empty value (Patient ID / Patient's Name get the keyed pseudonym; a sequence
  gets zero items); ``U`` keyed-HMAC UID; ``K`` keep (sequences are cleaned inside).
* ``D`` a dummy of the element's VR (``ANONYMIZED``, ``19000101``, ``0``, ...). On a sequence, ``D``
  keeps the items and cleans them with the same table (the nested identifying attributes are rows
  of the table themselves); identity code sequences (Person Identification Code Sequence,
  Institution Code Sequence) get one dummy code item instead. Inside Content Sequence a TEXT value
  becomes ``ANONYMIZED``.
* Compound actions keep the attribute, with the weakest non-removing choice (``X/Z`` → ``Z``,
  ``Z/D``, ``X/D``, ``X/Z/D`` → ``D``, or ``Z`` when the value is already empty; ``X/Z/U*`` → the
  sequence kept and cleaned): without the IOD's attribute types this is the choice that keeps
  every object conformant, and it carries no identifying value.
* ``X`` on an attribute that is Type 1 in every module that has it (Presentation Creation
  Date/Time of the presentation states: :data:`_TYPE1_WHEREVER_PRESENT`) → ``D`` instead, so a
  de-identified GSPS stays conformant.
* ``C`` dates: shifted by the patient's keyed shift (times kept); text: :func:`clean_text`;
  sequences: cleaned inside; anything else: removed.
* Attributes not in the table are kept; private attributes are removed (Retain Safe Private keeps
  :data:`~lesionlens.privacy.deid_options.SAFE_PRIVATE` and their creators); curves (50xx),
  overlays (60xx) and group lengths are removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian

from lesionlens.privacy.deid_options import DeidConfig, DeidError, clean_text
from lesionlens.privacy.deid_table import (
    BASIC_PROFILE_CODE,
    CLEAN_PIXEL_DATA_CODE,
    OPTION_INFO,
    DeidOption,
    ProfileTable,
    load_profile_table,
)
from lesionlens.privacy.uidmap import shift_da, shift_dt

#: Secondary Capture SOP classes (single-frame and the four multi-frame ones).
SECONDARY_CAPTURE_CLASSES = frozenset(
    ["1.2.840.10008.5.1.4.1.1.7"] + [f"1.2.840.10008.5.1.4.1.1.7.{i}" for i in range(1, 5)]
)
_IDENTITY_CODE_SEQUENCES = {0x00401101, 0x00080082}  # Person Identification / Institution Code Seq.
_STRUCTURED_CONTENT = {0x0040A730, 0x00400555}  # Content Sequence, Acquisition Context Sequence
_TEXT_VALUE = 0x0040A160
#: ``X`` in Table E.1-1 but Type 1 wherever present (Presentation State Identification module):
#: given a dummy instead of removed.
_TYPE1_WHEREVER_PRESENT = {0x00700082, 0x00700083}  # Presentation Creation Date, Time
_PATIENT_ID, _PATIENT_NAME = 0x00100020, 0x00100010
_TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "UC", "PN", "CS", "AE"}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {
    "PN": "ANONYMOUS",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "UR": "urn:anonymized",
}
_IDENTIFIER_KEYWORDS = (
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "PatientBirthDate",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "PatientAddress",
)


@dataclass(frozen=True)
class Quarantined:
    """An object held back because it may show burned-in text; ``reason`` says why."""

    reason: str


@dataclass
class _Context:
    """Per-dataset state of one run (never shared between datasets)."""

    shift: timedelta
    pseudonym: str
    identifiers: tuple[str, ...]
    content_mode: str | None = None  # None, "dummy" (basic) or "clean" inside structured content


def burned_in_risk(ds: Dataset) -> str | None:
    """Why ``ds`` may show burned-in text (``None`` when it does not look risky).

    Risky: an image with BurnedInAnnotation YES; or, with BurnedInAnnotation absent/empty, an
    ultrasound, a Secondary Capture or an image whose ImageType says SECONDARY (screenshots).
    """
    if "PixelData" not in ds:
        return None
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag:
        return None
    if str(ds.get("Modality", "")).upper() == "US":
        return "ultrasound without BurnedInAnnotation"
    if str(ds.get("SOPClassUID", "")) in SECONDARY_CAPTURE_CLASSES:
        return "Secondary Capture without BurnedInAnnotation"
    image_type = ds.get("ImageType", [])
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    if any(str(v).strip().upper() == "SECONDARY" for v in values):
        return "ImageType SECONDARY without BurnedInAnnotation"
    return None


class Deidentifier:
    """Applies the confidentiality profile of ``config``; stateless between datasets."""

    def __init__(self, config: DeidConfig, table: ProfileTable | None = None) -> None:
        self.config = config
        self.table = table or load_profile_table()

    # -- public -----------------------------------------------------------------------------
    def deidentify_dataset(self, ds: Dataset) -> Dataset | Quarantined:
        """De-identify ``ds`` in place and return it, or return :class:`Quarantined`.

        Raises :class:`DeidError` (naming the attribute) when an attribute cannot be processed.
        """
        risk = burned_in_risk(ds)
        masked = False
        if risk is not None:
            if not self.config.mask_regions:
                return Quarantined(risk)
            self._mask_pixels(ds)
            masked = True
        patient_id = str(ds.get("PatientID", "") or "")
        ctx = _Context(
            shift=self.config.key.date_shift(patient_id),
            pseudonym=self.config.key.pseudonym(patient_id),
            identifiers=_collect_identifiers(ds),
        )
        self._clean(ds, ctx)
        self._mark(ds, masked)
        self._rebuild_file_meta(ds, masked)
        return ds

    # -- walking ----------------------------------------------------------------------------
    def _clean(self, ds: Dataset, ctx: _Context) -> None:
        private_keep = self._safe_private_tags(ds)
        for tag in list(ds.keys()):
            tag = Tag(tag)
            group = tag.group
            if tag.is_private:
                if tag not in private_keep:
                    del ds[tag]
                elif _vr_of(ds, tag) == "SQ":
                    self._recurse(ds[tag], ctx)
                continue
            if tag.element == 0 or group == 0 or (group & 0xFF00) in (0x5000, 0x6000) or tag == 0xFFFCFFFC:
                del ds[tag]
                continue
            row = self.table.lookup(int(tag))
            if row is None:
                if tag == _TEXT_VALUE and ctx.content_mode is not None:
                    self._text_in_content(ds, tag, ctx)
                elif _vr_of(ds, tag) == "SQ":
                    self._recurse(ds[tag], ctx)
                continue
            action = row.action(self.config.options)
            if action == "X" and int(tag) in _TYPE1_WHEREVER_PRESENT:
                action = "D"
            if action == "X":
                del ds[tag]
                continue
            try:
                self._apply(ds, tag, action, ctx)
            except DeidError:
                raise
            except Exception as exc:  # malformed values of many kinds
                raise DeidError(f"cannot de-identify {row.keyword} {tag} ({action}): {exc}") from exc

    def _recurse(self, elem: DataElement, ctx: _Context, content_mode: str | None = None) -> None:
        if not isinstance(elem.value, Sequence):
            return
        saved = ctx.content_mode
        if content_mode is not None:
            ctx.content_mode = content_mode
        try:
            for item in elem.value:
                self._clean(item, ctx)
        finally:
            ctx.content_mode = saved

    def _apply(self, ds: Dataset, tag: BaseTag, action: str, ctx: _Context) -> None:
        elem = ds[tag]
        vr = elem.VR
        if vr == "UN":  # unknown encoding of a listed attribute: nothing safe to keep but the tag
            if action != "K":
                del ds[tag]
            return
        if action == "K":
            if vr == "SQ":
                self._recurse(elem, ctx)
            return
        if action == "U" or action == "X/Z/U*":
            if vr == "SQ":
                self._recurse(elem, ctx)
            elif vr == "UI":
                elem.value = self._map_uids(elem.value)
            else:
                elem.value = None
            return
        if action == "C":
            self._clean_value(ds, tag, elem, ctx)
            return
        if int(tag) in (_PATIENT_ID, _PATIENT_NAME):  # Z or D: the keyed pseudonym
            elem.value = ctx.pseudonym if int(tag) == _PATIENT_ID else f"ANON^{ctx.pseudonym}"
            return
        if action in ("Z", "X/Z") or (elem.is_empty and "Z" in action):
            if vr == "SQ":
                elem.value = Sequence()
            else:
                elem.value = None
            return
        # D, Z/D, X/D, X/Z/D with a value
        if vr == "SQ":
            if int(tag) in _IDENTITY_CODE_SEQUENCES:
                elem.value = Sequence([_dummy_code_item()])
            else:
                mode = "dummy" if int(tag) in _STRUCTURED_CONTENT else None
                self._recurse(elem, ctx, mode)
        elif vr == "UI":
            elem.value = self._map_uids(elem.value)
        elif vr in _DUMMIES:
            elem.value = _DUMMIES[vr]
        elif vr in _TEXT_VRS:
            elem.value = _DUMMY_TEXT[:16] if vr in ("CS", "AE", "SH") else _DUMMY_TEXT
        else:  # OB, OW, OF, OD, OL, OV, AT, ...
            elem.value = b"\x00\x00" if vr.startswith("O") else None

    def _clean_value(self, ds: Dataset, tag: BaseTag, elem: DataElement, ctx: _Context) -> None:
        vr = elem.VR
        if vr == "SQ":
            mode = "clean" if int(tag) in _STRUCTURED_CONTENT else None
            self._recurse(elem, ctx, mode)
        elif vr in ("DA", "DT"):
            if self.config.has(DeidOption.RETAIN_LONG_MODIFIED_DATES):
                fn = shift_da if vr == "DA" else shift_dt
                vals = [elem.value] if isinstance(elem.value, str) else list(elem.value or [])
                shifted = [fn(str(v), ctx.shift) for v in vals if str(v).strip()]
                elem.value = shifted[0] if len(shifted) == 1 else shifted or None
        elif vr == "TM" or int(tag) == 0x00080201:
            return  # times (and the UTC offset) are kept: only the date moves
        elif vr in _TEXT_VRS and vr != "PN":
            vals = [elem.value] if isinstance(elem.value, str) else list(elem.value or [])
            cleaned = [clean_text(str(v), ctx.identifiers) for v in vals]
            elem.value = cleaned[0] if len(cleaned) == 1 else cleaned or None
        else:
            del ds[tag]

    def _text_in_content(self, ds: Dataset, tag: BaseTag, ctx: _Context) -> None:
        elem = ds[tag]
        if ctx.content_mode == "clean":
            elem.value = clean_text(str(elem.value or ""), ctx.identifiers)
        else:
            elem.value = _DUMMY_TEXT

    def _map_uids(self, value: Any) -> Any:
        if value is None or value == "":
            return value
        if isinstance(value, str):
            return self.config.key.map_uid(value)
        return [self.config.key.map_uid(str(v)) for v in value]

    def _safe_private_tags(self, ds: Dataset) -> set[int]:
        """Private tags to keep in this dataset level (safe elements and their creators)."""
        if not self.config.has(DeidOption.RETAIN_SAFE_PRIVATE):
            return set()
        keep: set[int] = set()
        for tag in ds.keys():
            tag = Tag(tag)
            if not tag.is_private or tag.element < 0x1000:
                continue
            creator_tag = Tag(tag.group, tag.element >> 8)
            try:
                creator = str(ds[creator_tag].value).strip() if creator_tag in ds else ""
            except Exception:
                continue
            if (creator, tag.group, tag.element & 0xFF) in self.config.safe_private:
                keep.update({int(tag), int(creator_tag)})
        return keep

    # -- marks, meta, pixels ------------------------------------------------------------------
    def _mark(self, ds: Dataset, masked: bool) -> None:
        ds.PatientIdentityRemoved = "YES"
        codes = [BASIC_PROFILE_CODE]
        if masked:
            codes.append(CLEAN_PIXEL_DATA_CODE)
        codes += [(OPTION_INFO[o][1], OPTION_INFO[o][2]) for o in sorted(self.config.options, key=lambda o: o.value)]
        codes.sort()
        ds.DeidentificationMethod = ["LesionLens PS3.15 E.1 Basic Profile"] + [m[:64] for _, m in codes[1:]]
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        if self.config.has(DeidOption.RETAIN_LONG_FULL_DATES):
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif self.config.has(DeidOption.RETAIN_LONG_MODIFIED_DATES):
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        if masked:
            ds.BurnedInAnnotation = "NO"

    @staticmethod
    def _rebuild_file_meta(ds: Dataset, masked: bool) -> None:
        """A fresh file meta group: no source AE titles or private information survive."""
        old = getattr(ds, "file_meta", None)
        ts = getattr(old, "TransferSyntaxUID", None) if old is not None else None
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if (masked or ts is None) else ts
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta = meta

    def _mask_pixels(self, ds: Dataset) -> None:
        """Set every configured region of every frame to the image minimum; uncompressed output."""
        try:
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if ts is not None and ts.is_compressed:
                ds.decompress(generate_instance_uid=False)
            arr = np.array(ds.pixel_array, copy=True)
        except Exception as exc:
            raise DeidError(f"cannot decode Pixel Data to mask burned-in text: {exc}") from exc
        if int(ds.get("BitsAllocated", 0)) not in (8, 16, 32):
            raise DeidError(f"cannot mask Pixel Data with BitsAllocated {ds.get('BitsAllocated')}")
        samples = int(ds.get("SamplesPerPixel", 1))
        row_axis = arr.ndim - 3 if samples > 1 else arr.ndim - 2
        fill = arr.min()
        for r in self.config.mask_regions:
            index: list[slice] = [slice(None)] * arr.ndim
            index[row_axis] = slice(r.y0, r.y1)
            index[row_axis + 1] = slice(r.x0, r.x1)
            arr[tuple(index)] = fill
        if samples > 1:
            ds.PlanarConfiguration = 0
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) == 8 else "OW"
        if hasattr(ds, "file_meta"):
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    """The element's VR without converting it; a public ``UN`` (or implicit) element gets its
    dictionary VR, which pydicom uses when the element is accessed."""
    vr = getattr(ds.get_item(tag), "VR", None)
    if vr and vr != "UN":
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _dummy_code_item() -> Dataset:
    item = Dataset()
    item.CodeValue = "ANONYMIZED"
    item.CodingSchemeDesignator = "99LLDEID"
    item.CodeMeaning = "Anonymized"
    return item


def _collect_identifiers(ds: Dataset) -> tuple[str, ...]:
    """Words of the top-level identifying attributes, for :func:`clean_text`."""
    words: set[str] = set()
    for kw in _IDENTIFIER_KEYWORDS:
        try:
            value = ds.get(kw)
        except Exception:
            continue
        values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
        for v in values or []:
            text = str(v or "")
            words.add(text.strip())
            words.update(p for p in text.replace("^", " ").replace(",", " ").split() if len(p) >= 2)
    return tuple(sorted(w for w in words if len(w) >= 2))


__all__ = ["Deidentifier", "Quarantined", "SECONDARY_CAPTURE_CLASSES", "burned_in_risk"]

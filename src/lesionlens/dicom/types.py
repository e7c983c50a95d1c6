"""Data contracts of the ingest layer.

Conventions (the only ones used in LesionLens):

* **Arrays** of images are ``pixels: (K, R, C)`` — slice/frame, row, column — ``float32`` physical
  values (Hounsfield units for CT after the modality LUT). Colour images are ``(K, R, C, 3)``
  ``uint8`` RGB. A single 2D image is a volume with ``K == 1``.
* **Patient coordinates** are DICOM LPS millimetres.
* **Geometry** is a 4×4 ``affine`` (float64) mapping an array index in the *same order as the
  array axes* ``(k, r, c, 1)`` to LPS mm: ``lps = affine @ [k, r, c, 1]``. Its columns are
  ``slice_step``, ``row_step`` (moving down one row = IOP column direction × PixelSpacing[0]),
  ``col_step`` (moving right one column = IOP row direction × PixelSpacing[1]) and the origin
  (the centre of voxel ``(0, 0, 0)``).
* **Spacing** ``spacing_mm`` is ``(3,)`` in array-axis order ``(k, r, c)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import numpy as np

Severity = Literal["warning", "error"]


@dataclass(frozen=True)
class Problem:
    """One warning or error collected into a result instead of being raised.

    ``code`` is short and stable (``"missing-slice"``, ``"not-dicom"``, ``"pixel-decode"``, ...);
    ``message`` is for people; ``path`` names the file when the problem is about one.
    """

    severity: Severity
    code: str
    message: str
    path: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.severity}: {where}{self.message} [{self.code}]"

    def to_dict(self) -> dict[str, str | None]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "path": self.path}

    @classmethod
    def from_error(cls, err: Exception, severity: Severity = "error", path: str | Path | None = None) -> Problem:
        """Build a problem from a (preferably :class:`~lesionlens.errors.LesionLensError`) exception."""
        code = getattr(err, "code", type(err).__name__)
        reason = getattr(err, "reason", str(err))
        p = getattr(err, "path", None) or (str(path) if path is not None else None)
        return cls(severity, code, reason, p)


class InstanceKind(str, Enum):
    """How a file was classified when scanned."""

    IMAGE = "image"  # a DICOM object with Pixel Data (or Float/Double Float Pixel Data)
    NON_IMAGE = "non_image"  # DICOM without pixels: SR, KO, PR, RT, dose report, ...
    NOT_DICOM = "not_dicom"  # skipped, with the reason
    UNREADABLE = "unreadable"  # looked like DICOM but could not be parsed (error recorded)


@dataclass
class InstanceRecord:
    """Header facts about one file (or one zip member), read without decoding pixels.

    ``source`` is the path shown to users: a file path, or ``archive.zip!member/name``.
    Geometry fields are ``None`` when absent from the header.
    """

    source: str
    kind: InstanceKind
    reason: str = ""  # why NOT_DICOM / UNREADABLE
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""
    modality: str = ""
    study_description: str = ""
    study_date: str = ""
    series_description: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    image_type: tuple[str, ...] = ()
    transfer_syntax_uid: str = ""
    rows: int = 0
    columns: int = 0
    frames: int = 0
    samples_per_pixel: int = 1
    photometric_interpretation: str = ""
    bits_allocated: int = 0
    bits_stored: int = 0
    pixel_representation: int = 0
    image_position_patient: tuple[float, float, float] | None = None
    image_orientation_patient: tuple[float, float, float, float, float, float] | None = None
    pixel_spacing: tuple[float, float] | None = None  # (row spacing, column spacing) mm
    slice_thickness: float | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class SeriesRecord:
    """One series found while scanning, with the selector's verdict and reason."""

    series_instance_uid: str
    modality: str
    description: str
    series_number: int | None
    instances: list[InstanceRecord] = field(default_factory=list)
    selected: bool = False
    reason: str = ""
    problems: list[Problem] = field(default_factory=list)


@dataclass
class StudyRecord:
    study_instance_uid: str
    description: str = ""
    date: str = ""
    patient_id: str = ""
    patient_name: str = ""
    series: list[SeriesRecord] = field(default_factory=list)


@dataclass
class PatientRecord:
    patient_id: str
    patient_name: str = ""
    studies: list[StudyRecord] = field(default_factory=list)


@dataclass
class Catalog:
    """Everything a scan of some input found: patients → studies → series → instances.

    ``skipped`` holds files that are not DICOM or could not be parsed, each with its reason.
    """

    patients: list[PatientRecord] = field(default_factory=list)
    skipped: list[InstanceRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def studies(self) -> list[StudyRecord]:
        return [s for p in self.patients for s in p.studies]

    @property
    def series(self) -> list[SeriesRecord]:
        return [se for st in self.studies for se in st.series]


@dataclass
class DisplayInfo:
    """What the header says about showing the pixels (VOI); models never use it.

    ``windows`` are ``(center, width)`` pairs from WindowCenter/WindowWidth (all values of a
    multi-valued pair). ``voi_lut`` is ``(first_mapped, bits, table)`` from VOI LUT Sequence.
    ``invert`` is True when the source was MONOCHROME1 (pixels are already in physical
    orientation; the display should show high values bright after inversion was accounted for).
    """

    windows: list[tuple[float, float]] = field(default_factory=list)
    voi_function: str = "LINEAR"
    voi_lut: tuple[int, int, np.ndarray] | None = None
    source_photometric: str = "MONOCHROME2"
    invert: bool = False


@dataclass
class Volume:
    """A decoded series (or a single 2D image) with its geometry.

    pixels: ``(K, R, C)`` float32 physical values (HU for CT), or ``(K, R, C, 3)`` uint8 RGB.
    affine: ``(4, 4)`` float64, ``lps_mm = affine @ [k, r, c, 1]`` (see module docstring).
    sop_instance_uids / frame_numbers: per slice ``k``; ``frame_numbers`` are 1-based frame
    numbers inside a multi-frame object (1 for single-frame instances).
    """

    pixels: np.ndarray
    affine: np.ndarray
    modality: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_instance_uids: list[str] = field(default_factory=list)
    frame_numbers: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # file (or zip member) per slice
    display: DisplayInfo = field(default_factory=DisplayInfo)
    is_volumetric: bool = False  # True for a 3D series with consistent geometry
    has_patient_geometry: bool = False  # False when the affine was made up (PNG, plain DX, ...)
    problems: list[Problem] = field(default_factory=list)
    metadata: dict[str, object] = field(default_factory=dict)  # patient/study facts for reports

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)

    @property
    def spacing_mm(self) -> np.ndarray:
        """(3,) float64 spacing along the array axes (k, r, c) in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def index_to_lps(self, idx: np.ndarray) -> np.ndarray:
        """idx: (..., 3) float array of (k, r, c) indices → (..., 3) LPS mm."""
        idx = np.asarray(idx, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """lps: (..., 3) LPS mm → (..., 3) fractional (k, r, c) indices."""
        lps = np.asarray(lps, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return lps @ inv[:3, :3].T + inv[:3, 3]

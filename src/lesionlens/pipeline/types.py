"""Study-level results: what ``lesionlens detect`` knows about each lesion, series and study.

These dataclasses are the contract between the stages of the study pipeline (detection →
false-positive reduction → measurement → clinical rules) and the writers of its outputs
(findings JSON, key images, HTML/PDF report, DICOM SR/SEG/GSPS).

Conventions (see :mod:`lesionlens.dicom.types`):

- volume indices ``(k, r, c)``; ``lps_mm = volume.affine @ [k, r, c, 1]`` (DICOM LPS: +x is the
  patient's left, +y posterior, +z head);
- pixel boxes ``(4,) xyxy`` on one slice with edges at integer positions (column ``c`` spans
  ``[c, c + 1)``), so a pixel centre is ``(c + 0.5, r + 0.5)``;
- pixel points ``(x, y)`` = (column, row) in the same continuous frame as boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lesionlens.dicom.types import Problem, Volume

NoduleType = Literal["solid", "part-solid", "ground-glass"]
Side = Literal["right", "left"]
Zone = Literal["upper", "middle", "lower"]
Depth = Literal["central", "peripheral"]

Point2D = tuple[float, float]  # (x, y) pixels on one slice


@dataclass
class LesionMask:
    """Binary lesion segmentation: ``mask`` (k, r, c) bool, placed at ``offset`` = (k0, r0, c0)
    in the volume (so voxel ``mask[i, j, l]`` is volume voxel ``(k0 + i, r0 + j, c0 + l)``)."""

    mask: np.ndarray
    offset: tuple[int, int, int]

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The mask in a (K, R, C) bool array of the whole volume."""
        out = np.zeros(shape, dtype=bool)
        k0, r0, c0 = self.offset
        dk, dr, dc = self.mask.shape
        out[k0 : k0 + dk, r0 : r0 + dr, c0 : c0 + dc] = self.mask
        return out


@dataclass
class AxisLine:
    """A measured line on one slice ``k``: end points (x, y) in pixels, its length in mm."""

    k: int
    start: Point2D
    end: Point2D
    length_mm: float


@dataclass
class Measurements:
    """What a radiologist measures on a lesion.

    long_axis / short_axis: on the axial slice of largest extent (``long_axis.k``); the short
      axis is the longest line perpendicular to the long axis.
    mean_diameter_mm: (long + short) / 2 — the size Lung-RADS and Fleischner use.
    effective_diameter_mm: diameter of the sphere with the segmented volume (2D: of the disc
      with the segmented area).
    volume_mm3: of the segmentation (None for 2D images).
    solid_component_mm: mean diameter of the solid part (part-solid), equal to mean_diameter_mm
      for solid and 0 for ground-glass lesions.
    mask: the segmentation (None when none could be made).
    """

    long_axis: AxisLine
    short_axis: AxisLine
    mean_diameter_mm: float
    effective_diameter_mm: float
    volume_mm3: float | None
    mean_hu: float | None
    max_hu: float | None
    nodule_type: NoduleType | None
    solid_component_mm: float
    mask: LesionMask | None = None

    def to_dict(self) -> dict[str, Any]:
        def line(a: AxisLine) -> dict[str, Any]:
            return {"slice_index": a.k, "start_px": [round(a.start[0], 2), round(a.start[1], 2)],
                    "end_px": [round(a.end[0], 2), round(a.end[1], 2)], "length_mm": round(a.length_mm, 2)}

        def r(v: float | None, n: int = 2) -> float | None:
            return None if v is None else round(float(v), n)

        return {"long_axis_mm": round(self.long_axis.length_mm, 2), "short_axis_mm": round(self.short_axis.length_mm, 2),
                "long_axis": line(self.long_axis), "short_axis": line(self.short_axis),
                "mean_diameter_mm": round(self.mean_diameter_mm, 2),
                "effective_diameter_mm": round(self.effective_diameter_mm, 2),
                "volume_mm3": r(self.volume_mm3, 1), "mean_hu": r(self.mean_hu, 1), "max_hu": r(self.max_hu, 1),
                "type": self.nodule_type, "solid_component_mm": round(self.solid_component_mm, 2)}


@dataclass
class Location:
    """Where a lesion lies. side: the patient's side (LPS +x is left). zone: thirds of the lung's
    cranio-caudal extent. depth: central (inner third from the hilum/mediastinum) or peripheral.
    slice_number: 1-based position of the key slice in the series (``k + 1``)."""

    side: Side | None
    zone: Zone | None
    depth: Depth | None
    slice_number: int
    sop_instance_uid: str
    frame: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "zone": self.zone, "depth": self.depth, "slice_number": self.slice_number,
                "sop_instance_uid": self.sop_instance_uid, "frame": self.frame}


@dataclass
class FilterDecision:
    """One false-positive filter's verdict on a candidate, with its reason (always logged)."""

    filter: str
    passed: bool
    reason: str
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"filter": self.filter, "passed": self.passed, "reason": self.reason,
                "value": None if self.value is None else round(float(self.value), 3)}


@dataclass
class Lesion:
    """One detected lesion (CT: a 3D candidate; 2D: one box on image ``key_k``).

    tracking_id: short human label ("L1", "L2", … in order of confidence) — the SR's Tracking
      Identifier; tracking_uid: its Tracking Unique Identifier (stable for the same input).
    center_mm: (3,) LPS mm, or None for 2D images without patient geometry.
    bbox_px: (4,) xyxy pixels on slice ``key_k``; slices: (first k, last k) the lesion spans.
    diameter_mm: the detector's equivalent diameter (before measurement).
    """

    tracking_id: str
    tracking_uid: str
    label: str
    confidence: float
    key_k: int
    bbox_px: np.ndarray
    slices: tuple[int, int]
    center_mm: np.ndarray | None = None
    diameter_mm: float | None = None
    measurements: Measurements | None = None
    location: Location | None = None
    decisions: list[FilterDecision] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return all(d.passed for d in self.decisions)

    @property
    def rejected_by(self) -> FilterDecision | None:
        return next((d for d in self.decisions if not d.passed), None)


@dataclass
class Suggestion:
    """A computed clinical suggestion (never a diagnosis).

    system: "Lung-RADS v2022" or "Fleischner 2017"; category: e.g. "2", "4A" (Lung-RADS) or the
    Fleischner row; management: the recommendation text; lesions: tracking ids it rests on.
    """

    system: str
    category: str
    description: str
    management: str
    lesions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"system": self.system, "category": self.category, "description": self.description,
                "management": self.management, "lesions": list(self.lesions), "computed_suggestion": True}


@dataclass
class SeriesResult:
    """One processed series: kept lesions, the candidates the filters dropped (with reasons),
    warnings for the reader, stage timings in seconds, and the lung mask when one was made."""

    volume: Volume
    lesions: list[Lesion] = field(default_factory=list)
    rejected: list[Lesion] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    lung_mask: np.ndarray | None = None  # (K, R, C) bool


@dataclass
class StudyResult:
    """Everything ``detect`` produced for one study.

    patient / study: header facts for the report (PatientName, PatientID, PatientBirthDate,
    PatientSex, PatientAge; StudyDate, StudyTime, StudyDescription, AccessionNumber,
    ReferringPhysicianName, InstitutionName) as plain strings, missing ones absent.
    model: identity of the model package (name, version, sha256).
    status: "ok", "partial" (some series/files failed; see problems) or "no-series" (nothing
    could be analysed; ``messages`` says why).
    """

    study_instance_uid: str
    patient: dict[str, str] = field(default_factory=dict)
    study: dict[str, str] = field(default_factory=dict)
    series: list[SeriesResult] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    model: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    status: Literal["ok", "partial", "no-series"] = "ok"

    @property
    def lesions(self) -> list[Lesion]:
        return [les for s in self.series for les in s.lesions]


NOTICE = ("Computer-aided detection output, not a diagnosis. Demonstration model trained on synthetic "
          "data; not for clinical use.")

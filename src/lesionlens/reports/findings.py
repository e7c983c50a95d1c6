"""The findings document, schema ``lesionlens.findings/1``.

Later stages add fields; none of these is ever removed::

    {"schema": "lesionlens.findings/1",
     "model": {"name", "version", "sha256"},
     "studies": [{"study_instance_uid",
       "series": [{"series_instance_uid", "modality",
         "findings": [{"label", "confidence", "center_mm", "diameter_mm",
                       "bbox_px", "sop_instance_uid", "frame"}]}]}]}

``center_mm`` is DICOM LPS mm (CT; ``null`` for images without patient geometry);
``bbox_px`` is xyxy pixels on the key slice (CT) or the 2D image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesionlens import jsonio
from lesionlens.dicom.types import Volume
from lesionlens.errors import OutputError
from lesionlens.pipeline.types import NOTICE, Lesion, StudyResult

SCHEMA = "lesionlens.findings/1"


@dataclass
class Finding:
    label: str
    confidence: float
    bbox_px: list[float]
    center_mm: list[float] | None = None
    diameter_mm: float | None = None
    sop_instance_uid: str = ""
    frame: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "label": self.label,
            "confidence": round(float(self.confidence), 6),
            "center_mm": [round(float(v), 3) for v in self.center_mm] if self.center_mm is not None else None,
            "diameter_mm": round(float(self.diameter_mm), 3) if self.diameter_mm is not None else None,
            "bbox_px": [round(float(v), 2) for v in self.bbox_px],
            "sop_instance_uid": self.sop_instance_uid,
            "frame": int(self.frame),
        }
        d.update(self.extra)
        return d


@dataclass
class SeriesFindings:
    series_instance_uid: str
    modality: str
    findings: list[Finding] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "findings": [f.to_dict() for f in self.findings],
        }
        d.update(self.extra)
        return d


@dataclass
class StudyFindings:
    study_instance_uid: str
    series: list[SeriesFindings] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "study_instance_uid": self.study_instance_uid,
            "series": [s.to_dict() for s in self.series],
        }
        d.update(self.extra)
        return d


def findings_document(
    model: dict[str, str], studies: list[StudyFindings], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Assemble the JSON document; ``model`` has name, version, sha256."""
    for key in ("name", "version", "sha256"):
        if key not in model:
            raise OutputError(f"findings document: model identity lacks {key!r}")
    doc: dict[str, Any] = {"schema": SCHEMA, "model": dict(model), "studies": [s.to_dict() for s in studies]}
    if extra:
        doc.update(extra)
    _check_finite(doc, "findings")
    return doc


def _check_finite(obj: Any, where: str) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise OutputError(f"{where}: value is not a finite number")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Write the document atomically (temp file, fsync, rename)."""
    return jsonio.write_json(doc, path)


# ----------------------------------------------------------------------------------------------
# the study pipeline's document (``lesionlens detect``): the same schema, extended


def _r(v: float | None, n: int = 3) -> float | None:
    return None if v is None else round(float(v), n)


def lesion_finding(les: Lesion, volume: Volume, key_images: dict[str, str] | None = None) -> Finding:
    """One kept lesion → a Finding carrying its measurements, location and filter verdicts."""
    m = les.measurements
    k = les.key_k
    diameter = m.effective_diameter_mm if m is not None else les.diameter_mm
    extra: dict[str, Any] = {
        "tracking_id": les.tracking_id,
        "tracking_uid": les.tracking_uid,
        "slice_index": k,
        "slices": [int(les.slices[0]), int(les.slices[1])],
        "measurements": m.to_dict() if m is not None else None,
        "location": les.location.to_dict() if les.location is not None else None,
        "filters": [d.to_dict() for d in les.decisions],
    }
    if key_images:
        extra["key_images"] = dict(key_images)
    extra.update({key: _r(v, 3) if isinstance(v, float) else v for key, v in les.extra.items()})
    return Finding(
        label=les.label, confidence=les.confidence, bbox_px=[float(v) for v in les.bbox_px],
        center_mm=[float(v) for v in les.center_mm] if les.center_mm is not None else None,
        diameter_mm=diameter,
        sop_instance_uid=volume.sop_instance_uids[k] if k < len(volume.sop_instance_uids) else "",
        frame=volume.frame_numbers[k] if k < len(volume.frame_numbers) else 1,
        extra=extra,
    )


def _rejected(les: Lesion) -> dict[str, Any]:
    why = les.rejected_by
    return {"tracking_id": les.tracking_id, "confidence": round(float(les.confidence), 6),
            "center_mm": [round(float(v), 3) for v in les.center_mm] if les.center_mm is not None else None,
            "diameter_mm": _r(les.measurements.mean_diameter_mm if les.measurements else les.diameter_mm, 2),
            "slice_index": les.key_k, "filter": why.filter if why else None, "reason": why.reason if why else None}


def study_findings(result: StudyResult, outputs: dict[str, str] | None = None,
                   key_images: dict[str, dict[str, str]] | None = None) -> StudyFindings:
    """A pipeline StudyResult → the study entry of the findings document.

    outputs: written files by kind (``report_html`` …), relative to the document's folder;
    key_images: tracking_id → {"slice": path, "crop": path}, relative likewise.
    """
    series = []
    for s in result.series:
        v = s.volume
        series.append(SeriesFindings(
            v.series_instance_uid, v.modality,
            [lesion_finding(les, v, (key_images or {}).get(les.tracking_id)) for les in s.lesions],
            extra={"shape": list(v.pixels.shape[:3]), "spacing_mm": [round(float(x), 4) for x in v.spacing_mm],
                   "rejected": [_rejected(les) for les in s.rejected], "warnings": list(s.warnings),
                   "timings_s": {k: round(t, 4) for k, t in s.timings.items()}},
        ))
    return StudyFindings(result.study_instance_uid, series, extra={
        "status": result.status,
        "messages": list(result.messages),
        "patient": dict(result.patient),
        "study": dict(result.study),
        "suggestions": [sg.to_dict() for sg in result.suggestions],
        "problems": [p.to_dict() for p in result.problems],
        "timings_s": {k: round(t, 4) for k, t in result.timings.items()},
        "outputs": dict(outputs or {}),
    })


def findings_from_results(results: list[StudyResult], studies: list[StudyFindings]) -> dict[str, Any]:
    """The whole document of a ``detect`` run (one entry per study, model identity once)."""
    model = results[0].model if results else {}
    from lesionlens import __version__

    return findings_document(model, studies, extra={"notice": NOTICE, "generator": f"lesionlens {__version__}"})


SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "findings-1.schema.json"

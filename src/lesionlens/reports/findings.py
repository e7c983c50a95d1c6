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
from lesionlens.errors import OutputError

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

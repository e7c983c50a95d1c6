"""The truth file of a synthetic CT study (schema ``lesionlens.truth/1``) and its loader.

``truth.json`` lies next to the DICOM files. Every position is DICOM LPS mm; ``geometry.affine``
maps an array index ``(k, r, c, 1)`` of the sorted series to LPS mm (see ``docs/synthetic-ct.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.data.annotations import Lesion3D, StudyTruth
from lesionlens.errors import DataFormatError
from lesionlens.synth.nodules import Nodule

SCHEMA = "lesionlens.truth/1"
TRUTH_FILE = "truth.json"


def _r(v: Any, nd: int = 4) -> Any:
    return np.round(np.asarray(v, dtype=np.float64), nd).tolist()


def nodule_record(n: Nodule, center_index: np.ndarray) -> dict[str, Any]:
    """JSON form of one nodule. center_index: (3,) fractional (k, r, c) of its centre."""
    return {
        "id": n.id,
        "type": n.type,
        "center_lps_mm": _r(n.center_mm),
        "center_index_krc": _r(center_index, 3),
        "diameter_mm": round(float(n.diameter_mm), 4),
        "axes_mm": _r(n.axes_mm),
        "axis_directions_lps": _r(n.directions, 6),
        "extent_lps_mm": _r(n.extent_mm),
        "lobulated": n.lobulated,
        "juxtapleural": n.juxtapleural,
        "juxtavascular": n.juxtavascular,
        "hu": round(float(n.hu), 1),
        "core_hu": None if n.core_hu is None else round(float(n.core_hu), 1),
        "core_diameter_mm": round(float(n.diameter_mm * n.core_fraction), 4),
    }


def study_truth_from_dict(doc: dict[str, Any], source: str = "truth") -> StudyTruth:
    """Convert a parsed ``lesionlens.truth/1`` document into :class:`StudyTruth`."""
    if doc.get("schema") != SCHEMA:
        raise DataFormatError(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}", path=source)
    try:
        lesions = []
        for n in doc["nodules"]:
            extra = {key: n[key] for key in ("id", "lobulated", "juxtapleural", "juxtavascular",
                                              "axes_mm", "axis_directions_lps", "extent_lps_mm",
                                              "hu", "core_hu", "core_diameter_mm") if key in n}
            c = n["center_lps_mm"]
            lesions.append(Lesion3D((float(c[0]), float(c[1]), float(c[2])), float(n["diameter_mm"]),
                                    label="nodule", kind=str(n["type"]), extra=extra))
        return StudyTruth(series_instance_uid=str(doc["series_instance_uid"]),
                          study_instance_uid=str(doc["study_instance_uid"]),
                          patient_id=str(doc["patient_id"]), lesions=lesions)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataFormatError(f"malformed truth document: {exc!r}", path=source) from exc


def write_truth(doc: dict[str, Any], folder: str | Path) -> Path:
    """Write ``doc`` as ``folder/truth.json`` (UTF-8, indented). Returns the path."""
    path = Path(folder) / TRUTH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_truth_document(path: str | Path) -> dict[str, Any]:
    """The raw truth document; ``path`` is ``truth.json`` or the folder holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / TRUTH_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataFormatError("truth file not found", path=p) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"truth file is not valid JSON: {exc}", path=p) from exc
    if not isinstance(doc, dict):
        raise DataFormatError("truth file must hold a JSON object", path=p)
    return doc


def load_truth(path: str | Path) -> StudyTruth:
    """Load ``truth.json`` (or the folder holding it) as :class:`StudyTruth`.

    Each nodule becomes a :class:`Lesion3D` with ``kind`` = its type and ``extra`` holding
    its flags (``juxtapleural``, ``juxtavascular``, ``lobulated``), axes and id.
    Raises :class:`DataFormatError` naming the file when it is missing or malformed.
    """
    p = Path(path)
    doc = read_truth_document(p)
    return study_truth_from_dict(doc, source=str(p))

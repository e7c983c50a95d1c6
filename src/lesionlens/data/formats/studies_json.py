"""The nested studies → series → instances → nodules JSON layout of lung-nodule tutorials.

Exact layout read and written (box = top-left corner ``x`` (column), ``y`` (row) and
``width``/``height``, all in pixels of that instance's image)::

    {
      "names": ["nodule"],                       # optional; default: labels in order seen
      "studies": [
        {
          "study_instance_uid": "1.2.3",          # or "StudyInstanceUID"
          "patient_id": "P001",                   # or "PatientID" (optional)
          "series": [
            {
              "series_instance_uid": "1.2.3.4",   # or "SeriesInstanceUID"
              "instances": [
                {
                  "sop_instance_uid": "1.2.3.4.5",   # or "SOPInstanceUID"
                  "image": "P001/slice_0042.png",    # optional path of the image file
                  "slice_index": 42,                 # optional, or "instance_number"
                  "rows": 512, "columns": 512,       # image size, required
                  "nodules": [
                    {"x": 210.5, "y": 300.0, "width": 14.0, "height": 12.5, "label": "nodule"}
                  ]
                }
              ]
            }
          ]
        }
      ]
    }

``label`` defaults to ``"nodule"``. Instances without nodules are kept (negatives). Each
instance becomes one :class:`ImageAnnotation` (``image`` falls back to the SOP instance UID);
extra nodule keys (e.g. ``"malignancy"``) are kept in ``extra["nodule_attributes"]`` per box.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.boxes import boxes_outside, clip_boxes, xywh_to_xyxy, xyxy_to_xywh
from lesionlens.errors import DataFormatError
from lesionlens.jsonio import read_json, write_json

__all__ = ["read_studies_json", "studies_dict", "write_studies_json"]

_NODULE_KEYS = {"x", "y", "width", "height", "label"}


def _get(obj: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in obj:
            return obj[k]
    return default


def _list(obj: dict[str, Any], key: str, where: str, path: Path) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise DataFormatError(f"{where}.{key} must be a list", path=path)
    return value


def read_studies_json(path: str | Path, *, split: str = "all") -> DetectionDataset:
    """Read the studies JSON at ``path`` into a one-split :class:`DetectionDataset`.

    Raises :class:`DataFormatError` naming the file and the field path
    (``studies[0].series[1].instances[3].nodules[0].width``) of anything malformed: missing
    uids, non-numeric or negative sizes, boxes outside the image, labels not in ``names``.
    """
    p = Path(path)
    doc = read_json(p)
    if not isinstance(doc, dict):
        raise DataFormatError("expected an object with a 'studies' list", path=p)
    fixed_names = doc.get("names")
    if fixed_names is not None and not (isinstance(fixed_names, list) and all(isinstance(n, str) for n in fixed_names)):
        raise DataFormatError("field 'names' must be a list of strings", path=p)
    names: list[str] = list(fixed_names) if fixed_names else []
    items: list[ImageAnnotation] = []
    for si, study in enumerate(_list(doc, "studies", "", p)):
        ws = f"studies[{si}]"
        if not isinstance(study, dict):
            raise DataFormatError(f"{ws} must be an object", path=p)
        study_uid = _get(study, "study_instance_uid", "StudyInstanceUID")
        if not isinstance(study_uid, str) or not study_uid:
            raise DataFormatError(f"{ws}.study_instance_uid is missing", path=p)
        patient = str(_get(study, "patient_id", "PatientID", default=""))
        for ei, series in enumerate(_list(study, "series", ws, p)):
            we = f"{ws}.series[{ei}]"
            if not isinstance(series, dict):
                raise DataFormatError(f"{we} must be an object", path=p)
            series_uid = _get(series, "series_instance_uid", "SeriesInstanceUID")
            if not isinstance(series_uid, str) or not series_uid:
                raise DataFormatError(f"{we}.series_instance_uid is missing", path=p)
            for ii, inst in enumerate(_list(series, "instances", we, p)):
                items.append(_instance(inst, f"{we}.instances[{ii}]", p, names, fixed_names is not None,
                                       patient, study_uid, series_uid))
    if not names:
        names = ["nodule"]
    return DetectionDataset(names=names, splits={split: items})


def _instance(
    inst: Any, wi: str, p: Path, names: list[str], names_fixed: bool, patient: str, study_uid: str, series_uid: str
) -> ImageAnnotation:
    if not isinstance(inst, dict):
        raise DataFormatError(f"{wi} must be an object", path=p)
    sop = _get(inst, "sop_instance_uid", "SOPInstanceUID")
    if not isinstance(sop, str) or not sop:
        raise DataFormatError(f"{wi}.sop_instance_uid is missing", path=p)
    rows, cols = inst.get("rows"), inst.get("columns")
    if not (isinstance(rows, int) and isinstance(cols, int) and rows > 0 and cols > 0):
        raise DataFormatError(f"{wi}.rows/columns must be positive integers, got {rows!r}/{cols!r}", path=p)
    slice_index = _get(inst, "slice_index", "instance_number")
    if slice_index is not None and not isinstance(slice_index, int):
        raise DataFormatError(f"{wi}.slice_index must be an integer, got {slice_index!r}", path=p)
    boxes, labels, attrs = [], [], []
    for ni, nod in enumerate(_list(inst, "nodules", wi, p) if "nodules" in inst else []):
        wn = f"{wi}.nodules[{ni}]"
        if not isinstance(nod, dict):
            raise DataFormatError(f"{wn} must be an object", path=p)
        for key in ("x", "y", "width", "height"):
            v = nod.get(key)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                raise DataFormatError(f"{wn}.{key} must be a number, got {v!r}", path=p)
        if nod["width"] <= 0 or nod["height"] <= 0:
            raise DataFormatError(f"{wn}.width/height must be > 0", path=p)
        box = xywh_to_xyxy([[nod["x"], nod["y"], nod["width"], nod["height"]]])
        if boxes_outside(box, cols, rows, tol=1.0)[0]:
            raise DataFormatError(f"{wn}: box {box[0].tolist()} lies outside the {cols}x{rows} image", path=p)
        label = nod.get("label", "nodule")
        if not isinstance(label, str):
            raise DataFormatError(f"{wn}.label must be a string", path=p)
        if label not in names:
            if names_fixed:
                raise DataFormatError(f"{wn}.label: unknown class {label!r} (names: {names})", path=p)
            names.append(label)
        boxes.append(clip_boxes(box, cols, rows)[0])
        labels.append(names.index(label))
        attrs.append({k: v for k, v in nod.items() if k not in _NODULE_KEYS})
    extra: dict[str, object] = {}
    if any(attrs):
        extra["nodule_attributes"] = attrs
    return ImageAnnotation(
        image=str(inst.get("image") or sop),
        width=cols,
        height=rows,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        patient_id=patient,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop,
        slice_index=slice_index,
        extra=extra,
    )


def studies_dict(dataset: DetectionDataset) -> dict[str, Any]:
    """The studies JSON object of every image of ``dataset``, grouped by study and series
    (in order of first appearance). Every image needs its study and series uid."""
    studies: dict[str, dict[str, Any]] = {}
    series_of: dict[tuple[str, str], dict[str, Any]] = {}
    for ann in dataset.all_images():
        if not ann.study_instance_uid or not ann.series_instance_uid:
            raise DataFormatError("the studies layout needs study and series uids", path=ann.image)
        st = studies.setdefault(
            ann.study_instance_uid,
            {"study_instance_uid": ann.study_instance_uid, "patient_id": ann.patient_id, "series": []},
        )
        key = (ann.study_instance_uid, ann.series_instance_uid)
        if key not in series_of:
            series_of[key] = {"series_instance_uid": ann.series_instance_uid, "instances": []}
            st["series"].append(series_of[key])
        attrs = list(ann.extra.get("nodule_attributes", []))  # type: ignore[call-overload]
        nodules = []
        for j, (box, lab) in enumerate(zip(xyxy_to_xywh(ann.boxes), ann.labels)):
            nod: dict[str, Any] = {"x": float(box[0]), "y": float(box[1]), "width": float(box[2]),
                                   "height": float(box[3]), "label": dataset.names[int(lab)]}
            if j < len(attrs) and isinstance(attrs[j], dict):
                nod.update(attrs[j])
            nodules.append(nod)
        inst: dict[str, Any] = {"sop_instance_uid": ann.sop_instance_uid or ann.image, "image": ann.image,
                                "rows": int(ann.height), "columns": int(ann.width)}
        if ann.slice_index is not None:
            inst["slice_index"] = int(ann.slice_index)
        inst["nodules"] = nodules
        series_of[key]["instances"].append(inst)
    return {"names": list(dataset.names), "studies": list(studies.values())}


def write_studies_json(dataset: DetectionDataset, path: str | Path) -> Path:
    """Write :func:`studies_dict` of ``dataset`` to ``path`` atomically; returns the path."""
    return write_json(studies_dict(dataset), path)

"""Our own layout: a folder of DICOM studies with truth files beside the images.

Two kinds of truth file are recognised anywhere under the folder:

* ``truth.json`` — 3D truth of one CT series (format ``lesionlens.truth/1``), written by the CT
  phantom; read with :func:`lesionlens.synth.truth.load_truth` into a :class:`StudyTruth`.
* ``<name>.truth.json`` — 2D truth of one radiograph (format ``lesionlens.truth2d/1``), written
  by :func:`lesionlens.synth.dicom2d.write_2d_study`; read into an :class:`ImageAnnotation`.

The 2D layout (all boxes xyxy pixels of the stored image; ``image`` relative to the JSON file)::

    {
      "format": "lesionlens.truth2d/1",
      "image": "mg-3.dcm", "width": 3000, "height": 4000,
      "patient_id": "...", "study_instance_uid": "...", "series_instance_uid": "...",
      "sop_instance_uid": "...",
      "names": ["calcification_cluster", "mass", "nodule"],
      "lesions": [{"label": "mass", "box_xyxy_px": [x1, y1, x2, y2], "size_mm": 12.5,
                   "details": {...}}],
      "extra": {...}
    }
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation, StudyTruth
from lesionlens.data.boxes import boxes_outside
from lesionlens.errors import DataFormatError
from lesionlens.jsonio import read_json, write_json

TRUTH2D_FORMAT = "lesionlens.truth2d/1"
TRUTH3D_FORMAT = "lesionlens.truth/1"

__all__ = ["TRUTH2D_FORMAT", "TruthFolder", "read_truth_2d", "read_truth_folder", "write_truth_2d"]


@dataclass
class TruthFolder:
    """What :func:`read_truth_folder` found.

    dataset: the 2D images (split ``"all"``), ``image`` paths relative to the folder root.
    studies: the CT truths, one per series. truth_files: every truth file read, sorted.
    """

    dataset: DetectionDataset
    studies: list[StudyTruth] = field(default_factory=list)
    truth_files: list[Path] = field(default_factory=list)


def write_truth_2d(ann: ImageAnnotation, names: list[str], path: str | Path) -> Path:
    """Write the 2D truth of one image (format ``lesionlens.truth2d/1``) atomically.

    ``ann.extra["sizes_mm"]`` (per box) and ``ann.extra["lesions"]`` (per-box detail dicts)
    become the lesions' ``size_mm`` and ``details``; other ``extra`` keys go to ``extra``.
    """
    extra = dict(ann.extra)
    sizes = list(extra.pop("sizes_mm", [None] * len(ann.boxes)))  # type: ignore[call-overload]
    details = list(extra.pop("lesions", [{}] * len(ann.boxes)))  # type: ignore[call-overload]
    lesions = []
    for i, (box, lab) in enumerate(zip(ann.boxes, ann.labels)):
        entry: dict[str, Any] = {"label": names[int(lab)], "box_xyxy_px": [float(v) for v in box]}
        if i < len(sizes) and sizes[i] is not None:
            entry["size_mm"] = float(sizes[i])
        if i < len(details) and details[i]:
            entry["details"] = details[i]
        lesions.append(entry)
    doc = {
        "format": TRUTH2D_FORMAT,
        "image": ann.image,
        "width": int(ann.width),
        "height": int(ann.height),
        "patient_id": ann.patient_id,
        "study_instance_uid": ann.study_instance_uid,
        "series_instance_uid": ann.series_instance_uid,
        "sop_instance_uid": ann.sop_instance_uid,
        "names": list(names),
        "lesions": lesions,
        "extra": extra,
    }
    return write_json(doc, path)


def read_truth_2d(path: str | Path, *, check_image: bool = True) -> tuple[ImageAnnotation, list[str]]:
    """Read one ``lesionlens.truth2d/1`` file → (annotation, class names).

    ``annotation.image`` is the DICOM path as written (relative to the JSON's folder). With
    ``check_image`` the referenced file must exist. Raises :class:`DataFormatError` naming the
    file and field for anything malformed (unknown label, box outside the image, ...).
    """
    p = Path(path)
    doc = read_json(p)
    if not isinstance(doc, dict) or doc.get("format") != TRUTH2D_FORMAT:
        raise DataFormatError(f"field 'format' must be {TRUTH2D_FORMAT!r}", path=p)
    for key in ("image", "width", "height", "names", "lesions"):
        if key not in doc:
            raise DataFormatError(f"missing field {key!r}", path=p)
    w, h = doc["width"], doc["height"]
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        raise DataFormatError(f"fields 'width'/'height' must be positive integers, got {w!r}/{h!r}", path=p)
    names = doc["names"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise DataFormatError("field 'names' must be a non-empty list of strings", path=p)
    if not isinstance(doc["image"], str) or not doc["image"]:
        raise DataFormatError("field 'image' must be a file name", path=p)
    if check_image and not (p.parent / doc["image"]).is_file():
        raise DataFormatError(f"field 'image': {doc['image']} does not exist beside the truth file", path=p)
    if not isinstance(doc["lesions"], list):
        raise DataFormatError("field 'lesions' must be a list", path=p)
    boxes, labels, sizes, details = [], [], [], []
    for i, les in enumerate(doc["lesions"]):
        where = f"lesions[{i}]"
        if not isinstance(les, dict):
            raise DataFormatError(f"{where} must be an object", path=p)
        if les.get("label") not in names:
            raise DataFormatError(f"{where}.label: unknown class {les.get('label')!r} (names: {names})", path=p)
        box = les.get("box_xyxy_px")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise DataFormatError(f"{where}.box_xyxy_px must be four finite numbers, got {box!r}", path=p)
        if boxes_outside([box], w, h)[0]:
            raise DataFormatError(f"{where}.box_xyxy_px {box} is empty or outside the {w}x{h} image", path=p)
        size = les.get("size_mm")
        if size is not None and not (isinstance(size, (int, float)) and size >= 0):
            raise DataFormatError(f"{where}.size_mm must be a non-negative number, got {size!r}", path=p)
        boxes.append(box)
        labels.append(names.index(les["label"]))
        sizes.append(None if size is None else float(size))
        details.append(les.get("details", {}))
    extra = dict(doc.get("extra") or {})
    extra["sizes_mm"] = sizes
    extra["lesions"] = details
    ann = ImageAnnotation(
        image=doc["image"],
        width=w,
        height=h,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        patient_id=str(doc.get("patient_id", "")),
        study_instance_uid=str(doc.get("study_instance_uid", "")),
        series_instance_uid=str(doc.get("series_instance_uid", "")),
        sop_instance_uid=str(doc.get("sop_instance_uid", "")),
        extra=extra,
    )
    return ann, list(names)


def _load_truth_3d(path: Path) -> StudyTruth:
    """One CT ``truth.json`` → :class:`StudyTruth` (the CT phantom owns that format)."""
    from lesionlens.synth.truth import load_truth

    return load_truth(path)


def read_truth_folder(root: str | Path) -> TruthFolder:
    """Read every truth file under ``root`` (recursively, in sorted order).

    2D images of every truth file share one class list: the names of the first file, extended
    by later files' new names (labels are re-indexed). Raises :class:`DataFormatError` for a
    malformed file, or when ``root`` holds no truth file at all.
    """
    base = Path(root)
    if not base.is_dir():
        raise DataFormatError("not a folder", path=base)
    files = sorted(p for p in base.rglob("*.json") if p.name == "truth.json" or p.name.endswith(".truth.json"))
    if not files:
        raise DataFormatError("no truth.json or *.truth.json file found", path=base)
    names: list[str] = []
    images: list[ImageAnnotation] = []
    studies: list[StudyTruth] = []
    for f in files:
        if f.name == "truth.json":
            studies.append(_load_truth_3d(f))
            continue
        ann, file_names = read_truth_2d(f)
        for n in file_names:
            if n not in names:
                names.append(n)
        ann.labels = np.array([names.index(file_names[int(i)]) for i in ann.labels], dtype=np.int64)
        ann.image = (f.parent / ann.image).relative_to(base).as_posix()
        images.append(ann)
    return TruthFolder(DetectionDataset(names=names, splits={"all": images}), studies, files)

"""The in-memory form of an annotated detection dataset, shared by every format reader/writer.

Box convention (the only one in LesionLens): ``boxes: (N, 4) float32, xyxy, pixels`` in the
original image grid, x to the right (columns), y down (rows), edges not centres: a box that
covers exactly pixel column 3 is ``x1=3, x2=4``. Conversions live in :mod:`lesionlens.data.boxes`.

3D truth (CT) is kept as :class:`Lesion3D`: centre in DICOM LPS mm and a diameter in mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageAnnotation:
    """One training/evaluation image and its boxes.

    image: path relative to the dataset root (or absolute) of the image file.
    boxes: (N, 4) float32 xyxy pixels; labels: (N,) int64 class indices into the dataset's names.
    patient_id is what patient-level splits group by; study/series/sop/slice_index tie a slice
    image back to its DICOM source when there is one. ``extra`` keeps format-specific fields
    (e.g. COCO ids, per-box diameters in mm) that a round trip must not lose.
    """

    image: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    patient_id: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    slice_index: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"{self.image}: {len(self.boxes)} boxes but {len(self.labels)} labels")


@dataclass
class Lesion3D:
    """A lesion in a CT study. center_mm: (3,) LPS mm; diameter_mm: equivalent sphere diameter."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    label: str = "nodule"
    kind: str = ""  # solid | part_solid | ground_glass (CT nodules)
    excluded: bool = False  # LUNA16 "annotations_excluded": a hit counts as neither TP nor FP
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class StudyTruth:
    """3D truth for one CT series (LUNA16 / our own truth files)."""

    series_instance_uid: str
    study_instance_uid: str = ""
    patient_id: str = ""
    lesions: list[Lesion3D] = field(default_factory=list)


@dataclass
class DetectionDataset:
    """Class names plus images per split (``"train"``, ``"val"``, ``"test"``, or ``"all"``)."""

    names: list[str]
    splits: dict[str, list[ImageAnnotation]] = field(default_factory=dict)

    def all_images(self) -> list[ImageAnnotation]:
        return [im for items in self.splits.values() for im in items]

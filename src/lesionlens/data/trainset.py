"""From CT studies with 3D truth to a 2D/2.5D detection training set (YOLO layout).

One image per chosen CT slice: a ``(C, H, W)`` stack of HU values at the slice-normal offsets
``context_mm`` (default −2.5, 0, +2.5 mm; channel ``i`` is offset ``context_mm[i]``), stored as
``.npy`` float16/float32 (format ``"npy-hu"``, the trainer's default) or as a 16-bit PNG of a
fixed HU window (format ``"png16"``, one channel only). Every slice a lesion crosses gets the
lesion's cross-section box:

* from a voxel label map when there is one: the exact per-slice mask bounding box;
* otherwise from the sphere truth (centre in LPS mm, diameter ``D``): on a slice plane at signed
  distance ``d`` from the centre the cross-section is a circle of radius ``sqrt((D/2)² − d²)``,
  projected to pixels with the volume affine; when the truth carries ellipsoid axes
  (``extra["axes_mm"]``, ``extra["axis_directions_lps"]``) the exact ellipse section is used.

Cross-sections narrower than ``min_box_px`` are skipped (and their slices are never used as
negatives). Patients are split train/val/test by :func:`~lesionlens.data.split.split_patients`
(stratified by "has lesions"); negatives — slices away from every lesion, including whole scans
without lesions — are sampled per split at ``negative_ratio`` × the positives, lung slices first.

Output layout::

    dataset.yaml                 path, train/val/test, names, channels, context_mm, format, ...
    images/<split>/<name>.npy    (C, H, W) HU          (or <name>.png, uint16 window)
    labels/<split>/<name>.txt    "class cx cy w h" normalised (empty file for a negative)
    manifest.json                per image: patient/study/series/SOP/slice, boxes, sha256; fingerprint

Folder sources are read twice (once to find positives and score negatives, once to write the
negatives chosen); in-memory :class:`CTCase` sources are used as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation, Lesion3D, StudyTruth
from lesionlens.data.split import SPLIT_NAMES, normalize_ratios, split_patients
from lesionlens.dicom.display import apply_window
from lesionlens.dicom.stack import neighbour_stack
from lesionlens.dicom.types import Problem, Volume
from lesionlens.errors import ConfigError, DataFormatError, OutputError

__all__ = [
    "MANIFEST_FORMAT",
    "CTCase",
    "LazyCTCase",
    "TrainSetBuild",
    "TrainSetConfig",
    "TrainSetSummary",
    "build_training_set",
    "context_stack",
    "cross_section_boxes",
    "luna16_cases",
    "lung_fraction",
    "manifest_fingerprint",
]

MANIFEST_FORMAT = "lesionlens.trainset/1"
ProgressFn = Callable[[int, int, str], None]


class TrainSetConfig(BaseModel):
    """How CT studies become a training set. Build from a mapping with :meth:`from_mapping`.

    context_mm: slice-normal offsets (mm) of the stack channels, in channel order.
    image_format: ``"npy-hu"`` (float HU stacks) or ``"png16"`` (uint16 = window-mapped HU,
      needs exactly one channel).
    npy_dtype: storage dtype of ``.npy`` stacks; float16 keeps every integer HU in ±2048 exact.
    png_window: ``(center, width)`` HU window mapped linearly to 0..65535 for ``png16``.
    min_box_px: a cross-section whose box is narrower or shorter than this (px) is skipped.
    ratios: train/val/test weights of the patient split; seed: for split and negative sampling.
    negative_ratio: negatives kept per positive image, per split (0 keeps none).
    lung_hu / lung_min_fraction: a slice whose fraction of pixels inside ``lung_hu`` is at
      least ``lung_min_fraction`` is a lung slice; lung slices are sampled as negatives first.
    names: class names; ``None`` takes the sorted set of lesion labels (``["nodule"]`` if none).
    use_label_map: prefer exact label-map boxes when a case carries a label map.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_mm: tuple[float, ...] = (-2.5, 0.0, 2.5)
    image_format: Literal["npy-hu", "png16"] = "npy-hu"
    npy_dtype: Literal["float16", "float32"] = "float16"
    png_window: tuple[float, float] = (-600.0, 1600.0)
    min_box_px: float = 2.0
    ratios: tuple[float, ...] = (0.7, 0.15, 0.15)
    seed: int = 0
    negative_ratio: float = 1.0
    lung_hu: tuple[float, float] = (-950.0, -400.0)
    lung_min_fraction: float = 0.05
    names: list[str] | None = None
    use_label_map: bool = True

    @field_validator("context_mm")
    @classmethod
    def _ctx(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("needs at least one offset")
        return v

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        try:
            return normalize_ratios(v)
        except ConfigError as exc:
            raise ValueError(exc.reason) from None

    @field_validator("min_box_px", "negative_ratio", "lung_min_fraction")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if not np.isfinite(v) or v < 0:
            raise ValueError("must be a finite number >= 0")
        return v

    @field_validator("png_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[1] <= 0:
            raise ValueError("width must be > 0")
        return v

    @classmethod
    def from_mapping(cls, values: dict[str, object]) -> TrainSetConfig:
        """Validate ``values``; any problem is a :class:`ConfigError` naming the field."""
        try:
            cfg = cls(**values)  # type: ignore[arg-type]
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "trainset"
            raise ConfigError(f"trainset.{where}: {err['msg']}") from None
        return cfg

    @model_validator(mode="after")
    def _png_one_channel(self) -> TrainSetConfig:
        if self.image_format == "png16" and len(self.context_mm) != 1:
            raise ValueError("image_format 'png16' holds one channel; set context_mm to one offset or use 'npy-hu'")
        return self


@dataclass
class CTCase:
    """One CT series with its truth.

    volume.pixels: (K, R, C) float32 HU; volume.affine maps (k, r, c, 1) → LPS mm.
    label_map: optional (K, R, C) integer map, value ``v > 0`` = lesion ``truth.lesions[v-1]``
      (or the lesion whose ``extra["id"]`` — or ``extra["label_value"]`` — is ``v``); 0 = background.
    """

    volume: Volume
    truth: StudyTruth
    label_map: np.ndarray | None = None
    patient_id: str = ""
    source: str = ""
    problems: list[Problem] = field(default_factory=list)  # met while reading (kept in the summary)

    def resolved_patient_id(self) -> str:
        meta = self.volume.metadata.get("patient_id") if self.volume.metadata else None
        return self.patient_id or self.truth.patient_id or str(meta or "") or self.truth.series_instance_uid


@dataclass
class TrainSetSummary:
    """Counts of a build, per split. ``skipped_small``: cross-sections under ``min_box_px``."""

    out_dir: str
    fingerprint: str
    cases: int = 0
    patients: dict[str, int] = field(default_factory=dict)
    positives: dict[str, int] = field(default_factory=dict)
    negatives: dict[str, int] = field(default_factory=dict)
    negatives_from_negative_scans: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    negative_candidates: dict[str, int] = field(default_factory=dict)
    skipped_small: int = 0
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["problems"] = [p.to_dict() for p in self.problems]
        return d


class TrainSetBuild(NamedTuple):
    """What :func:`build_training_set` returns (unpacks as ``dataset, summary``)."""

    dataset: DetectionDataset
    summary: TrainSetSummary


# --------------------------------------------------------------------------- geometry


def _slice_plane(volume: Volume, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origin (3,) of slice k, unit normal (3,), and the (2, 3) pseudo-inverse of [row, col] steps."""
    a = volume.affine
    origin = a[:3, :3] @ np.array([k, 0.0, 0.0]) + a[:3, 3]
    m = a[:3, 1:3]  # columns: row_step, col_step
    normal = np.cross(m[:, 0], m[:, 1])
    normal /= np.linalg.norm(normal)
    return origin, normal, np.linalg.pinv(m)


def _ellipsoid_form(lesion: Lesion3D) -> np.ndarray:
    """(3, 3) matrix A with the lesion = {x : (x − c)ᵀ A (x − c) ≤ 1} (x in LPS mm).

    An ellipsoid when ``extra`` holds ``axes_mm`` (3 full axis lengths) and
    ``axis_directions_lps`` (3 unit rows); otherwise the sphere of ``diameter_mm``.
    """
    axes, dirs = lesion.extra.get("axes_mm"), lesion.extra.get("axis_directions_lps")
    if axes is not None and dirs is not None:
        a = np.asarray(axes, np.float64).reshape(3) / 2.0
        r = np.asarray(dirs, np.float64).reshape(3, 3)
        if np.all(a > 0):
            return r.T @ np.diag(1.0 / a**2) @ r
    radius = float(lesion.diameter_mm) / 2.0
    return np.eye(3) / (radius * radius)


def _ellipsoid_box(volume: Volume, lesion: Lesion3D, k: int) -> np.ndarray | None:
    """Unclipped xyxy px box of the lesion's cross-section with slice k's plane, or None.

    On the plane ``x = P_k + M y`` (``y`` = (row, col) index, ``M`` = [row_step, col_step]) the
    ellipsoid is ``(y − y0)ᵀ Q (y − y0) ≤ 1 − m`` with ``Q = Mᵀ A M``; its half-extent along
    index axis i is ``sqrt((1 − m) · (Q⁻¹)ᵢᵢ)``. For a sphere this is the circle of radius
    ``sqrt(r² − d²)`` at distance ``d`` from the centre.
    """
    a = volume.affine
    m_rc = a[:3, 1:3]
    w = a[:3, :3] @ np.array([k, 0.0, 0.0]) + a[:3, 3] - np.asarray(lesion.center_mm, np.float64)
    form = _ellipsoid_form(lesion)
    q = m_rc.T @ form @ m_rc
    b = m_rc.T @ form @ w
    q_inv = np.linalg.inv(q)
    y0 = -q_inv @ b
    level = 1.0 - (float(w @ form @ w) - float(b @ q_inv @ b))
    if level <= 0:
        return None
    half = np.sqrt(level * np.diag(q_inv))  # (rows, cols) px
    # Edge coordinates: index i covers [i, i + 1) in the box convention.
    return np.array([y0[1] + 0.5 - half[1], y0[0] + 0.5 - half[0], y0[1] + 0.5 + half[1], y0[0] + 0.5 + half[0]])


def _label_value(lesion: Lesion3D, index: int) -> int:
    v = lesion.extra.get("label_value", lesion.extra.get("id"))
    return int(v) if isinstance(v, (int, np.integer)) else index + 1


def _mask_box(mask: np.ndarray) -> np.ndarray | None:
    """(R, C) bool → xyxy edge box of its True pixels, or None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def cross_section_boxes(
    volume: Volume,
    lesions: Sequence[Lesion3D],
    k: int,
    *,
    label_map: np.ndarray | None = None,
    min_box_px: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Boxes of the lesions crossing slice ``k`` of ``volume``.

    With ``label_map`` ((K, R, C) int, see :class:`CTCase`) the boxes are the exact per-slice mask
    bounding boxes; without it they come from the ellipsoid/sphere truth and the affine
    (:func:`_ellipsoid_box`). Excluded lesions give no box. Returns ``(boxes (N, 4) float32 xyxy px clipped to the image, lesion_index (N,)
    int64 into lesions, n_skipped)`` where ``n_skipped`` counts cross-sections under ``min_box_px``.
    """
    _, rows, cols = volume.pixels.shape[:3]
    out: list[np.ndarray] = []
    idx: list[int] = []
    skipped = 0
    for i, lesion in enumerate(lesions):
        if lesion.excluded:
            continue
        if label_map is not None:
            box = _mask_box(label_map[k] == _label_value(lesion, i))
        else:
            box = _ellipsoid_box(volume, lesion, k)
        if box is None:
            continue
        box = np.clip(box, 0, [cols, rows, cols, rows])
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            continue  # outside the image
        if box[2] - box[0] < min_box_px or box[3] - box[1] < min_box_px:
            skipped += 1
            continue
        out.append(box)
        idx.append(i)
    return np.asarray(out, np.float32).reshape(-1, 4), np.asarray(idx, np.int64), skipped


def _near_lesion(volume: Volume, lesions: Sequence[Lesion3D], k: int, margin_mm: float) -> bool:
    """True when slice k lies within a lesion radius + margin of any lesion (excluded ones too)."""
    origin, normal, _ = _slice_plane(volume, k)
    for lesion in lesions:
        d = abs(float((np.asarray(lesion.center_mm, np.float64) - origin) @ normal))
        if d < float(lesion.diameter_mm) / 2.0 + margin_mm:
            return True
    return False


def lung_fraction(hu_slice: np.ndarray, lung_hu: tuple[float, float] = (-950.0, -400.0)) -> float:
    """Fraction of pixels of an (R, C) HU slice inside the lung HU range ``lung_hu``."""
    if hu_slice.size == 0:
        return 0.0
    return float(np.mean((hu_slice >= lung_hu[0]) & (hu_slice <= lung_hu[1])))


def context_stack(volume: Volume, k: int, offsets_mm: Sequence[float]) -> np.ndarray:
    """(C, R, C) float32 HU stack for slice k: channel i at ``offsets_mm[i]`` along the slice axis.

    Delegates to :func:`lesionlens.dicom.stack.neighbour_stack`: values between slices are
    linearly interpolated, offsets past the first/last slice repeat the edge slice.
    """
    return neighbour_stack(volume, k, list(offsets_mm))


# --------------------------------------------------------------------------- writing


def safe_name_part(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return (s or "x")[:limit]


def _image_stem(patient_id: str, series_uid: str, k: int) -> str:
    tag = hashlib.sha1(series_uid.encode()).hexdigest()[:8]
    return f"{safe_name_part(patient_id)}__{tag}__s{k:04d}"


def _write_image(path: Path, stack: np.ndarray, config: TrainSetConfig) -> None:
    try:
        if config.image_format == "npy-hu":
            np.save(path, stack.astype(config.npy_dtype))
        else:
            from PIL import Image

            c, w = config.png_window
            Image.fromarray(apply_window(stack[0], c, w, "LINEAR_EXACT", bits=16)).save(path, format="PNG")
    except OSError as exc:
        raise OutputError(f"cannot write image: {exc}", path=path) from None


def write_yolo_label_file(path: Path, boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> None:
    """Write ``class cx cy w h`` lines (normalised, 6 decimals); an empty file for no boxes."""
    from lesionlens.data.boxes import xyxy_to_yolo

    lines = [
        f"{int(c)} {v[0]:.6f} {v[1]:.6f} {v[2]:.6f} {v[3]:.6f}"
        for c, v in zip(labels, xyxy_to_yolo(boxes, width, height))
    ]
    path.write_text("".join(line + "\n" for line in lines))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_fingerprint(entries: Iterable[dict[str, object]], header: dict[str, object] | None = None) -> str:
    """sha256 (hex) over the manifest entries sorted by image path, plus the header fields.

    Entries carry each image's sha256 and boxes, so any change of pixels, boxes, split or
    source changes the fingerprint; the order images were written in does not.
    """
    items = sorted(entries, key=lambda e: str(e["image"]))
    doc = {"header": header or {}, "images": items}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- sources


@dataclass
class LazyCTCase:
    """A case known by its truth whose pixels are read only when ``load()`` is called.

    Folder and LUNA16 sources become these, so a build holds one volume in memory at a time.
    """

    truth: StudyTruth
    patient_id: str
    source: str
    load: Callable[[], CTCase]


def _label_map_for(folder: Path, vol: Volume, problems: list[Problem]) -> np.ndarray | None:
    """The exact label map saved beside the truth (``labels.npz``: ``labels`` (K, R, C) and the
    ``affine`` it was drawn on), in the read volume's slice order; None when there is none or it
    does not fit this volume (then noted in ``problems`` and the truth's ellipsoids are used)."""
    path = folder / "labels.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            labels, affine = np.asarray(z["labels"]), np.asarray(z["affine"], np.float64)
    except (OSError, ValueError, KeyError) as exc:
        problems.append(Problem("warning", "label-map", f"label map not used: {exc}", str(path)))
        return None
    if labels.shape != vol.pixels.shape:
        problems.append(Problem("warning", "label-map", f"label map not used: shape {labels.shape} differs from "
                                                        f"the series' {vol.pixels.shape}", str(path)))
        return None
    if np.allclose(affine, vol.affine, atol=1e-3):
        return labels
    flipped = affine.copy()  # the same grid read in the other slice order
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 0] * (labels.shape[0] - 1)
    flipped[:3, 0] = -affine[:3, 0]
    if np.allclose(flipped, vol.affine, atol=1e-3):
        return labels[::-1].copy()
    problems.append(Problem("warning", "label-map", "label map not used: its geometry differs from the series'",
                            str(path)))
    return None


def _load_series(folder: Path, truth: StudyTruth, truth_path: Path) -> CTCase:
    """Read the series of ``truth`` from ``folder`` (DICOM, read through :mod:`lesionlens.dicom`)."""
    from lesionlens.dicom.study import read_study

    result = read_study([folder])
    for vol in result.volumes:
        if vol.series_instance_uid == truth.series_instance_uid:
            if vol.pixels.ndim != 3:
                raise DataFormatError("the truth's series is not a grey CT volume", path=truth_path)
            problems = list(result.problems)
            return CTCase(vol, truth, _label_map_for(folder, vol, problems), source=str(folder), problems=problems)
    raise DataFormatError(
        f"series {truth.series_instance_uid} named by the truth was not found under {folder}", path=truth_path
    )


def discover_ct_cases(root: Path) -> list[LazyCTCase]:
    """Every CT ``truth.json`` under ``root`` (sorted) → a case whose series is read lazily.

    Truth files are found and parsed by :func:`lesionlens.data.formats.dicom_truth.read_truth_folder`;
    the series is looked up by its UID among the DICOM files of the truth file's folder.
    """
    from lesionlens.data.formats.dicom_truth import read_truth_folder

    found = read_truth_folder(root)
    ct_files = [f for f in found.truth_files if f.name == "truth.json"]
    refs = []
    for tp, truth in zip(ct_files, found.studies):
        pid = truth.patient_id or truth.series_instance_uid
        refs.append(LazyCTCase(truth, pid, str(tp.parent), partial(_load_series, tp.parent, truth, tp)))
    return refs


def luna16_cases(root: str | Path) -> list[LazyCTCase]:
    """LUNA16 series (``annotations.csv`` + ``*.mhd`` volumes under ``root``) as lazy cases.

    Series annotated but without a volume are left out. LUNA16 has no patient ids: each
    series counts as its own patient (the series uid).
    """
    from lesionlens.data.formats.luna16 import read_luna16
    from lesionlens.dicom.formats import read_mhd

    luna = read_luna16(root)

    def load(truth: StudyTruth, path: Path) -> CTCase:
        vol = read_mhd(path)
        vol.series_instance_uid = vol.series_instance_uid or truth.series_instance_uid
        return CTCase(vol, truth, None, source=str(path))

    out = []
    for t in luna.studies:
        path = luna.volumes.get(t.series_instance_uid)
        if path is not None:
            out.append(LazyCTCase(t, t.patient_id or t.series_instance_uid, str(path), partial(load, t, path)))
    return out


def _same(case: CTCase) -> CTCase:
    return case


def _refs_from(sources: Iterable[CTCase | LazyCTCase | str | Path]) -> list[LazyCTCase]:
    refs: list[LazyCTCase] = []
    for src in sources:
        if isinstance(src, LazyCTCase):
            refs.append(src)
        elif isinstance(src, CTCase):
            refs.append(LazyCTCase(src.truth, src.resolved_patient_id(), src.source, partial(_same, src)))
        else:
            refs.extend(discover_ct_cases(Path(src)))
    return refs


# --------------------------------------------------------------------------- build


@dataclass
class _Candidate:
    ref: int
    k: int
    lung: float
    negative_scan: bool


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``; refuse a non-empty folder unless it holds an earlier training set."""
    import shutil

    if out_dir.exists() and any(out_dir.iterdir()):
        manifest = out_dir / "manifest.json"
        try:
            ours = json.loads(manifest.read_text()).get("format") == MANIFEST_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise OutputError("output folder is not empty and holds no LesionLens training set", path=out_dir)
        for sub in ("images", "labels"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    for split in SPLIT_NAMES:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)


def _class_names(refs: Sequence[LazyCTCase], config: TrainSetConfig) -> list[str]:
    if config.names:
        return list(config.names)
    found = {les.label for r in refs for les in r.truth.lesions if not les.excluded}
    return sorted(found) or ["nodule"]


def _order_key(seed: int, series_uid: str, k: int) -> bytes:
    return hashlib.sha256(f"{seed}\x00{series_uid}\x00{k}".encode()).digest()


def _choose_negatives(
    candidates: list[_Candidate], n: int, refs: Sequence[LazyCTCase], config: TrainSetConfig
) -> list[_Candidate]:
    """Deterministically take ``n`` candidates: lung slices first, each tier in seeded-hash order."""

    def key(c: _Candidate) -> tuple[int, bytes]:
        tier = 0 if c.lung >= config.lung_min_fraction else 1
        return tier, _order_key(config.seed, refs[c.ref].truth.series_instance_uid, c.k)

    return sorted(candidates, key=key)[:n]


class _Writer:
    """Writes images and labels and collects manifest entries and annotations."""

    def __init__(self, out_dir: Path, config: TrainSetConfig, names: list[str]):
        self.out_dir, self.config, self.names = out_dir, config, names
        self.entries: list[dict[str, object]] = []
        self.dataset = DetectionDataset(names=list(names), splits={s: [] for s in SPLIT_NAMES})

    def emit(self, case: CTCase, patient_id: str, split: str, k: int, boxes: np.ndarray, lesion_idx: np.ndarray, lung: float) -> None:
        vol = case.volume
        stem = _image_stem(patient_id, case.truth.series_instance_uid or vol.series_instance_uid, k)
        suffix = ".npy" if self.config.image_format == "npy-hu" else ".png"
        image_rel = f"images/{split}/{stem}{suffix}"
        label_rel = f"labels/{split}/{stem}.txt"
        stack = context_stack(vol, k, self.config.context_mm)
        _write_image(self.out_dir / image_rel, stack, self.config)
        height, width = int(vol.pixels.shape[1]), int(vol.pixels.shape[2])
        lesions = case.truth.lesions
        labels = np.array([self.names.index(lesions[i].label) for i in lesion_idx], np.int64)
        try:
            write_yolo_label_file(self.out_dir / label_rel, boxes, labels, width, height)
        except OSError as exc:
            raise OutputError(f"cannot write labels: {exc}", path=self.out_dir / label_rel) from None
        spacing = [float(v) for v in vol.spacing_mm]
        diam = [
            round(float(((b[2] - b[0]) * spacing[2] + (b[3] - b[1]) * spacing[1]) / 2), 3) for b in boxes
        ]
        sop = vol.sop_instance_uids[k] if k < len(vol.sop_instance_uids) else ""
        study = case.truth.study_instance_uid or vol.study_instance_uid
        series = case.truth.series_instance_uid or vol.series_instance_uid
        entry: dict[str, object] = {
            "image": image_rel,
            "label": label_rel,
            "split": split,
            "patient_id": patient_id,
            "study_instance_uid": study,
            "series_instance_uid": series,
            "sop_instance_uid": sop,
            "slice_index": int(k),
            "width": width,
            "height": height,
            "spacing_mm": [round(v, 6) for v in spacing],
            "positive": bool(len(boxes)),
            "boxes": [[round(float(v), 3) for v in b] for b in boxes],
            "classes": [int(c) for c in labels],
            "lesion_index": [int(i) for i in lesion_idx],
            "cross_section_mm": diam,
            "lung_fraction": round(lung, 4),
            "sha256": file_sha256(self.out_dir / image_rel),
        }
        self.entries.append(entry)
        self.dataset.splits[split].append(
            ImageAnnotation(
                image=image_rel,
                width=width,
                height=height,
                boxes=boxes,
                labels=labels,
                patient_id=patient_id,
                study_instance_uid=study,
                series_instance_uid=series,
                sop_instance_uid=sop,
                slice_index=int(k),
                extra={"lesion_index": entry["lesion_index"], "cross_section_mm": diam, "spacing_mm": spacing},
            )
        )


def _write_yaml_and_manifest(out_dir: Path, config: TrainSetConfig, names: list[str], entries: list[dict[str, object]]) -> str:
    header: dict[str, object] = {
        "format": config.image_format,
        "channels": len(config.context_mm),
        "context_mm": [float(v) for v in config.context_mm],
        "names": list(names),
    }
    if config.image_format == "png16":
        header["png_window"] = [float(v) for v in config.png_window]
    return write_dataset_files(out_dir, header, names, config, entries)


def write_dataset_files(out_dir: Path, header: dict[str, object], names: Sequence[str], config: BaseModel,
                        entries: list[dict[str, object]]) -> str:
    """``dataset.yaml`` (YOLO layout + ``header``, class ``names`` by index) and ``manifest.json``
    (entries, resolved ``config``, fingerprint) of a built training set → the fingerprint.
    Shared by the CT and the 2D builders."""
    import yaml

    fingerprint = manifest_fingerprint(entries, header)
    doc = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(names)),
        **{k: v for k, v in header.items() if k != "names"},
        "fingerprint": fingerprint,
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "fingerprint": fingerprint,
        "header": header,
        "config": config.model_dump(mode="json"),
        "images": sorted(entries, key=lambda e: str(e["image"])),
    }
    try:
        (out_dir / "dataset.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    except OSError as exc:
        raise OutputError(f"cannot write dataset files: {exc}", path=out_dir) from None
    return fingerprint


def count_splits(summary: Any, assignment: dict[str, str], dataset: DetectionDataset) -> None:
    """Fill ``summary.patients / positives / negatives / boxes`` per split of ``dataset``
    (``assignment``: patient → split). Shared by the CT and the 2D builders' summaries."""
    for s, items in dataset.splits.items():
        summary.patients[s] = sum(1 for sp in assignment.values() if sp == s)
        summary.positives[s] = sum(1 for im in items if len(im.boxes))
        summary.negatives[s] = len(items) - summary.positives[s]
        summary.boxes[s] = sum(len(im.boxes) for im in items)


def build_training_set(
    sources: Iterable[CTCase | LazyCTCase | str | Path],
    out_dir: str | Path,
    config: TrainSetConfig | None = None,
    *,
    progress: ProgressFn | None = None,
) -> TrainSetBuild:
    """Turn CT cases with 3D truth into a YOLO-layout 2D/2.5D training set under ``out_dir``.

    sources: :class:`CTCase` / :class:`LazyCTCase` objects (e.g. from :func:`luna16_cases`)
      and/or folders of DICOM series with a ``lesionlens.truth/1`` ``truth.json`` beside each
      series' files.
    progress: optional ``(done, total, description)`` callback, called once per case read.
    Returns ``(dataset, summary)``: the images per split as :class:`ImageAnnotation` (paths
    relative to ``out_dir``) and the counts. Raises :class:`DataFormatError` when no case is
    found or a lesion label is not among ``config.names``.
    """
    cfg = config or TrainSetConfig()
    out = Path(out_dir)
    sources = list(sources)
    refs = _refs_from(sources)
    if not refs:
        where = ", ".join(str(s) for s in sources if isinstance(s, (str, Path))) or None
        raise DataFormatError("no CT series with truth (truth.json) found", path=where)
    seen: dict[str, str] = {}
    for r in refs:
        uid = r.truth.series_instance_uid
        if uid in seen:
            raise DataFormatError(f"series {uid} is given twice (also from {seen[uid] or 'memory'})", path=r.source or None)
        seen[uid] = r.source
    names = _class_names(refs, cfg)
    for r in refs:
        for les in r.truth.lesions:
            if not les.excluded and les.label not in names:
                raise DataFormatError(f"lesion label {les.label!r} is not one of the names {names}", path=r.source or None)
    strata: dict[str, str] = {}
    for r in refs:
        pos = any(not les.excluded for les in r.truth.lesions)
        strata[r.patient_id] = "pos" if pos or strata.get(r.patient_id) == "pos" else "neg"
    assignment = split_patients([r.patient_id for r in refs], cfg.ratios, cfg.seed, strata=strata)
    prepare_out_dir(out)

    writer = _Writer(out, cfg, names)
    summary = TrainSetSummary(out_dir=str(out), fingerprint="", cases=len(refs))
    candidates: dict[str, list[_Candidate]] = {s: [] for s in SPLIT_NAMES}
    margin = max(abs(float(v)) for v in cfg.context_mm)
    total = len(refs)
    for i, ref in enumerate(refs):
        case = ref.load()
        summary.problems.extend(case.problems)
        split = assignment[ref.patient_id]
        lmap = case.label_map if cfg.use_label_map else None
        if lmap is not None and lmap.shape != case.volume.pixels.shape[:3]:
            raise DataFormatError(
                f"label map shape {lmap.shape} differs from the volume {case.volume.pixels.shape[:3]}", path=ref.source or None
            )
        lesions = case.truth.lesions
        for k in range(case.volume.pixels.shape[0]):
            boxes, idx, skipped = cross_section_boxes(case.volume, lesions, k, label_map=lmap, min_box_px=cfg.min_box_px)
            summary.skipped_small += skipped
            lung = lung_fraction(case.volume.pixels[k], cfg.lung_hu)
            if len(boxes):
                writer.emit(case, ref.patient_id, split, k, boxes, idx, lung)
            elif not skipped and not _near_lesion(case.volume, lesions, k, margin) and not (
                lmap is not None and lmap[k].any()
            ):
                candidates[split].append(_Candidate(i, k, lung, not lesions))
        if progress is not None:
            progress(i + 1, total, f"read {ref.source or ref.truth.series_instance_uid}")

    chosen: dict[int, list[tuple[str, _Candidate]]] = {}
    for split in SPLIT_NAMES:
        n_pos = len(writer.dataset.splits[split])
        n_neg = round(cfg.negative_ratio * n_pos)
        summary.negative_candidates[split] = len(candidates[split])
        for c in _choose_negatives(candidates[split], n_neg, refs, cfg):
            chosen.setdefault(c.ref, []).append((split, c))
    for n, (ri, picks) in enumerate(sorted(chosen.items())):
        case = refs[ri].load()
        for split, c in picks:
            writer.emit(case, refs[ri].patient_id, split, c.k, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), c.lung)
        if progress is not None:
            progress(n + 1, len(chosen), "write negatives")

    summary.fingerprint = _write_yaml_and_manifest(out, cfg, names, writer.entries)
    count_splits(summary, assignment, writer.dataset)
    for s in writer.dataset.splits:
        summary.negatives_from_negative_scans[s] = sum(
            1 for picks in chosen.values() for sp, c in picks if sp == s and c.negative_scan
        )
    return TrainSetBuild(writer.dataset, summary)

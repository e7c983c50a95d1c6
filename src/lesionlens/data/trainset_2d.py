"""From 2D DICOM radiographs (MG/DX/CR) with box truth to a 1-channel detection training set.

The 2D counterpart of :func:`lesionlens.data.trainset.build_training_set`. Inputs are DICOM
files and folders; every image is paired with a ``lesionlens.truth2d/1`` truth file
(``<name>.truth.json``, see :mod:`lesionlens.data.formats.dicom_truth`) found in the input
folders (or beside an input file): first by SOP Instance UID, else by the truth's ``image``
field (the DICOM file name relative to the truth file).

Each image becomes ``images/<split>/<name>.npy``: ``(1, H, W)`` float32 (or float16) of the
*physical stored values* (rescale applied), negated for MONOCHROME1 so that dense tissue is
bright whatever the photometric — the same convention as
:meth:`lesionlens.engine.predict.Predictor.predict_image`. The model's ``"gray"`` input spec
normalises each image by its own 0.5/99.5 percentiles, so no window is applied here (an affine
change of the values, such as the negation, changes nothing after normalisation but the sign).

With ``max_side`` an image whose longer side exceeds it is shrunk by area averaging (PIL
``BOX``) to a longer side of ``max_side``; its boxes are scaled by the per-axis factors, which
the manifest records (``scale: [sx, sy]``, written px = source px × scale).

Images without a truth file are skipped and named in the summary (``skipped_no_truth``); an
unreadable file is reported in ``summary.problems`` and the rest go on. Images with no lesion
are kept as negatives (empty label file). Patients (header PatientID, else the truth's) are
split train/val/test by :func:`~lesionlens.data.split.split_patients`, stratified by "has a
lesion", with the same ratios/seed semantics as the CT builder.

Output layout (manifest format ``lesionlens.trainset/1``, shared with the CT builder, so
``data stats`` and ``data split`` work on it)::

    dataset.yaml                 path, train/val/test, names, channels: 1, format: npy-gray, kind: 2d
    images/<split>/<name>.npy    (1, H, W) stored values (MONOCHROME1 negated)
    labels/<split>/<name>.txt    "class cx cy w h" normalised (empty file for a negative)
    manifest.json                per image: patient/UIDs, source, scale, boxes, sha256; fingerprint
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.split import SPLIT_NAMES, normalize_ratios, split_patients
from lesionlens.data.trainset import (
    count_splits,
    file_sha256,
    prepare_out_dir,
    safe_name_part,
    write_dataset_files,
    write_yolo_label_file,
)
from lesionlens.dicom.select import SelectionRules
from lesionlens.dicom.types import Problem, Volume
from lesionlens.errors import ConfigError, DataFormatError, LesionLensError, OutputError

__all__ = [
    "IMAGE_FORMAT_2D",
    "RULES_2D",
    "TrainSet2DBuild",
    "TrainSet2DConfig",
    "TrainSet2DSummary",
    "build_training_set_2d",
    "downscale",
]

IMAGE_FORMAT_2D = "npy-gray"
ProgressFn = Callable[[int, int, str], None]

#: Projection images, DERIVED For-Presentation ones too (as ``Detector.selection_rules`` for 2D models).
RULES_2D = SelectionRules(
    modalities=("DX", "CR", "MG", "DR", "RF", "OT", "SC"), allow_secondary=True, allow_derived=True
)

_STAGING = "_staging"


def _default_names() -> list[str]:
    from lesionlens.synth.dicom2d import CLASS_NAMES_2D

    return list(CLASS_NAMES_2D)


class TrainSet2DConfig(BaseModel):
    """How 2D radiographs become a training set. Build from a mapping with :meth:`from_mapping`.

    ratios / seed: patient split (as :class:`~lesionlens.data.trainset.TrainSetConfig`).
    max_side: shrink images whose longer side exceeds this many px (area averaging); None keeps
      the native size.
    npy_dtype: storage dtype. float16 is exact for integers up to 2048 only (12-bit data and
      above lose low bits) and overflows past ±65504: an image that would overflow is kept in
      float32 (recorded per image in the manifest).
    names: class names (label indices); default ``CLASS_NAMES_2D``. A truth label outside them is
      an error.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ratios: tuple[float, ...] = (0.7, 0.15, 0.15)
    seed: int = 0
    max_side: int | None = None
    npy_dtype: Literal["float32", "float16"] = "float32"
    names: list[str] = Field(default_factory=_default_names)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        try:
            return normalize_ratios(v)
        except ConfigError as exc:
            raise ValueError(exc.reason) from None

    @field_validator("max_side")
    @classmethod
    def _max_side(cls, v: int | None) -> int | None:
        if v is not None and v < 32:
            raise ValueError("must be at least 32 px")
        return v

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list of distinct names")
        return v

    @classmethod
    def from_mapping(cls, values: dict[str, object]) -> TrainSet2DConfig:
        """Validate ``values``; any problem is a :class:`ConfigError` naming the field."""
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "trainset"
            raise ConfigError(f"trainset.{where}: {err['msg']}") from None


@dataclass
class TrainSet2DSummary:
    """Counts of a 2D build, per split, and what was left out.

    skipped_no_truth: image files without a truth file (not used). truth_without_image: truth
    files whose image was not found (or not readable). downscaled: images shrunk by ``max_side``.
    """

    out_dir: str
    fingerprint: str
    images: int = 0
    patients: dict[str, int] = field(default_factory=dict)
    positives: dict[str, int] = field(default_factory=dict)
    negatives: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    downscaled: int = 0
    skipped_no_truth: list[str] = field(default_factory=list)
    truth_without_image: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["problems"] = [p.to_dict() for p in self.problems]
        return d


class TrainSet2DBuild(NamedTuple):
    """What :func:`build_training_set_2d` returns (unpacks as ``dataset, summary``)."""

    dataset: DetectionDataset
    summary: TrainSet2DSummary


# --------------------------------------------------------------------------- helpers


def downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float, float]:
    """(H, W) float32 → (image shrunk so its longer side is ``max_side``, sx, sy) by area
    averaging; unchanged (scale 1) when it already fits. ``sx = new W / W``, ``sy = new H / H``."""
    h, w = image.shape
    if max_side is None or max(h, w) <= max_side:
        return image, 1.0, 1.0
    from PIL import Image

    s = max_side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out = np.asarray(Image.fromarray(np.ascontiguousarray(image, np.float32), mode="F").resize((nw, nh), Image.Resampling.BOX))
    return out.astype(np.float32, copy=False), nw / w, nh / h


@dataclass
class _Truth:
    path: Path
    ann: ImageAnnotation
    labels: np.ndarray  # indices into config.names
    used: bool = False


def _read_truths(roots: list[Path], names: list[str], problems: list[Problem]) -> list[_Truth]:
    """Every ``*.truth.json`` under the folder roots (and beside the file roots), parsed."""
    from lesionlens.data.formats.dicom_truth import read_truth_2d

    files: set[Path] = set()
    for r in roots:
        if r.is_dir():
            files.update(p for p in r.rglob("*.truth.json") if p.is_file())
        else:
            beside = r.with_name(r.stem + ".truth.json")
            if beside.is_file():
                files.add(beside)
    out = []
    for f in sorted(files):
        try:
            ann, file_names = read_truth_2d(f, check_image=False)
        except LesionLensError as exc:
            problems.append(Problem.from_error(exc, path=f))
            continue
        unknown = sorted({file_names[int(i)] for i in ann.labels} - set(names))
        if unknown:
            raise DataFormatError(f"lesion label(s) {unknown} are not among the names {names}", path=f)
        labels = np.array([names.index(file_names[int(i)]) for i in ann.labels], np.int64)
        out.append(_Truth(f, ann, labels))
    return out


def _image_files(roots: list[Path]) -> list[tuple[Path, Path]]:
    """(file, its input root) for every candidate DICOM file (truth/JSON files and DICOMDIR left out)."""
    out: list[tuple[Path, Path]] = []
    for r in roots:
        files = sorted(p for p in r.rglob("*") if p.is_file()) if r.is_dir() else [r]
        for f in files:
            if f.suffix.lower() == ".json" or f.name.upper() == "DICOMDIR" or f.name.startswith("."):
                continue
            out.append((f, r if r.is_dir() else r.parent))
    return out


def _key(path: Path | str) -> str:
    return str(Path(path).resolve())


@dataclass
class _Staged:
    entry: dict[str, object]
    ann: ImageAnnotation
    stem: str


class _Writer2D:
    def __init__(self, out: Path, config: TrainSet2DConfig):
        self.out, self.config = out, config
        self.staging = out / "images" / _STAGING
        self.staging.mkdir(parents=True, exist_ok=True)
        self.staged: list[_Staged] = []
        self.stems: set[str] = set()

    def stage(self, vol: Volume, k: int, truth: _Truth, source: Path, root: Path) -> _Staged:
        sop = vol.sop_instance_uids[k] if k < len(vol.sop_instance_uids) else truth.ann.sop_instance_uid
        pid = str(vol.metadata.get("patient_id") or "") or truth.ann.patient_id or sop
        stem = f"{safe_name_part(pid)}__{hashlib.sha1(f'{sop}/{k}'.encode()).hexdigest()[:8]}"
        if stem in self.stems:
            raise DataFormatError(f"image {sop} is given twice", path=source)
        invert = bool(vol.display.invert)
        img = vol.pixels[k].astype(np.float32)
        if invert:
            img = -img
        h0, w0 = img.shape
        img, sx, sy = downscale(img, self.config.max_side)
        h, w = img.shape
        dtype = self.config.npy_dtype
        if dtype == "float16" and float(np.max(np.abs(img), initial=0.0)) > 65504.0:
            dtype = "float32"
        try:
            np.save(self.staging / f"{stem}.npy", img[None].astype(dtype))
        except OSError as exc:
            raise OutputError(f"cannot write image: {exc}", path=self.staging / f"{stem}.npy") from None
        boxes = truth.ann.boxes.astype(np.float64) * np.array([sx, sy, sx, sy])
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32).reshape(-1, 4)
        labels = truth.labels
        sp = vol.spacing_mm
        spacing = [float(sp[-2]) / sy, float(sp[-1]) / sx]
        try:
            rel_source = source.relative_to(root).as_posix()
        except ValueError:
            rel_source = source.name
        raw_sizes = truth.ann.extra.get("sizes_mm")
        sizes = list(raw_sizes) if isinstance(raw_sizes, (list, tuple)) else []
        entry: dict[str, object] = {
            "patient_id": pid,
            "study_instance_uid": vol.study_instance_uid or truth.ann.study_instance_uid,
            "series_instance_uid": vol.series_instance_uid or truth.ann.series_instance_uid,
            "sop_instance_uid": sop,
            "slice_index": int(k),
            "source": rel_source,
            "modality": vol.modality,
            "photometric": vol.display.source_photometric,
            "inverted": invert,
            "width": int(w),
            "height": int(h),
            "source_width": int(w0),
            "source_height": int(h0),
            "scale": [round(sx, 9), round(sy, 9)],
            "spacing_mm": [round(v, 6) for v in spacing],
            "dtype": dtype,
            "positive": bool(len(boxes)),
            "boxes": [[round(float(v), 3) for v in b] for b in boxes],
            "classes": [int(c) for c in labels],
            "sizes_mm": [None if s is None else float(s) for s in sizes],
            "sha256": file_sha256(self.staging / f"{stem}.npy"),
        }
        ann = ImageAnnotation(
            image="", width=int(w), height=int(h), boxes=boxes, labels=labels.copy(), patient_id=pid,
            study_instance_uid=str(entry["study_instance_uid"]), series_instance_uid=str(entry["series_instance_uid"]),
            sop_instance_uid=sop, slice_index=int(k),
            extra={"spacing_mm": entry["spacing_mm"], "scale": entry["scale"], "source": rel_source},
        )
        staged = _Staged(entry, ann, stem)
        self.stems.add(stem)
        self.staged.append(staged)
        return staged

    def place(self, assignment: dict[str, str], dataset: DetectionDataset) -> list[dict[str, object]]:
        """Move every staged image into its patient's split; write its label file."""
        entries = []
        for st in self.staged:
            split = assignment[str(st.entry["patient_id"])]
            image_rel = f"images/{split}/{st.stem}.npy"
            label_rel = f"labels/{split}/{st.stem}.txt"
            try:
                (self.staging / f"{st.stem}.npy").replace(self.out / image_rel)
                write_yolo_label_file(self.out / label_rel, st.ann.boxes, st.ann.labels, st.ann.width, st.ann.height)
            except OSError as exc:
                raise OutputError(f"cannot write {image_rel}: {exc}", path=self.out) from None
            st.ann.image = image_rel
            dataset.splits[split].append(st.ann)
            entries.append({"image": image_rel, "label": label_rel, "split": split, **st.entry})
        shutil.rmtree(self.staging, ignore_errors=True)
        return entries


def _write_yaml_and_manifest_2d(out: Path, config: TrainSet2DConfig, entries: list[dict[str, object]]) -> str:
    header: dict[str, object] = {
        "format": IMAGE_FORMAT_2D,
        "channels": 1,
        "kind": "2d",
        "max_side": config.max_side,
        "names": list(config.names),
    }
    return write_dataset_files(out, header, config.names, config, entries)


# --------------------------------------------------------------------------- build


def build_training_set_2d(
    sources: Iterable[str | Path],
    out: str | Path,
    config: TrainSet2DConfig | None = None,
    *,
    progress: ProgressFn | None = None,
) -> TrainSet2DBuild:
    """Turn 2D DICOM images (MG, DX, CR, …) with ``*.truth.json`` box truth into a 1-channel
    YOLO-layout training set under ``out`` (see the module docstring for the conventions).

    sources: DICOM files and/or folders (searched recursively); truth files are looked for in the
      folders and beside the files.
    progress: optional ``(done, total, description)`` callback, called once per file read.
    Returns ``(dataset, summary)``. Raises :class:`DataFormatError` when no input or no truth file
    is found, when a truth label is not among ``config.names``, or when no image could be paired
    with a truth; per-file trouble (unreadable file, image without truth, truth of another size)
    goes into the summary instead.
    """
    from lesionlens.dicom.study import read_study

    cfg = config or TrainSet2DConfig()
    out_dir = Path(out)
    roots = [Path(s) for s in sources]
    for r in roots:
        if not r.exists():
            raise DataFormatError("no such file or folder", path=r)
    if not roots:
        raise DataFormatError("no input given")
    where = ", ".join(str(r) for r in roots)
    summary = TrainSet2DSummary(out_dir=str(out_dir), fingerprint="")
    truths = _read_truths(roots, list(cfg.names), summary.problems)
    if not truths:
        raise DataFormatError("no 2D truth file (*.truth.json) found", path=where)
    by_sop: dict[str, _Truth] = {}
    by_image: dict[str, _Truth] = {}
    for t in truths:
        if t.ann.sop_instance_uid:
            by_sop.setdefault(t.ann.sop_instance_uid, t)
        by_image.setdefault(_key(t.path.parent / t.ann.image), t)
    files = _image_files(roots)
    prepare_out_dir(out_dir)
    writer = _Writer2D(out_dir, cfg)
    try:
        for n, (f, root) in enumerate(files):
            try:
                read = read_study([str(f)], rules=RULES_2D, workers=1)
            except LesionLensError as exc:
                summary.problems.append(Problem.from_error(exc, path=f))
                read = None
            if read is not None:
                summary.problems.extend(read.problems)
                for vol in read.volumes:
                    _pair_volume(vol, f, root, by_sop, by_image, writer, summary)
            if progress is not None:
                progress(n + 1, len(files), f"read {f.name}")
        if not writer.staged:
            raise DataFormatError(
                "no 2D image could be paired with its truth (see the problems and skipped files)", path=where
            )
        strata: dict[str, str] = {}
        for st in writer.staged:
            pid = str(st.entry["patient_id"])
            strata[pid] = "pos" if st.entry["positive"] or strata.get(pid) == "pos" else "neg"
        assignment = split_patients(list(strata), cfg.ratios, cfg.seed, strata=strata)
        dataset = DetectionDataset(names=list(cfg.names), splits={s: [] for s in SPLIT_NAMES})
        entries = writer.place(assignment, dataset)
    finally:
        shutil.rmtree(writer.staging, ignore_errors=True)
    summary.truth_without_image = [str(t.path) for t in truths if not t.used]
    summary.fingerprint = _write_yaml_and_manifest_2d(out_dir, cfg, entries)
    summary.images = len(entries)
    summary.downscaled = sum(1 for e in entries if e["scale"] != [1.0, 1.0])
    count_splits(summary, assignment, dataset)
    return TrainSet2DBuild(dataset, summary)


def _pair_volume(
    vol: Volume,
    f: Path,
    root: Path,
    by_sop: dict[str, _Truth],
    by_image: dict[str, _Truth],
    writer: _Writer2D,
    summary: TrainSet2DSummary,
) -> None:
    """Stage every frame of ``vol`` that has a truth; name the others in the summary."""
    if vol.pixels.ndim != 3:
        summary.problems.append(Problem("warning", "not-grey", "colour image left out (2D training sets are grey)", str(f)))
        return
    n_frames = vol.pixels.shape[0]
    for k in range(n_frames):
        sop = vol.sop_instance_uids[k] if k < len(vol.sop_instance_uids) else ""
        src = vol.sources[k] if k < len(vol.sources) else str(f)
        truth = by_sop.get(sop) if sop else None
        if truth is None and n_frames == 1:
            truth = by_image.get(_key(src))
        label = str(f) if n_frames == 1 else f"{f} (frame {k + 1})"
        if truth is None:
            summary.skipped_no_truth.append(label)
            continue
        h, w = vol.pixels.shape[1:3]
        if (truth.ann.width, truth.ann.height) != (w, h):
            summary.problems.append(Problem(
                "error", "truth-size",
                f"truth {truth.path.name} is for a {truth.ann.width}x{truth.ann.height} image, this one is {w}x{h}; left out",
                label,
            ))
            continue
        if truth.used:
            summary.problems.append(Problem("warning", "duplicate", f"a second image for truth {truth.path.name}; left out", label))
            continue
        try:
            writer.stage(vol, k, truth, Path(src) if Path(src).exists() else f, root)
        except DataFormatError as exc:
            summary.problems.append(Problem.from_error(exc, severity="warning", path=label))
            continue
        truth.used = True

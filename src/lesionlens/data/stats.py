"""Reading a YOLO-layout training set back, and its statistics.

:func:`read_training_set` reads a dataset written by
:func:`~lesionlens.data.trainset.build_training_set` (patients, slices and boxes come from its
``manifest.json``) or any YOLO dataset (``dataset.yaml`` + ``images/<split>/`` +
``labels/<split>/``; without a manifest the patient of an image is the part of its file name
before ``__``, else the whole name, i.e. every image counts as its own patient).

:func:`compute_stats` counts per split: images, positives/negatives, boxes, patients, boxes per
class, and the lesion sizes (equivalent diameter ``(w + h) / 2`` of each box, in mm when the
pixel spacing is known, else in px). :func:`save_size_histogram` draws them (matplotlib Agg).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.formats.yolo import label_path_for, read_label_file
from lesionlens.errors import DataFormatError, OutputError

__all__ = ["DatasetStats", "SplitStats", "compute_stats", "dataset_stats", "read_training_set", "save_size_histogram"]

IMAGE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _read_yaml(root: Path) -> tuple[Path, dict[str, object]]:
    import yaml

    path = root / "dataset.yaml" if root.is_dir() else root
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataFormatError("dataset.yaml not found", path=path) from None
    except (OSError, yaml.YAMLError) as exc:
        raise DataFormatError(f"cannot read dataset.yaml: {exc}", path=path) from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise DataFormatError("missing field 'names'", path=path)
    return path, doc


def _names(doc: dict[str, object], path: Path) -> list[str]:
    raw = doc["names"]
    if isinstance(raw, dict):
        try:
            return [str(raw[k]) for k in sorted(raw, key=int)]
        except (TypeError, ValueError):
            raise DataFormatError("field 'names' must map integer ids to names", path=path) from None
    if isinstance(raw, list):
        return [str(n) for n in raw]
    raise DataFormatError("field 'names' must be a list or a mapping", path=path)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            return int(arr.shape[-1]), int(arr.shape[-2])
        from PIL import Image

        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot read image: {exc}", path=path) from None


def _label_path(root: Path, image_rel: str) -> Path:
    return label_path_for(root / image_rel)


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of a LesionLens training set, or None when there is none."""
    from lesionlens.data.trainset import MANIFEST_FORMAT

    path = root / "manifest.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot read manifest: {exc}", path=path) from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("images"), list):
        raise DataFormatError(f"not a {MANIFEST_FORMAT} manifest", path=path)
    return doc


def read_training_set(root: str | Path) -> DetectionDataset:
    """Read a YOLO-layout dataset (see module docstring) into a :class:`DetectionDataset`.

    Image paths are relative to ``root``; boxes are (N, 4) float32 xyxy px. Manifest entries
    also land in ``ImageAnnotation.extra`` (``spacing_mm``, ``sha256``, ...).
    """
    root = Path(root)
    yaml_path, doc = _read_yaml(root)
    root = yaml_path.parent
    names = _names(doc, yaml_path)
    manifest = read_manifest(root)
    ds = DetectionDataset(names=names, splits={})
    if manifest is not None:
        for e in manifest["images"]:
            try:
                im = ImageAnnotation(
                    image=str(e["image"]),
                    width=int(e["width"]),
                    height=int(e["height"]),
                    boxes=np.asarray(e["boxes"], np.float32).reshape(-1, 4),
                    labels=np.asarray(e["classes"], np.int64),
                    patient_id=str(e["patient_id"]),
                    study_instance_uid=str(e.get("study_instance_uid", "")),
                    series_instance_uid=str(e.get("series_instance_uid", "")),
                    sop_instance_uid=str(e.get("sop_instance_uid", "")),
                    slice_index=e.get("slice_index"),
                    extra={k: v for k, v in e.items() if k in ("spacing_mm", "sha256", "label", "lesion_index", "cross_section_mm")},
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise DataFormatError(f"bad manifest entry {e.get('image', '?')!r}: {exc}", path=root / "manifest.json") from None
            ds.splits.setdefault(str(e["split"]), []).append(im)
        return ds
    base = Path(str(doc.get("path") or "."))
    base = base if base.is_absolute() else root / base
    for split in ("train", "val", "test"):
        if not doc.get(split):
            continue
        folder = base / str(doc[split])
        if not folder.is_dir():
            raise DataFormatError(f"image folder of split {split!r} does not exist: {folder}", path=yaml_path)
        items = ds.splits.setdefault(split, [])
        for p in sorted(q for q in folder.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES):
            rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
            w, h = _image_size(p)
            boxes, labels = read_label_file(_label_path(root, rel), len(names), w, h)
            items.append(ImageAnnotation(rel, w, h, boxes, labels, patient_id=p.stem.split("__")[0]))
    return ds


@dataclass
class SplitStats:
    """Counts of one split. ``boxes_per_class`` maps class name → boxes."""

    images: int = 0
    positives: int = 0
    negatives: int = 0
    boxes: int = 0
    patients: int = 0
    boxes_per_class: dict[str, int] = field(default_factory=dict)


@dataclass
class DatasetStats:
    """Per-split counts plus every box's equivalent diameter (``size_unit`` "mm" or "px")."""

    names: list[str]
    splits: dict[str, SplitStats]
    sizes: list[float]
    size_unit: str
    total: SplitStats

    def to_dict(self) -> dict[str, object]:
        sizes = np.asarray(self.sizes, np.float64)
        return {
            "names": self.names,
            "splits": {k: asdict(v) for k, v in self.splits.items()},
            "total": asdict(self.total),
            "lesion_size": {
                "unit": self.size_unit,
                "count": int(sizes.size),
                "min": float(sizes.min()) if sizes.size else None,
                "median": float(np.median(sizes)) if sizes.size else None,
                "max": float(sizes.max()) if sizes.size else None,
            },
            "class_balance": {
                n: (self.total.boxes_per_class.get(n, 0) / self.total.boxes if self.total.boxes else 0.0) for n in self.names
            },
        }


def _split_stats(items: list[ImageAnnotation], names: list[str]) -> SplitStats:
    st = SplitStats(boxes_per_class={n: 0 for n in names})
    st.images = len(items)
    st.positives = sum(1 for im in items if len(im.boxes))
    st.negatives = st.images - st.positives
    st.boxes = sum(len(im.boxes) for im in items)
    st.patients = len({im.patient_id for im in items})
    for im in items:
        for c in im.labels:
            name = names[int(c)] if 0 <= int(c) < len(names) else str(int(c))
            st.boxes_per_class[name] = st.boxes_per_class.get(name, 0) + 1
    return st


def compute_stats(ds: DetectionDataset) -> DatasetStats:
    """Statistics of an in-memory dataset (see module docstring)."""
    splits = {name: _split_stats(items, ds.names) for name, items in ds.splits.items()}
    everything = ds.all_images()
    total = _split_stats(everything, ds.names)
    have_mm = bool(everything) and all(isinstance(im.extra.get("spacing_mm"), list) for im in everything if len(im.boxes))
    sizes: list[float] = []
    for im in everything:
        w = im.boxes[:, 2] - im.boxes[:, 0]
        h = im.boxes[:, 3] - im.boxes[:, 1]
        if have_mm and len(im.boxes):
            sp = [float(v) for v in im.extra["spacing_mm"]]  # type: ignore[attr-defined]
            sizes += ((w * sp[-1] + h * sp[-2]) / 2).tolist()
        else:
            sizes += ((w + h) / 2).tolist()
    return DatasetStats(ds.names, splits, [round(float(s), 4) for s in sizes], "mm" if have_mm else "px", total)


def dataset_stats(root: str | Path) -> DatasetStats:
    """Read the dataset at ``root`` (see :func:`read_training_set`) and compute its statistics."""
    return compute_stats(read_training_set(root))


def save_size_histogram(stats: DatasetStats, path: str | Path, bins: int = 20) -> Path:
    """Save a histogram of the lesion sizes as PNG (matplotlib, Agg backend)."""
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, no global backend change

    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if stats.sizes:
        ax.hist(stats.sizes, bins=bins, color="#3a7bd5", edgecolor="white")
    ax.set_xlabel(f"lesion cross-section diameter ({stats.size_unit})")
    ax.set_ylabel("boxes")
    ax.set_title(f"Lesion sizes ({len(stats.sizes)} boxes)")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    except OSError as exc:
        raise OutputError(f"cannot write histogram: {exc}", path=path) from None
    return path

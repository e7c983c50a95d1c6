"""YOLO (Ultralytics) detection datasets: ``dataset.yaml`` + ``images/<split>`` + ``labels/<split>``.

What Ultralytics users already have::

    dataset.yaml          path: .            # root; relative to the yaml's folder when relative
                          train: images/train   # a folder, a .txt list of images, or a list of those
                          val: images/val
                          test: images/test  # optional
                          names: [nodule, mass]   # or {0: nodule, 1: mass}
    images/train/a.png
    labels/train/a.txt    one line per box: "class cx cy w h", normalised to [0, 1]

A label file is found from its image by replacing the last ``images`` folder of the path with
``labels`` and the suffix with ``.txt`` (as Ultralytics does). A missing label file means an
image without boxes. Polygon lines (``class x1 y1 x2 y2 ...``, segmentation datasets) are read
as the polygon's bounding box. Boxes become ``(N, 4) float32 xyxy`` pixels; the image size is
read from the image header (Pillow).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.boxes import boxes_outside, clip_boxes, xyxy_to_yolo, yolo_to_xyxy
from lesionlens.errors import DataFormatError

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm")
SPLITS = ("train", "val", "test")

__all__ = ["label_path_for", "read_label_file", "read_yolo", "write_yolo"]


def label_path_for(image: Path) -> Path:
    """The label file of ``image``: last ``images`` path part → ``labels``, suffix → ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _names(raw: Any, path: Path) -> list[str]:
    if isinstance(raw, list) and all(isinstance(n, (str, int)) for n in raw):
        return [str(n) for n in raw]
    if isinstance(raw, dict):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError) as exc:
            raise DataFormatError("field 'names': dict keys must be class indices", path=path) from exc
        if keys != list(range(len(keys))):
            raise DataFormatError(f"field 'names': class indices must be 0..{len(keys) - 1}, got {keys}", path=path)
        return [str(raw[k] if k in raw else raw[str(k)]) for k in keys]
    raise DataFormatError("field 'names' must be a list or a {index: name} mapping", path=path)


def _image_size(image: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            return im.size  # (width, height)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataFormatError(f"cannot read image size: {exc}", path=image) from exc


def _images_of(entry: Any, root: Path, yaml_path: Path, split: str) -> list[Path]:
    """Image paths of one split entry (folder, .txt list, single image, or list of these)."""
    entries = entry if isinstance(entry, list) else [entry]
    out: list[Path] = []
    for e in entries:
        if not isinstance(e, str):
            raise DataFormatError(f"field {split!r} must be a path or a list of paths, got {e!r}", path=yaml_path)
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    q = Path(line)
                    out.append(q if q.is_absolute() else (p.parent / q).resolve() if line.startswith(".") else root / q)
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            out.append(p)
        else:
            raise DataFormatError(f"field {split!r}: {p} is not a folder, image list or image", path=yaml_path)
    return out


def read_label_file(label: Path, n_classes: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One YOLO label file → boxes (N, 4) float32 xyxy px and labels (N,) int64.

    A missing file means a negative image (no boxes). Lines are ``class cx cy w h`` normalised
    (or a polygon, taken as its bounding box); bad lines raise DataFormatError naming the line.
    """
    if not label.is_file():
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    boxes, labels = [], []
    for lineno, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {lineno}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DataFormatError(f"{where}: not numbers: {line.strip()!r}", path=label) from None
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < n_classes:
            raise DataFormatError(f"{where}: class {fields[0]} is not in 0..{n_classes - 1}", path=label)
        coords = values[1:]
        if len(coords) == 4:
            box = yolo_to_xyxy([coords], width, height)[0]
        elif len(coords) >= 6 and len(coords) % 2 == 0:  # polygon → its bounding box
            pts = np.array(coords, dtype=np.float64).reshape(-1, 2) * [width, height]
            box = np.array([*pts.min(axis=0), *pts.max(axis=0)], dtype=np.float32)
        else:
            raise DataFormatError(f"{where}: expected 'class cx cy w h' (5 values), got {len(fields)}", path=label)
        if not np.isfinite(coords).all() or min(coords) < -1e-3 or max(coords) > 1.0 + 1e-3:
            raise DataFormatError(f"{where}: coordinates must be normalised to [0, 1]: {line.strip()!r}", path=label)
        if boxes_outside([box], width, height, tol=1.0)[0]:
            raise DataFormatError(f"{where}: box is empty or outside the {width}x{height} image", path=label)
        boxes.append(clip_boxes([box], width, height)[0])
        labels.append(int(cls))
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64)


def read_yolo(dataset_yaml: str | Path) -> DetectionDataset:
    """Read a YOLO dataset described by ``dataset_yaml``.

    Returns a :class:`DetectionDataset` whose splits are the yaml's ``train``/``val``/``test``
    keys present; ``ImageAnnotation.image`` is the image path relative to the dataset root
    (``path``) when it lies under it, else absolute. Raises :class:`DataFormatError` naming
    the file and line/field for malformed labels, unknown classes, boxes outside the image, and
    label files that have no image.
    """
    yp = Path(dataset_yaml)
    try:
        doc = yaml.safe_load(yp.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataFormatError(f"cannot read: {exc.strerror}", path=yp) from exc
    except yaml.YAMLError as exc:
        raise DataFormatError(f"not valid YAML: {exc}", path=yp) from exc
    if not isinstance(doc, dict):
        raise DataFormatError("expected a mapping with 'names' and split paths", path=yp)
    if "names" not in doc:
        raise DataFormatError("missing field 'names'", path=yp)
    names = _names(doc["names"], yp)
    if "nc" in doc and doc["nc"] != len(names):
        raise DataFormatError(f"field 'nc' is {doc['nc']} but 'names' has {len(names)} entries", path=yp)
    root = Path(str(doc.get("path") or "."))
    root = (root if root.is_absolute() else yp.parent / root).resolve()
    splits: dict[str, list[ImageAnnotation]] = {}
    for split in SPLITS:
        if not doc.get(split):
            continue
        items: list[ImageAnnotation] = []
        images = _images_of(doc[split], root, yp, split)
        for img in images:
            if not img.is_file():
                raise DataFormatError(f"field {split!r}: listed image {img} does not exist", path=yp)
            w, h = _image_size(img)
            label = label_path_for(img)
            rel = img.resolve()
            name = rel.relative_to(root).as_posix() if rel.is_relative_to(root) else str(rel)
            ann = ImageAnnotation(image=name, width=w, height=h)
            if label.is_file():
                ann.boxes, ann.labels = read_label_file(label, len(names), w, h)
            items.append(ann)
        _check_orphan_labels(images, yp)
        splits[split] = items
    if not splits:
        raise DataFormatError("no split ('train', 'val' or 'test') is given", path=yp)
    return DetectionDataset(names=names, splits=splits)


def _check_orphan_labels(images: list[Path], yaml_path: Path) -> None:
    """A label file in the split's labels folders whose image is missing is an error."""
    have = {label_path_for(i).resolve() for i in images}
    folders = {label_path_for(i).parent for i in images}
    for folder in sorted(folders):
        if not folder.is_dir():
            continue
        for label in sorted(folder.glob("*.txt")):
            if label.resolve() not in have and label.name != "classes.txt":
                raise DataFormatError(f"label file without an image (looked for {label.stem}.*)", path=label)


def write_yolo(
    dataset: DetectionDataset,
    out_dir: str | Path,
    *,
    image_root: str | Path | None = None,
    link: bool = False,
) -> Path:
    """Write ``dataset`` as a YOLO dataset under ``out_dir``; returns the ``dataset.yaml`` path.

    Each image (``ImageAnnotation.image``, relative to ``image_root`` when not absolute) is
    copied — or hard-linked with ``link=True`` — to ``images/<split>/<name>``; its boxes go to
    ``labels/<split>/<stem>.txt`` as ``class cx cy w h`` with six decimals. Split ``"all"`` is
    written as ``train``. Two images of a split with the same file name get distinct names.
    """
    out = Path(out_dir)
    src_root = Path(image_root) if image_root is not None else Path(".")
    doc: dict[str, Any] = {"path": ".", "names": {i: n for i, n in enumerate(dataset.names)}}
    for split, items in dataset.splits.items():
        yname = "train" if split == "all" else split
        if yname not in SPLITS:
            raise DataFormatError(f"split {split!r} has no YOLO equivalent (train/val/test)", path=out)
        img_dir, lab_dir = out / "images" / yname, out / "labels" / yname
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for k, ann in enumerate(items):
            src = Path(ann.image) if Path(ann.image).is_absolute() else src_root / ann.image
            if not src.is_file():
                raise DataFormatError(f"image of item {k} does not exist", path=src)
            name = src.name if src.name not in used else f"{k:06d}_{src.name}"
            used.add(name)
            dst = img_dir / name
            if dst.exists():
                dst.unlink()
            if link:
                os.link(src, dst)
            else:
                shutil.copyfile(src, dst)
            if np.any(ann.labels >= len(dataset.names)) or np.any(ann.labels < 0):
                raise DataFormatError(f"item {k} ({ann.image}) has labels outside 0..{len(dataset.names) - 1}", path=out)
            norm = xyxy_to_yolo(clip_boxes(ann.boxes, ann.width, ann.height), ann.width, ann.height)
            lines = [f"{int(c)} " + " ".join(f"{v:.6f}" for v in row) for c, row in zip(ann.labels, norm)]
            (lab_dir / Path(name).with_suffix(".txt").name).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        doc[yname] = f"images/{yname}"
    yp = out / "dataset.yaml"
    yp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return yp

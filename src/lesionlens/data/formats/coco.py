"""COCO detection JSON: ``images``, ``annotations`` (``bbox`` = x, y, w, h pixels), ``categories``.

Reading maps categories (sorted by id) to class indices; the COCO ids survive a round trip via
``ImageAnnotation.extra``:

* ``coco_image_id`` — the image's id;
* ``coco_annotation_ids`` — per box, the annotation id;
* ``coco_category_ids`` — per box, the category id (the writer rebuilds ``categories`` from it);
* ``coco_iscrowd`` — per box, 0/1 (crowd boxes are kept as boxes; evaluators may ignore them);
* ``coco_area`` — per box, the annotation's ``area`` when given.

Boxes that reach outside the image by at most 1 px are clipped; further out is an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.boxes import box_area, boxes_outside, clip_boxes, xywh_to_xyxy, xyxy_to_xywh
from lesionlens.errors import DataFormatError
from lesionlens.jsonio import read_json, write_json

__all__ = ["coco_dict", "read_coco", "write_coco"]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_coco(path: str | Path, *, split: str = "all") -> DetectionDataset:
    """Read a COCO detection JSON into a dataset with one split (``split``).

    ``ImageAnnotation.image`` is the ``file_name`` as written. Raises :class:`DataFormatError`
    naming the file and field (``annotations[i].bbox``, ...) for unknown image/category ids,
    duplicate ids, malformed or out-of-image boxes.
    """
    p = Path(path)
    doc = read_json(p)
    if not isinstance(doc, dict):
        raise DataFormatError("expected an object with 'images', 'annotations', 'categories'", path=p)
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataFormatError(f"field {key!r} must be a list", path=p)
    cats: dict[int, str] = {}
    for i, c in enumerate(doc["categories"]):
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)):
            raise DataFormatError(f"categories[{i}] needs an integer 'id' and a string 'name'", path=p)
        if c["id"] in cats:
            raise DataFormatError(f"categories[{i}].id {c['id']} is a duplicate", path=p)
        cats[c["id"]] = c["name"]
    cat_ids = sorted(cats)
    names = [cats[k] for k in cat_ids]
    cat_index = {k: i for i, k in enumerate(cat_ids)}

    images: dict[int, ImageAnnotation] = {}
    per_image: dict[int, dict[str, list[Any]]] = {}
    for i, im in enumerate(doc["images"]):
        where = f"images[{i}]"
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise DataFormatError(f"{where} needs an integer 'id' and a string 'file_name'", path=p)
        w, h = im.get("width"), im.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise DataFormatError(f"{where}.width/height must be positive integers, got {w!r}/{h!r}", path=p)
        if im["id"] in images:
            raise DataFormatError(f"{where}.id {im['id']} is a duplicate", path=p)
        images[im["id"]] = ImageAnnotation(image=im["file_name"], width=w, height=h, extra={"coco_image_id": im["id"]})
        per_image[im["id"]] = {"boxes": [], "labels": [], "ids": [], "cats": [], "crowd": [], "area": []}

    seen_ann: set[int] = set()
    for i, a in enumerate(doc["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            raise DataFormatError(f"{where} must be an object", path=p)
        aid, iid, cid = a.get("id"), a.get("image_id"), a.get("category_id")
        if not isinstance(aid, int) or aid in seen_ann:
            raise DataFormatError(f"{where}.id must be a unique integer, got {aid!r}", path=p)
        seen_ann.add(aid)
        if iid not in images:
            raise DataFormatError(f"{where}.image_id {iid!r} names no image", path=p)
        if cid not in cats:
            raise DataFormatError(f"{where}.category_id {cid!r} is not a known category {cat_ids}", path=p)
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_num(v) for v in bbox)):
            raise DataFormatError(f"{where}.bbox must be [x, y, width, height] numbers, got {bbox!r}", path=p)
        im = images[iid]
        xyxy = xywh_to_xyxy([bbox])
        if boxes_outside(xyxy, im.width, im.height, tol=1.0)[0]:
            raise DataFormatError(f"{where}.bbox {bbox} is empty or outside the {im.width}x{im.height} image {im.image!r}", path=p)
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise DataFormatError(f"{where}.iscrowd must be 0 or 1, got {crowd!r}", path=p)
        acc = per_image[iid]
        acc["boxes"].append(clip_boxes(xyxy, im.width, im.height)[0])
        acc["labels"].append(cat_index[cid])
        acc["ids"].append(aid)
        acc["cats"].append(cid)
        acc["crowd"].append(int(crowd))
        acc["area"].append(float(a["area"]) if _num(a.get("area")) else None)

    items = []
    for iid, ann in images.items():
        acc = per_image[iid]
        ann.boxes = np.array(acc["boxes"], dtype=np.float32).reshape(-1, 4)
        ann.labels = np.array(acc["labels"], dtype=np.int64)
        ann.extra.update(
            coco_annotation_ids=acc["ids"], coco_category_ids=acc["cats"], coco_iscrowd=acc["crowd"], coco_area=acc["area"]
        )
        items.append(ann)
    return DetectionDataset(names=names, splits={split: items})


def coco_dict(dataset: DetectionDataset, *, split: str | None = None) -> dict[str, Any]:
    """The COCO JSON object of one split (or of every image when ``split`` is None).

    Ids come from ``extra`` when present (see module docstring), otherwise they are numbered
    from 1. Category ids: class ``i`` keeps the id its boxes carried, else ``i + 1``.
    """
    items = dataset.splits.get(split, []) if split is not None else dataset.all_images()
    cat_of: dict[int, int] = {}
    for ann in items:
        for lab, cid in zip(ann.labels, ann.extra.get("coco_category_ids", [])):  # type: ignore[call-overload]
            cat_of.setdefault(int(lab), int(cid))
    used = set(cat_of.values())
    free = (k for k in range(1, 10**9) if k not in used)
    for i in range(len(dataset.names)):
        if i not in cat_of:
            cat_of[i] = next(free)
    categories = [{"id": cat_of[i], "name": n, "supercategory": "lesion"} for i, n in enumerate(dataset.names)]
    taken_img = {ann.extra["coco_image_id"] for ann in items if isinstance(ann.extra.get("coco_image_id"), int)}
    taken_ann = {a for ann in items for a in ann.extra.get("coco_annotation_ids", [])}  # type: ignore[attr-defined]
    next_img = (k for k in range(1, 10**9) if k not in taken_img)
    next_ann = (k for k in range(1, 10**9) if k not in taken_ann)
    images, annotations = [], []
    for ann in items:
        iid = ann.extra.get("coco_image_id")
        iid = iid if isinstance(iid, int) else next(next_img)
        images.append({"id": iid, "file_name": ann.image, "width": int(ann.width), "height": int(ann.height)})
        ids = list(ann.extra.get("coco_annotation_ids", []))  # type: ignore[call-overload]
        crowd = list(ann.extra.get("coco_iscrowd", []))  # type: ignore[call-overload]
        areas = list(ann.extra.get("coco_area", []))  # type: ignore[call-overload]
        xywh = xyxy_to_xywh(ann.boxes)
        box_areas = box_area(ann.boxes)
        for j, (box, lab) in enumerate(zip(xywh, ann.labels)):
            annotations.append(
                {
                    "id": ids[j] if j < len(ids) else next(next_ann),
                    "image_id": iid,
                    "category_id": cat_of[int(lab)],
                    "bbox": [round(float(v), 4) for v in box],
                    "area": areas[j] if j < len(areas) and areas[j] is not None else round(float(box_areas[j]), 4),
                    "iscrowd": crowd[j] if j < len(crowd) else 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(dataset: DetectionDataset, path: str | Path, *, split: str | None = None) -> Path:
    """Write :func:`coco_dict` of ``dataset`` (one split, or all images) to ``path`` atomically."""
    return write_json(coco_dict(dataset, split=split), path)

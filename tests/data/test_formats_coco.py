"""COCO JSON: round trip keeping ids and iscrowd, malformed input named by field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.formats.coco import coco_dict, read_coco, write_coco
from lesionlens.errors import DataFormatError


def _coco() -> dict:
    return {
        "images": [
            {"id": 17, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 3, "file_name": "b.png", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 901, "image_id": 17, "category_id": 7, "bbox": [10.5, 5, 20, 30.25], "area": 600, "iscrowd": 0},
            {"id": 5, "image_id": 17, "category_id": 2, "bbox": [0, 0, 100, 80], "iscrowd": 1},
        ],
        "categories": [{"id": 7, "name": "mass"}, {"id": 2, "name": "nodule"}],
    }


def test_read_maps_categories_and_boxes(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(_coco()))
    ds = read_coco(p, split="val")
    assert ds.names == ["nodule", "mass"]  # sorted by category id
    a, b = ds.splits["val"]
    assert a.image == "a.png" and a.labels.tolist() == [1, 0]
    assert np.allclose(a.boxes, [[10.5, 5, 30.5, 35.25], [0, 0, 100, 80]])
    assert a.extra["coco_image_id"] == 17 and a.extra["coco_iscrowd"] == [0, 1]
    assert len(b.boxes) == 0


def test_round_trip_keeps_ids(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(_coco()))
    ds = read_coco(p)
    out = write_coco(ds, tmp_path / "out.json")
    again = json.loads(out.read_text())
    orig = _coco()
    assert {c["id"]: c["name"] for c in again["categories"]} == {7: "mass", 2: "nodule"}
    assert [i["id"] for i in again["images"]] == [17, 3]
    got = {a["id"]: a for a in again["annotations"]}
    for a in orig["annotations"]:
        g = got[a["id"]]
        assert g["image_id"] == a["image_id"] and g["category_id"] == a["category_id"]
        assert np.allclose(g["bbox"], a["bbox"]) and g["iscrowd"] == a["iscrowd"]
    assert got[901]["area"] == 600
    back = read_coco(out)
    for x, y in zip(back.all_images(), ds.all_images()):
        assert np.allclose(x.boxes, y.boxes) and x.labels.tolist() == y.labels.tolist()


def test_write_from_plain_dataset_numbers_ids() -> None:
    ds = DetectionDataset(
        names=["calcification_cluster", "mass"],
        splits={"train": [ImageAnnotation("x.png", 10, 10, boxes=[[1, 1, 4, 5]], labels=[1])],
                "val": [ImageAnnotation("y.png", 10, 10)]},
    )
    d = coco_dict(ds, split="train")
    assert d["categories"] == [{"id": 1, "name": "calcification_cluster", "supercategory": "lesion"},
                               {"id": 2, "name": "mass", "supercategory": "lesion"}]
    assert d["annotations"] == [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 3, 4], "area": 12.0, "iscrowd": 0}]
    assert len(coco_dict(ds)["images"]) == 2


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["annotations"][0].update(bbox=[90, 5, 20, 30]), r"annotations\[0\]\.bbox .* outside"),
        (lambda d: d["annotations"][0].update(category_id=99), r"annotations\[0\]\.category_id 99"),
        (lambda d: d["annotations"][1].update(image_id=4), r"annotations\[1\]\.image_id 4"),
        (lambda d: d["annotations"][1].update(id=901), r"annotations\[1\]\.id"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\]\.bbox must be"),
        (lambda d: d["images"][1].update(width=0), r"images\[1\]\.width/height"),
        (lambda d: d.pop("categories"), "'categories' must be a list"),
        (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd"),
    ],
)
def test_malformed(tmp_path: Path, mutate, match: str) -> None:
    d = _coco()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DataFormatError, match=match) as err:
        read_coco(p)
    assert err.value.path == str(p)


def test_not_json(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text("{\n  'images': }")
    with pytest.raises(DataFormatError, match="line 2"):
        read_coco(p)

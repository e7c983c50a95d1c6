"""YOLO datasets: write → read round trip, Ultralytics yaml layouts, malformed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.formats.yolo import read_yolo, write_yolo
from lesionlens.errors import DataFormatError


def _img(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w), np.uint8)).save(path)
    return path


def _dataset(src: Path) -> DetectionDataset:
    _img(src / "a.png", 64, 48)
    _img(src / "b.png", 32, 32)
    _img(src / "c.png", 40, 30)
    return DetectionDataset(
        names=["nodule", "mass"],
        splits={
            "train": [
                ImageAnnotation("a.png", 64, 48, boxes=[[1.5, 2, 20.25, 30], [30, 10, 64, 48]], labels=[0, 1]),
                ImageAnnotation("b.png", 32, 32),
            ],
            "val": [ImageAnnotation("c.png", 40, 30, boxes=[[0, 0, 5, 5]], labels=[1])],
        },
    )


def test_round_trip(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "src")
    yp = write_yolo(ds, tmp_path / "out", image_root=tmp_path / "src")
    back = read_yolo(yp)
    assert back.names == ds.names
    assert set(back.splits) == {"train", "val"}
    for split in ds.splits:
        got = {Path(a.image).name: a for a in back.splits[split]}
        for ann in ds.splits[split]:
            g = got[ann.image]
            assert (g.width, g.height) == (ann.width, ann.height)
            assert np.allclose(g.boxes, ann.boxes, atol=1e-3 * max(ann.width, ann.height))
            assert g.labels.tolist() == ann.labels.tolist()
    assert (tmp_path / "out" / "labels" / "train" / "b.txt").read_text() == ""


def test_ultralytics_layouts(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _img(root / "images" / "tr" / "x.jpg", 100, 50)
    _img(root / "images" / "va" / "y.png", 10, 10)
    (root / "labels" / "tr").mkdir(parents=True)
    (root / "labels" / "tr" / "x.txt").write_text("1 0.5 0.5 0.2 0.4\n\n")
    (root / "list.txt").write_text("./images/va/y.png\n")
    # polygon line → its bounding box
    (root / "labels" / "va").mkdir(parents=True)
    (root / "labels" / "va" / "y.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.6\n")
    yp = tmp_path / "data.yaml"
    yp.write_text("path: ds\ntrain: [images/tr]\nval: list.txt\nnames:\n  0: cat\n  1: dog\n")
    ds = read_yolo(yp)
    assert ds.names == ["cat", "dog"]
    x = ds.splits["train"][0]
    assert x.image == "images/tr/x.jpg" and x.labels.tolist() == [1]
    assert np.allclose(x.boxes, [[40, 15, 60, 35]])
    assert np.allclose(ds.splits["val"][0].boxes, [[1, 1, 5, 6]])


@pytest.mark.parametrize(
    ("label", "match"),
    [
        ("0 0.5 0.5 0.2\n", "line 1: expected"),
        ("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n", "line 2: class 7"),
        ("0 0.5 0.5 abc 0.2\n", "line 1: not numbers"),
        ("0 1.5 0.5 0.2 0.2\n", "line 1: coordinates must be normalised"),
        ("0 0.99 0.5 0.3 0.2\n", "outside"),
    ],
)
def test_bad_label_lines(tmp_path: Path, label: str, match: str) -> None:
    _img(tmp_path / "images" / "train" / "a.png", 20, 20)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text(label)
    (tmp_path / "d.yaml").write_text("train: images/train\nnames: [a, b]\n")
    with pytest.raises(DataFormatError, match=match) as err:
        read_yolo(tmp_path / "d.yaml")
    assert err.value.path is not None and err.value.path.endswith("a.txt")


def test_label_without_image_and_bad_yaml(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "train" / "a.png", 20, 20)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "d.yaml").write_text("train: images/train\nnames: [a]\n")
    with pytest.raises(DataFormatError, match="label file without an image"):
        read_yolo(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("train: images/train\n")
    with pytest.raises(DataFormatError, match="names"):
        read_yolo(tmp_path / "e.yaml")
    (tmp_path / "f.yaml").write_text("train: images/nothing\nnames: [a]\n")
    with pytest.raises(DataFormatError, match="'train'"):
        read_yolo(tmp_path / "f.yaml")
    (tmp_path / "g.yaml").write_text("train: images/train\nnames: {0: a, 2: b}\n")
    with pytest.raises(DataFormatError, match="class indices"):
        read_yolo(tmp_path / "g.yaml")

"""Dataset statistics: counts per split, patients, class balance, lesion sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.stats import (
    compute_stats,
    dataset_stats,
    read_training_set,
    save_size_histogram,
)
from lesionlens.errors import DataFormatError


def test_counts_per_split_and_class_balance() -> None:
    ds = DetectionDataset(
        names=["nodule", "mass"],
        splits={
            "train": [
                ImageAnnotation("a.npy", 10, 10, [[0, 0, 4, 2], [5, 5, 7, 7]], [0, 1], patient_id="p1"),
                ImageAnnotation("b.npy", 10, 10, [[1, 1, 3, 3]], [0], patient_id="p1"),
                ImageAnnotation("c.npy", 10, 10, patient_id="p2"),
            ],
            "val": [ImageAnnotation("d.npy", 10, 10, patient_id="p3")],
        },
    )
    st = compute_stats(ds)
    tr = st.splits["train"]
    assert (tr.images, tr.positives, tr.negatives, tr.boxes, tr.patients) == (3, 2, 1, 3, 2)
    assert tr.boxes_per_class == {"nodule": 2, "mass": 1}
    assert (st.splits["val"].images, st.splits["val"].boxes, st.splits["val"].patients) == (1, 0, 1)
    assert st.total.patients == 3 and st.size_unit == "px"
    assert sorted(st.sizes) == [2.0, 2.0, 3.0]  # (w + h) / 2
    d = st.to_dict()
    assert d["class_balance"] == pytest.approx({"nodule": 2 / 3, "mass": 1 / 3})
    json.dumps(d)  # serialisable


def test_stats_of_built_set_match_its_summary(tmp_path: Path) -> None:
    from test_trainset import build, empty_case, sphere_case  # same folder

    cases = [sphere_case(f"p{i}", f"1.2.3.{i}") for i in range(6)] + [empty_case("n0", "1.2.9.0")]
    ds, summary = build(tmp_path, cases)
    st = dataset_stats(tmp_path / "ds")
    for split in ("train", "val", "test"):
        s = st.splits.get(split)
        n_img = summary.positives[split] + summary.negatives[split]
        assert (s.images if s else 0) == n_img
        if s:
            assert s.positives == summary.positives[split] and s.boxes == summary.boxes[split]
            assert s.patients == len({im.patient_id for im in ds.splits[split]})
    assert st.size_unit == "mm"
    # sphere 12 mm: the central slice's cross-section is the full 12 mm diameter
    assert max(st.sizes) == pytest.approx(12.0, abs=0.01) and min(st.sizes) > 0
    png = save_size_histogram(st, tmp_path / "sizes.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plain_yolo_dataset_reads_sizes_from_images(tmp_path: Path) -> None:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    np.save(tmp_path / "images" / "train" / "x.npy", np.zeros((3, 20, 40), np.float16))
    (tmp_path / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"train": "images/train", "names": {0: "nodule"}}))
    ds = read_training_set(tmp_path)
    im = ds.splits["train"][0]
    assert (im.width, im.height) == (40, 20)
    np.testing.assert_allclose(im.boxes, [[15, 5, 25, 15]])


def test_bad_labels_and_missing_yaml_are_data_format_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="dataset.yaml"):
        read_training_set(tmp_path)
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    np.save(tmp_path / "images" / "train" / "x.npy", np.zeros((8, 8), np.float32))
    (tmp_path / "labels" / "train" / "x.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"train": "images/train", "names": ["nodule"]}))
    with pytest.raises(DataFormatError, match=r"x\.txt"):
        read_training_set(tmp_path)

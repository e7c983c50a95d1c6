"""Studies → series → instances → nodules JSON: round trip and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesionlens.data.annotations import DetectionDataset, ImageAnnotation
from lesionlens.data.formats.studies_json import read_studies_json, write_studies_json
from lesionlens.errors import DataFormatError


def _doc() -> dict:
    return {
        "studies": [
            {
                "StudyInstanceUID": "1.2.3",
                "PatientID": "P1",
                "series": [
                    {
                        "SeriesInstanceUID": "1.2.3.4",
                        "instances": [
                            {"SOPInstanceUID": "1.2.3.4.1", "rows": 512, "columns": 512, "instance_number": 40,
                             "nodules": [{"x": 100, "y": 200.5, "width": 12, "height": 10, "malignancy": 4}]},
                            {"SOPInstanceUID": "1.2.3.4.2", "rows": 512, "columns": 512, "nodules": []},
                        ],
                    }
                ],
            }
        ]
    }


def test_read_tutorial_keys(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps(_doc()))
    ds = read_studies_json(p)
    assert ds.names == ["nodule"]
    a, b = ds.splits["all"]
    assert (a.patient_id, a.study_instance_uid, a.series_instance_uid, a.sop_instance_uid) == ("P1", "1.2.3", "1.2.3.4", "1.2.3.4.1")
    assert a.slice_index == 40 and a.image == "1.2.3.4.1"
    assert np.allclose(a.boxes, [[100, 200.5, 112, 210.5]])
    assert a.extra["nodule_attributes"] == [{"malignancy": 4}]
    assert len(b.boxes) == 0


def test_round_trip(tmp_path: Path) -> None:
    ds = DetectionDataset(
        names=["nodule", "mass"],
        splits={
            "train": [
                ImageAnnotation("s1/i1.png", 64, 48, boxes=[[1.5, 2, 20.25, 30], [30, 10, 64, 48]], labels=[0, 1],
                                patient_id="P", study_instance_uid="1", series_instance_uid="1.1", sop_instance_uid="1.1.1",
                                slice_index=3),
                ImageAnnotation("s1/i2.png", 64, 48, study_instance_uid="1", series_instance_uid="1.2", sop_instance_uid="1.2.1"),
            ],
            "val": [ImageAnnotation("s2/i1.png", 32, 32, boxes=[[0, 0, 5, 5]], labels=[1],
                                    study_instance_uid="2", series_instance_uid="2.1", sop_instance_uid="2.1.1")],
        },
    )
    p = write_studies_json(ds, tmp_path / "out.json")
    doc = json.loads(p.read_text())
    assert [len(s["series"]) for s in doc["studies"]] == [2, 1]
    back = read_studies_json(p)
    assert back.names == ds.names
    for x, y in zip(back.all_images(), ds.all_images()):
        assert (x.image, x.width, x.height, x.sop_instance_uid, x.slice_index) == (y.image, y.width, y.height, y.sop_instance_uid, y.slice_index)
        assert np.allclose(x.boxes, y.boxes) and x.labels.tolist() == y.labels.tolist()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["studies"][0]["series"][0]["instances"][0]["nodules"][0].update(width="12"),
         r"studies\[0\]\.series\[0\]\.instances\[0\]\.nodules\[0\]\.width must be a number"),
        (lambda d: d["studies"][0]["series"][0]["instances"][0]["nodules"][0].update(x=505),
         r"nodules\[0\]: box .* outside"),
        (lambda d: d["studies"][0]["series"][0]["instances"][1].pop("rows"), r"instances\[1\]\.rows/columns"),
        (lambda d: d["studies"][0].pop("StudyInstanceUID"), r"studies\[0\]\.study_instance_uid is missing"),
        (lambda d: d.update(names=["mass"]), r"label: unknown class 'nodule'"),
        (lambda d: d["studies"][0]["series"][0].update(instances={}), r"series\[0\]\.instances must be a list"),
    ],
)
def test_malformed(tmp_path: Path, mutate, match: str) -> None:
    d = _doc()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DataFormatError, match=match) as err:
        read_studies_json(p)
    assert err.value.path == str(p)


def test_writer_needs_uids(tmp_path: Path) -> None:
    ds = DetectionDataset(names=["nodule"], splits={"all": [ImageAnnotation("a.png", 4, 4)]})
    with pytest.raises(DataFormatError, match="uids"):
        write_studies_json(ds, tmp_path / "x.json")

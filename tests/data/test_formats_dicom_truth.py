"""Our own layout: DICOM studies + truth files → StudyTruth / ImageAnnotation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesionlens.data.formats.dicom_truth import read_truth_2d, read_truth_folder, write_truth_2d
from lesionlens.errors import DataFormatError
from lesionlens.synth.dicom2d import write_2d_study
from lesionlens.synth.mammo import MammoConfig, generate_mammogram
from lesionlens.synth.truth import SCHEMA, write_truth
from lesionlens.synth.xray import ChestXrayConfig, generate_chest_xray


def _ct_truth(folder: Path) -> Path:
    doc = {
        "schema": SCHEMA,
        "patient_id": "CT000001",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "nodules": [{"id": 1, "type": "solid", "center_lps_mm": [10.0, -20.5, -100.0], "diameter_mm": 8.5}],
    }
    return write_truth(doc, folder)


def test_folder_round_trip(tmp_path: Path) -> None:
    mg = generate_mammogram(1, MammoConfig(rows=200, cols=150, masses=1, calcification_clusters=1))
    dx = generate_chest_xray(2, ChestXrayConfig(rows=200, cols=200, nodules=2))
    write_2d_study(mg, tmp_path / "P1" / "mg", patient_id="P1")
    write_2d_study(dx, tmp_path / "P2" / "dx", patient_id="P2")
    _ct_truth(tmp_path / "P3" / "ct")
    got = read_truth_folder(tmp_path)
    assert got.dataset.names == ["calcification_cluster", "mass", "nodule"]
    anns = {a.patient_id: a for a in got.dataset.splits["all"]}
    assert anns["P1"].image == "P1/mg/mg-1.dcm" and (tmp_path / anns["P1"].image).is_file()
    for pid, ph in (("P1", mg), ("P2", dx)):
        a = anns[pid]
        assert np.allclose(a.boxes, ph.boxes) and a.labels.tolist() == ph.labels.tolist()
        assert (a.width, a.height) == (ph.width, ph.height)
        assert np.allclose(a.extra["sizes_mm"], ph.sizes_mm, atol=1e-4)
        assert a.sop_instance_uid and a.series_instance_uid and a.study_instance_uid
    assert anns["P1"].extra["lesions"][1]["specks_px"] == mg.lesions[1]["specks_px"]
    (ct,) = got.studies
    assert ct.series_instance_uid == "1.2.3.4" and ct.lesions[0].diameter_mm == 8.5
    assert ct.lesions[0].center_mm == (10.0, -20.5, -100.0)
    assert len(got.truth_files) == 3


def test_write_read_truth_2d(tmp_path: Path) -> None:
    ph = generate_chest_xray(3, ChestXrayConfig(rows=128, cols=128, nodules=1))
    ann = ph.to_annotation("img.dcm")
    ann.extra["note"] = "kept"
    (tmp_path / "img.dcm").write_bytes(b"")
    p = write_truth_2d(ann, ph.names, tmp_path / "img.truth.json")
    back, names = read_truth_2d(p)
    assert names == ph.names and np.allclose(back.boxes, ann.boxes)
    assert back.extra["note"] == "kept"


def _write_bad(tmp_path: Path, change) -> Path:
    ph = generate_chest_xray(3, ChestXrayConfig(rows=128, cols=128, nodules=1))
    path = write_2d_study(ph, tmp_path)
    truth = path.with_name(path.stem + ".truth.json")
    doc = json.loads(truth.read_text())
    change(doc)
    truth.write_text(json.dumps(doc))
    return truth


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d["lesions"][0].update(label="tumour"), r"lesions\[0\]\.label: unknown class 'tumour'"),
        (lambda d: d["lesions"][0].update(box_xyxy_px=[100, 100, 300, 120]), r"lesions\[0\]\.box_xyxy_px .* outside"),
        (lambda d: d["lesions"][0].update(box_xyxy_px=[1, 2, 3]), "four finite numbers"),
        (lambda d: d.update(format="other/1"), "'format'"),
        (lambda d: d.update(image="missing.dcm"), "does not exist"),
        (lambda d: d.update(width=-3), "'width'/'height'"),
    ],
)
def test_malformed_truth(tmp_path: Path, change, match: str) -> None:
    truth = _write_bad(tmp_path, change)
    with pytest.raises(DataFormatError, match=match) as err:
        read_truth_folder(tmp_path)
    assert err.value.path == str(truth)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no truth"):
        read_truth_folder(tmp_path)

"""``lesionlens data …`` end to end on tiny data: exit codes, files written, what is printed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lesionlens.cli.main import app

runner = CliRunner()
K, R, C = 16, 48, 48
SPACING_Z, SPACING_XY = 2.5, 0.8


def write_ct_series(folder: Path, pid: str, index: int, with_nodule: bool) -> None:
    """A tiny axial CT series (lung-like background, one 10 mm sphere of 50 HU) + truth.json."""
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage

    from lesionlens.dicom.write import save_dataset, uid_from_seed
    from lesionlens.synth.truth import SCHEMA, write_truth

    study, series, frame = (str(uid_from_seed("test-data-cli", index, r)) for r in ("study", "series", "for"))
    origin = np.array([-20.0, -20.0, 0.0])
    centre = origin + np.array([24 * SPACING_XY, 22 * SPACING_XY, 8 * SPACING_Z])
    zz, yy, xx = np.meshgrid(np.arange(K) * SPACING_Z, np.arange(R) * SPACING_XY, np.arange(C) * SPACING_XY, indexing="ij")
    dist = np.sqrt((xx + origin[0] - centre[0]) ** 2 + (yy + origin[1] - centre[1]) ** 2 + (zz + origin[2] - centre[2]) ** 2)
    hu = np.full((K, R, C), -850, np.int16)
    if with_nodule:
        hu[dist <= 5.0] = 50
    for k in range(K):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = str(uid_from_seed("test-data-cli", index, "sop", k))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.Modality = pid, f"TEST^{pid}", "CT"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * SPACING_Z)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [SPACING_XY, SPACING_XY]
        ds.SliceThickness = SPACING_Z
        ds.Rows, ds.Columns = R, C
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = hu[k].tobytes()
        save_dataset(ds, folder / f"CT_{k + 1:04d}.dcm")
    nodules = [{"id": 1, "type": "solid", "center_lps_mm": centre.tolist(), "diameter_mm": 10.0}] if with_nodule else []
    write_truth(
        {"schema": SCHEMA, "patient_id": pid, "study_instance_uid": study, "series_instance_uid": series, "nodules": nodules},
        folder,
    )


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ct")
    for i in range(6):
        write_ct_series(root / f"case{i}", f"P{i:03d}", i, with_nodule=i != 5)
    return root


def test_convert_dicom_to_yolo_then_stats_and_split(ct_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    res = runner.invoke(app, ["data", "convert", "--from", "dicom", "--to", "yolo", str(ct_folder), "--out", str(out),
                              "--ratios", "0.5,0.25,0.25", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "fingerprint" in res.output
    doc = yaml.safe_load((out / "dataset.yaml").read_text())
    assert doc["format"] == "npy-hu" and doc["channels"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    pos = [e for e in manifest["images"] if e["positive"]]
    # 10 mm sphere centred on slice 8, 2.5 mm slices → slices 7, 8, 9 (|dz| = 2.5 < 5); 5 patients
    assert len(pos) == 15 and sorted({e["slice_index"] for e in pos}) == [7, 8, 9]
    assert all(e["sop_instance_uid"] for e in manifest["images"])
    splits_of = {}
    for e in manifest["images"]:
        splits_of.setdefault(e["patient_id"], set()).add(e["split"])
    assert all(len(v) == 1 for v in splits_of.values())
    arr = np.load(out / pos[0]["image"])
    assert arr.shape == (3, R, C)

    stats_json = tmp_path / "stats.json"
    res = runner.invoke(app, ["data", "stats", str(out), "--out", str(stats_json)])
    assert res.exit_code == 0, res.output
    st = json.loads(stats_json.read_text())
    assert st["total"]["positives"] == 15 and st["total"]["boxes"] == 15
    assert st["total"]["negatives"] == len(manifest["images"]) - 15
    assert Path(st["histogram"]).read_bytes()[:4] == b"\x89PNG"
    assert "class balance" in res.output and "nodule" in res.output

    res = runner.invoke(app, ["data", "split", str(out), "--ratios", "0.34,0.33,0.33", "--seed", "5"])
    assert res.exit_code == 0, res.output
    manifest2 = json.loads((out / "manifest.json").read_text())
    assert manifest2["fingerprint"] != manifest["fingerprint"]
    assert len(manifest2["images"]) == len(manifest["images"])
    for e in manifest2["images"]:
        assert (out / e["image"]).exists() and e["image"].startswith(f"images/{e['split']}/")


def test_convert_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "convert", "--from", "dicom", "--to", "yolo", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "error" in res.output
    res = runner.invoke(app, ["data", "convert", "--from", "dicom", "--to", "coco", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--to yolo" in res.output
    res = runner.invoke(app, ["data", "split", str(tmp_path), "--ratios", "1,x"])
    assert res.exit_code == 2 and "--ratios" in res.output
    res = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert res.exit_code == 2 and "dataset.yaml" in res.output


def test_yolo_to_coco_and_back(tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "yolo"
    (src / "images" / "train").mkdir(parents=True)
    (src / "labels" / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(src / "images" / "train" / "a.png")
    (src / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (src / "dataset.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "names": ["nodule"]}))
    res = runner.invoke(app, ["data", "convert", "--from", "yolo", "--to", "coco", str(src), "--out", str(tmp_path / "coco")])
    assert res.exit_code == 0, res.output
    coco = json.loads((tmp_path / "coco" / "train.json").read_text())
    assert coco["annotations"][0]["bbox"] == [15.0, 5.0, 10.0, 10.0]
    assert (tmp_path / "coco" / coco["images"][0]["file_name"]).exists()
    res = runner.invoke(app, ["data", "convert", "--from", "coco", "--to", "yolo", str(tmp_path / "coco" / "train.json"),
                              "--out", str(tmp_path / "back")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "back" / "labels" / "train" / "a.txt").read_text().split() == ["0", "0.500000", "0.500000", "0.250000", "0.500000"]


def test_synth_xray_small_writes_distinct_studies(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "synth", "xray", "--studies", "2", "--out", str(tmp_path), "--seed", "3", "--size", "small"])
    assert res.exit_code == 0, res.output
    truths = sorted(tmp_path.rglob("*.truth.json"))
    assert len(truths) == 2
    docs = [json.loads(p.read_text()) for p in truths]
    assert docs[0]["patient_id"] != docs[1]["patient_id"]
    assert docs[0]["sop_instance_uid"] != docs[1]["sop_instance_uid"]


def test_synth_ct_small_then_build(tmp_path: Path) -> None:
    pytest.importorskip("lesionlens.synth.ct_dicom", reason="the CT DICOM writer is not available")
    res = runner.invoke(app, ["data", "synth", "ct", "--studies", "2", "--out", str(tmp_path / "ct"), "--seed", "0", "--size", "small"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "ct").rglob("truth.json"))) == 2
    res = runner.invoke(app, ["data", "convert", "--from", "dicom", "--to", "yolo", str(tmp_path / "ct"), "--out", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert {e["patient_id"] for e in manifest["images"]} <= {"CT000000", "CT000001"}

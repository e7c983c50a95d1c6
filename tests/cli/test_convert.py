"""``lesionlens convert``: PNG and NIfTI outputs, manifest, exit codes, per-file errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from typer.testing import CliRunner

from lesionlens.cli.main import app
from lesionlens.dicom.formats import read_image
from lesionlens.dicom.write import save_dataset, uid_from_seed

ROWS, COLS = 12, 10


def _hu(k: int) -> np.ndarray:
    r, c = np.mgrid[0:ROWS, 0:COLS]
    return (-1000 + 100 * k + 10 * r + c).astype(np.int16)


def _slice(k: int, series: str = "s1") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid_from_seed(series, "sop", k)
    ds.StudyInstanceUID = uid_from_seed("study")
    ds.SeriesInstanceUID = uid_from_seed(series, "series")
    ds.FrameOfReferenceUID = uid_from_seed("for")
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "P1", "Name^With/Slash"
    ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-50.0, -40.0, 100.0 + 2.5 * k]
    ds.PixelSpacing, ds.SliceThickness = [0.8, 0.7], 2.5
    ds.Rows, ds.Columns, ds.SamplesPerPixel = ROWS, COLS, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (_hu(k).astype(np.int32) + 1024).astype("<u2").tobytes()
    return ds


@pytest.fixture
def study(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for k in range(3):
        save_dataset(_slice(k), folder / f"slice{k}.dcm")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["convert", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_png_one_file_per_slice_windowed(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    code, text = _run(str(study), "--out", str(out), "--to", "png", "--window", "-1000,200")
    assert code == 0, text
    manifest = json.loads((out / "manifest.json").read_text())
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 3 == len(manifest["outputs"])
    assert [p.name for p in pngs] == ["00001.png", "00002.png", "00003.png"]
    assert pngs[0].parent.name == str(uid_from_seed("s1", "series"))  # folder named by the UID
    first = read_image(pngs[0]).pixels[0]
    assert first.shape == (ROWS, COLS)
    # slice 0 HU = -1000 + 10 r + c: window -1000/200 (LINEAR) → hand-computed grey levels
    assert first[0, 0] == round(((-1000 + 1000.5) / 199 + 0.5) * 255)
    assert first[-1, -1] == 255  # -1000 + 119 = -881 > upper edge -900.5
    assert manifest["window"] == "-1000,200" and manifest["errors"] == []
    assert any(s["path"].endswith("notes.txt") for s in manifest["skipped"])


def test_png_sixteen_bit_as_stored(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "png16"
    code, _ = _run(str(study), "--out", str(out), "--bits", "16")
    assert code == 0
    img = read_image(next(out.rglob("00002.png"))).pixels[0]
    # no header window: min–max over the whole volume (-1000 .. -681 HU) onto 0..65535
    assert img[0, 0] == round(100 / 319 * 65535)  # slice 1 (0, 0) = -900 HU
    assert img[-1, -1] == round(219 / 319 * 65535)  # slice 1 (11, 9) = -781 HU


def test_nifti_one_file_per_series_in_hu(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "nii"
    code, text = _run(str(study), "--out", str(out), "--to", "nifti")
    assert code == 0, text
    files = list(out.glob("*.nii.gz"))
    assert len(files) == 1
    vol = read_image(files[0])
    assert vol.shape == (3, ROWS, COLS)
    np.testing.assert_array_equal(vol.pixels[2], _hu(2))
    np.testing.assert_allclose(vol.index_to_lps(np.array([2, 1, 1])), [-50 + 0.7, -40 + 0.8, 105.0], atol=1e-4)


def test_bad_file_gives_exit_1_and_is_listed(study: Path, tmp_path: Path) -> None:
    bad = _slice(3)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]
    save_dataset(bad, study / "broken.dcm")
    out = tmp_path / "out"
    code, text = _run(str(study), "--out", str(out))
    assert code == 1
    assert "broken.dcm" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(e["path"]).name for e in manifest["errors"]] == ["broken.dcm"]
    assert len(list(out.rglob("*.png"))) == 3  # the good slices were still converted


def test_missing_path_is_a_one_line_error(tmp_path: Path) -> None:
    code, text = _run(str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "nope" in text and "Traceback" not in text


def test_bad_window_is_a_user_error(study: Path, tmp_path: Path) -> None:
    code, text = _run(str(study), "--out", str(tmp_path / "o"), "--window", "lungz")
    assert code == 2 and "lungz" in text

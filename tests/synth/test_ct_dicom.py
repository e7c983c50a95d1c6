"""The synthetic CT written as DICOM: valid objects (dciodvfy), HU round trip, messy options."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from lesionlens.synth.ct import CTPhantom, CTPhantomConfig, generate_ct, write_ct_study
from lesionlens.synth.truth import load_truth
from tests.conftest import require_tool

CFG = dict(matrix=(96, 96), n_slices=6, pixel_spacing_mm=(3.6, 3.8), slice_spacings_mm=(5.0,),
           max_vessel_segments=300)


def _phantom(seed: int, rep: str) -> CTPhantom:
    return generate_ct(seed, CTPhantomConfig(**CFG, pixel_representation=rep))  # type: ignore[arg-type]


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = require_tool("dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[CTPhantom, Path]:
    ph = _phantom(7, "unsigned")
    out = write_ct_study(ph, tmp_path_factory.mktemp("ct"), with_localizer=True, with_non_image=True)
    return ph, out


def test_every_object_passes_dciodvfy(study) -> None:
    _, out = study
    for name in ("CT_0001.dcm", "CT_0006.dcm", "LOC_0001.dcm", "KO_0001.dcm"):
        assert _dciodvfy_errors(out / name) == [], name


def test_headers_and_geometry(study) -> None:
    ph, out = study
    ds = pydicom.dcmread(out / "CT_0003.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.StudyInstanceUID == ph.uids["study"] and ds.SeriesInstanceUID == ph.uids["series"]
    assert ds.FrameOfReferenceUID == ph.uids["frame_of_reference"]
    assert str(ds.PatientName) == ph.patient["name"] and ds.PatientName.family_name == "PHANTOM"
    k = 2  # file names follow the array order (k = 0 is the lowest slice)
    assert np.allclose([float(v) for v in ds.ImagePositionPatient], (ph.affine @ [k, 0, 0, 1.0])[:3], atol=1e-3)
    hu = ds.pixel_array.astype(np.int32) + int(float(ds.RescaleIntercept))
    assert np.array_equal(hu, ph.hu[k])
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(ph.geometry.spacing_mm[1:], abs=1e-4)
    assert list(ds.WindowCenterWidthExplanation) == ["LUNG", "MEDIASTINUM"]
    loc = pydicom.dcmread(out / "LOC_0001.dcm")
    assert list(loc.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert loc.SeriesInstanceUID != ph.uids["series"]
    ko = pydicom.dcmread(out / "KO_0001.dcm")
    assert "PixelData" not in ko and ko.Modality == "KO"
    truth = load_truth(out)
    assert truth.series_instance_uid == ph.uids["series"]


@pytest.mark.parametrize("rep,ts", [("unsigned", None), ("signed", None), ("signed_offset", None),
                                    ("unsigned", RLELossless), ("signed", JPEGLSLossless),
                                    ("signed_offset", JPEG2000Lossless)])
def test_hu_round_trip(tmp_path: Path, rep: str, ts: str | None) -> None:
    ph = _phantom(3, rep)
    out = write_ct_study(ph, tmp_path, transfer_syntax=ts)
    files = sorted(out.glob("CT_*.dcm"))  # file names follow the array order
    assert len(files) == ph.hu.shape[0]
    for k in (0, len(files) - 1):
        ds = pydicom.dcmread(files[k])
        if ts is not None:
            assert ds.file_meta.TransferSyntaxUID == ts
        assert ds.PixelRepresentation == (0 if rep == "unsigned" else 1)
        assert float(ds.RescaleIntercept) == (0.0 if rep == "signed" else -1024.0)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(float(ds.RescaleIntercept))
        assert np.array_equal(hu, ph.hu[k].astype(np.int32))
    if ts is not None:
        assert _dciodvfy_errors(files[0]) == []


def test_random_names_and_scrambled_instance_numbers(tmp_path: Path) -> None:
    ph = _phantom(5, "signed")
    out = write_ct_study(ph, tmp_path / "first", random_names=True, scramble_instance_numbers=True,
                         with_localizer=True, with_non_image=True)
    files = [p for p in out.iterdir() if p.name != "truth.json"]
    assert len(files) == ph.hu.shape[0] + 2
    assert not any(p.suffix == ".dcm" or p.name.startswith("CT") for p in files)
    by_sop = {}
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if ds.SeriesInstanceUID == ph.uids["series"]:
            by_sop[float(ds.ImagePositionPatient[2])] = int(ds.InstanceNumber)
    numbers = [by_sop[z] for z in sorted(by_sop, reverse=True)]
    assert sorted(numbers) == list(range(1, len(numbers) + 1)) and numbers != sorted(numbers)
    again = write_ct_study(ph, tmp_path / "again", random_names=True, scramble_instance_numbers=True,
                           with_localizer=True, with_non_image=True)
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in out.iterdir())


def test_read_study_selects_the_ct_series(tmp_path: Path) -> None:
    study_mod = pytest.importorskip("lesionlens.dicom.study")
    ph = _phantom(9, "signed_offset")
    out = write_ct_study(ph, tmp_path, random_names=True, scramble_instance_numbers=True,
                         with_localizer=True, with_non_image=True, transfer_syntax=RLELossless)
    res = study_mod.read_study(out)
    assert len(res.volumes) == 1
    vol = res.volumes[0]
    assert vol.series_instance_uid == ph.uids["series"]
    selected = [se for se in res.catalog.series if se.selected]
    assert [se.series_instance_uid for se in selected] == [ph.uids["series"]]
    assert np.allclose(vol.affine, ph.affine, atol=1e-3)
    assert np.array_equal(vol.pixels, ph.hu.astype(np.float32))

"""Volume assembly: sorting by position, affine, gaps, duplicates, splits, mixed pixel representation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from series_factory import SeriesSpec, hu_slice, make_slice, write_series

from lesionlens.dicom import load_series, read_study, scan
from lesionlens.dicom.assemble import plan_series


def _k_of(spec: SeriesSpec, sop: str) -> int:
    return next(k for k in range(spec.n_slices) if str(make_slice(spec, k).SOPInstanceUID) == sop)


@pytest.mark.parametrize("spacing", [2.5, -2.5])
def test_sorted_by_position_not_instance_number_or_name(tmp_path: Path, spacing: float) -> None:
    spec = SeriesSpec(seed=f"sort{spacing}", spacing=spacing, iop=(1, 0, 0, 0, -1, 0) if spacing < 0 else (1, 0, 0, 0, 1, 0))
    write_series(spec, tmp_path)
    (vol,) = read_study(tmp_path).volumes
    assert vol.shape == (spec.n_slices, spec.rows, spec.columns)
    assert vol.is_volumetric and vol.has_patient_geometry
    dists = []
    for k, src in enumerate(vol.sources):
        ds = pydicom.dcmread(src)
        ipp = np.array([float(x) for x in ds.ImagePositionPatient])
        np.testing.assert_allclose(vol.index_to_lps([k, 0, 0]), ipp, atol=1e-6)
        np.testing.assert_array_equal(vol.pixels[k], hu_slice(spec, _k_of(spec, str(ds.SOPInstanceUID))))
        assert vol.sop_instance_uids[k] == ds.SOPInstanceUID
        normal = np.cross(spec.iop[:3], spec.iop[3:])
        dists.append(float(normal @ ipp))
    assert dists == sorted(dists)
    # row/column steps follow IOP × PixelSpacing
    np.testing.assert_allclose(vol.affine[:3, 1], np.array(spec.iop[3:]) * spec.pixel_spacing[0])
    np.testing.assert_allclose(vol.affine[:3, 2], np.array(spec.iop[:3]) * spec.pixel_spacing[1])
    np.testing.assert_allclose(vol.spacing_mm, [abs(spacing), *spec.pixel_spacing])
    assert vol.frame_numbers == [1] * spec.n_slices
    assert vol.metadata["patient_id"] == "P1" and vol.metadata["series_description"] == spec.description


def test_missing_slice_warns(tmp_path: Path) -> None:
    spec = SeriesSpec(seed="gap", skip=(5,))
    write_series(spec, tmp_path)
    (vol,) = read_study(tmp_path).volumes
    codes = [p.code for p in vol.problems]
    assert "missing-slice" in codes
    assert vol.shape[0] == spec.n_slices - 1
    assert not vol.is_volumetric
    # slices before the gap still map to their true position
    for k in (0, 4):
        ds = pydicom.dcmread(vol.sources[k])
        np.testing.assert_allclose(vol.index_to_lps([k, 0, 0]), [float(x) for x in ds.ImagePositionPatient], atol=1e-6)


def test_duplicate_slice_is_dropped_with_warning(tmp_path: Path) -> None:
    spec = SeriesSpec(seed="dup", duplicate=(3,))
    write_series(spec, tmp_path)
    assert len(list(tmp_path.iterdir())) == spec.n_slices + 1
    (vol,) = read_study(tmp_path).volumes
    assert vol.shape[0] == spec.n_slices
    assert "duplicate-slice" in [p.code for p in vol.problems]
    assert len(set(vol.sop_instance_uids)) == spec.n_slices


def test_mixed_pixel_representation_gives_written_hu(tmp_path: Path) -> None:
    spec = SeriesSpec(seed="mixed", pixel_representation=(0, 1, 1))
    write_series(spec, tmp_path)
    reps = {int(pydicom.dcmread(p, stop_before_pixels=True).PixelRepresentation) for p in tmp_path.iterdir()}
    assert reps == {0, 1}
    (vol,) = read_study(tmp_path).volumes
    for k, sop in enumerate(vol.sop_instance_uids):
        np.testing.assert_array_equal(vol.pixels[k], hu_slice(spec, _k_of(spec, sop)))
    assert vol.pixels.dtype == np.float32 and vol.pixels.min() < -900


def test_mixed_matrix_sizes_and_orientations_split(tmp_path: Path) -> None:
    base = SeriesSpec(seed="split", n_slices=12)
    write_series(base, tmp_path / "a")
    # same series UID, other matrix size
    write_series(SeriesSpec(seed="split", n_slices=12, rows=24, columns=24, z0=200.0), tmp_path / "b")
    # same series UID, coronal orientation
    write_series(SeriesSpec(seed="split", n_slices=12, iop=(1, 0, 0, 0, 0, -1), z0=400.0), tmp_path / "c")
    cat = scan(tmp_path)
    (series,) = cat.series
    plans, _ = plan_series(series)
    assert len(plans) == 3
    assert any(p.code == "split" for p in plans[0].problems)
    vols = load_series(series)
    assert sorted(v.shape for v in vols) == sorted([(12, 32, 32), (12, 24, 24), (12, 32, 32)])
    assert all(any(p.code == "split" for p in v.problems) for v in vols)


def test_gantry_tilt_keeps_sheared_affine(tmp_path: Path) -> None:
    spec = SeriesSpec(seed="tilt", tilt_mm_per_slice=0.6)
    write_series(spec, tmp_path)
    (vol,) = read_study(tmp_path).volumes
    assert "gantry-tilt" in [p.code for p in vol.problems]
    k = vol.shape[0] - 1
    ds = pydicom.dcmread(vol.sources[k])
    np.testing.assert_allclose(vol.index_to_lps([k, 0, 0]), [float(x) for x in ds.ImagePositionPatient], atol=1e-6)


def test_enhanced_multiframe_per_frame_geometry(pydicom_data_files: Path) -> None:
    src = pydicom_data_files / "eCT_Supplemental.dcm"
    result = read_study(src)
    (series,) = result.catalog.series
    assert not series.selected and "DERIVED" in series.reason  # ImageType DERIVED\PRIMARY\PERFUSION
    (vol,) = load_series(series)
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    assert vol.shape == (2, int(ds.Rows), int(ds.Columns))
    assert vol.has_patient_geometry
    for k, fn in enumerate(vol.frame_numbers):
        pos = ds.PerFrameFunctionalGroupsSequence[fn - 1].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(vol.index_to_lps([k, 0, 0]), [float(x) for x in pos], atol=1e-4)
    ps = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    np.testing.assert_allclose(vol.spacing_mm[1:], [float(x) for x in ps])
    assert vol.sop_instance_uids == [ds.SOPInstanceUID] * 2


def test_multiframe_without_geometry_one_volume(pydicom_data_files: Path) -> None:
    src = pydicom_data_files / "emri_small.dcm"
    (series,) = scan(src).series
    (vol,) = load_series(series)
    assert vol.shape == (10, 64, 64)
    assert vol.frame_numbers == list(range(1, 11))
    assert not vol.has_patient_geometry
    assert np.ptp(vol.pixels) > 0


@pytest.mark.parametrize(
    "name, modality",
    [("RG3_UNCR.dcm", "CR"), ("US1_UNCR.dcm", "US"), ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US")],
)
def test_2d_images_load_as_single_slice(pydicom_data_files: Path, name: str, modality: str) -> None:
    src = pydicom_data_files / name
    result = read_study(src)
    (series,) = result.catalog.series
    assert series.selected, series.reason
    (vol,) = result.volumes
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    assert vol.modality == modality
    assert vol.shape[:3] == (1, int(ds.Rows), int(ds.Columns))
    assert not vol.has_patient_geometry
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if ps is not None:
        np.testing.assert_allclose(vol.spacing_mm[1:], [float(x) for x in ps])


def test_2d_mammo_from_pydicom_test_files(pydicom_files: Path, tmp_path: Path) -> None:
    # a DX-like image without patient geometry: reuse CT_small's pixels as an MG object
    ds = pydicom.dcmread(pydicom_files / "CT_small.dcm")
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, kw)
    ds.Modality = "MG"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.ImagerPixelSpacing = [0.1, 0.12]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    from lesionlens.dicom.write import save_dataset

    save_dataset(ds, tmp_path / "mg.dcm")
    (vol,) = read_study(tmp_path).volumes
    assert vol.shape == (1, 128, 128) and not vol.has_patient_geometry
    np.testing.assert_allclose(vol.spacing_mm[1:], [0.1, 0.12])
    np.testing.assert_allclose(vol.pixels[0], ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))

"""The safe reader: formats it accepts, the fast path, and what it refuses."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from series_factory import SeriesSpec, make_slice, write_series

from lesionlens.dicom.io import ReadLimits, read_dataset, read_header, split_source
from lesionlens.dicom.pixels import decode_pixels
from lesionlens.dicom.study import decode_source
from lesionlens.errors import DicomReadError, NotDicomError


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"]
)
def test_read_dataset_matches_pydicom(pydicom_files: Path, name: str) -> None:
    ours = read_dataset(pydicom_files / name)
    ref = pydicom.dcmread(pydicom_files / name, force=True)
    assert ours.SOPInstanceUID == ref.SOPInstanceUID
    assert ours.Rows == ref.Rows and ours.Columns == ref.Columns
    np.testing.assert_array_equal(decode_pixels(ours, name), decode_pixels(ref, name))


def test_header_read_locates_pixels(pydicom_files: Path) -> None:
    hr = read_header(pydicom_files / "CT_small.dcm")
    assert "PixelData" not in hr.dataset
    assert hr.pixel is not None and hr.pixel.length == 128 * 128 * 2
    raw = (pydicom_files / "CT_small.dcm").read_bytes()
    ref = pydicom.dcmread(pydicom_files / "CT_small.dcm")
    assert raw[hr.pixel.offset : hr.pixel.offset + hr.pixel.length] == ref.PixelData


def test_fast_path_equals_decode_pixels(tmp_path: Path) -> None:
    spec = SeriesSpec(seed="fast", pixel_representation=(0, 1))
    paths = write_series(spec, tmp_path)
    for p in paths[:2]:
        fast = decode_source(str(p))
        assert fast.problem is None and fast.pixels is not None
        np.testing.assert_array_equal(fast.pixels, decode_pixels(pydicom.dcmread(p), str(p)))


def test_zip_member_source(tmp_path: Path) -> None:
    paths = write_series(SeriesSpec(seed="zip", n_slices=2), tmp_path / "s")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(paths[0], "dir/one.dcm")
    src = f"{archive}!dir/one.dcm"
    assert split_source(src) == (archive, "dir/one.dcm")
    ds = read_dataset(src)
    assert ds.SOPInstanceUID == make_slice(SeriesSpec(seed="zip", n_slices=2), 0).SOPInstanceUID
    with pytest.raises(DicomReadError) as err:
        read_dataset(f"{archive}!missing.dcm")
    assert err.value.path == f"{archive}!missing.dcm"


def test_file_size_cap(tmp_path: Path) -> None:
    (p,) = write_series(SeriesSpec(seed="cap", n_slices=1), tmp_path)
    with pytest.raises(Exception) as err:
        read_dataset(p, limits=ReadLimits(max_file_bytes=1000))
    assert err.value.code == "too-large" and err.value.path == str(p)  # type: ignore[attr-defined]


def test_text_and_png_are_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello, this is not an image\n" * 10)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    for name, word in (("a.txt", "text"), ("b.png", "PNG")):
        with pytest.raises(NotDicomError) as err:
            read_dataset(tmp_path / name)
        assert word in err.value.reason and err.value.path == str(tmp_path / name)


def test_an_object_without_pixel_data_reads_whole_and_header_only(pydicom_files: Path) -> None:
    # an SR ends after its content tree: reading "the rest after the pixels" must not run past the end
    src = pydicom_files / "test-SR.dcm"
    whole = read_dataset(src)
    header = read_dataset(src, stop_before_pixels=True)
    assert whole.SOPInstanceUID == header.SOPInstanceUID and "PixelData" not in whole
    assert len(whole.ContentSequence) == len(header.ContentSequence) > 0

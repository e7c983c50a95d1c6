"""PNG/TIFF/NIfTI/MetaImage readers and writers: round trips keep values and LPS geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionlens.dicom.formats import read_image, write_mhd, write_nifti, write_png
from lesionlens.dicom.types import Volume
from lesionlens.errors import DataFormatError, OutputError, UnsupportedInputError


def dicom_like_volume(oblique: bool = True) -> Volume:
    """A (4, 5, 6) CT-like volume with the affine DICOM IOP/IPP/PixelSpacing would give."""
    row_dir = np.array([1.0, 0.0, 0.0])  # IOP row direction (moving right along a row)
    col_dir = np.array([0.0, 1.0, 0.0])  # IOP column direction (moving down)
    if oblique:
        a = np.deg2rad(20)
        row_dir = np.array([np.cos(a), np.sin(a), 0.0])
        col_dir = np.array([-np.sin(a) * np.cos(0.3), np.cos(a) * np.cos(0.3), np.sin(0.3)])
    normal = np.cross(row_dir, col_dir)
    affine = np.eye(4)
    affine[:3, 0] = normal * 2.5  # slice step
    affine[:3, 1] = col_dir * 0.8  # PixelSpacing[0]
    affine[:3, 2] = row_dir * 0.7  # PixelSpacing[1]
    affine[:3, 3] = [-120.0, -95.5, 310.25]  # IPP of slice 0
    pixels = np.random.default_rng(1).integers(-1024, 2000, (4, 5, 6)).astype(np.float32)
    return Volume(pixels=pixels, affine=affine, is_volumetric=True, has_patient_geometry=True)


def _grid(shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n) for n in shape[:3]], indexing="ij"), axis=-1).reshape(-1, 3)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.mhd", "v.mha"])
def test_round_trip_keeps_every_voxel_position_and_value(tmp_path: Path, name: str) -> None:
    vol = dicom_like_volume()
    path = tmp_path / name
    (write_nifti if ".nii" in name else write_mhd)(path, vol)
    back = read_image(path)
    np.testing.assert_array_equal(back.pixels, vol.pixels)
    idx = _grid(vol.shape)
    np.testing.assert_allclose(back.index_to_lps(idx), vol.index_to_lps(idx), atol=1e-4)
    assert back.has_patient_geometry


def test_nifti_header_is_ras(tmp_path: Path) -> None:
    import nibabel as nib

    write_nifti(tmp_path / "axial.nii.gz", dicom_like_volume(oblique=False))
    img = nib.load(str(tmp_path / "axial.nii.gz"))
    # columns go to patient Left, rows to Posterior, slices to Superior: LPS in voxel-axis terms
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert img.shape == (6, 5, 4)  # (columns, rows, slices)
    # voxel (i=c=3, j=r=2, k=1) in RAS equals our LPS with x, y negated
    ras = img.affine @ [3, 2, 1, 1]
    lps = dicom_like_volume(oblique=False).index_to_lps(np.array([1, 2, 3]))
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1])


def test_luna16_style_header_is_read_as_lps(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype="<i2").reshape(2, 3, 4)  # (z, y, x)
    (tmp_path / "scan.raw").write_bytes(data.tobytes())
    (tmp_path / "scan.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -195 -195 -378\n"
        "CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\nElementSpacing = 0.7 0.8 2.5\n"
        "DimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = scan.raw\n"
    )
    vol = read_image(tmp_path / "scan.mhd")
    assert vol.shape == (2, 3, 4)
    assert vol.pixels[1, 2, 3] == data[1, 2, 3]
    np.testing.assert_allclose(vol.index_to_lps(np.array([1, 2, 3])), [-195 + 3 * 0.7, -195 + 2 * 0.8, -378 + 2.5])
    np.testing.assert_allclose(vol.spacing_mm, [2.5, 0.8, 0.7])


def test_truncated_raw_names_the_file(tmp_path: Path) -> None:
    write_mhd(tmp_path / "t.mhd", dicom_like_volume())
    raw = tmp_path / "t.raw"
    raw.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="truncated") as info:
        read_image(tmp_path / "t.mhd")
    assert info.value.path == str(tmp_path / "t.mhd")


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ("NDims = 3\nDimSize = 4 3\nElementType = MET_SHORT\nElementDataFile = x.raw\n", DataFormatError),
        ("NDims = 3\nDimSize = 1 1 1\nElementType = MET_COMPLEX\nElementDataFile = x.raw\n", UnsupportedInputError),
        ("NDims = 3\nDimSize = 1 1 1\nElementType = MET_SHORT\n", DataFormatError),
        ("NDims = 3\nDimSize = 1 1 1\nElementType = MET_SHORT\nElementDataFile = missing.raw\n", DataFormatError),
        ("this is not a header\nElementDataFile = x.raw\n", DataFormatError),
    ],
)
def test_bad_headers(tmp_path: Path, header: str, error: type[Exception]) -> None:
    (tmp_path / "x.raw").write_bytes(b"\x00" * 64)
    (tmp_path / "bad.mhd").write_text(header)
    with pytest.raises(error) as info:
        read_image(tmp_path / "bad.mhd")
    assert "bad.mhd" in str(info.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_grey_round_trip(tmp_path: Path, dtype: type) -> None:
    img = (np.arange(35).reshape(5, 7) * (1000 if dtype == np.uint16 else 7)).astype(dtype)
    write_png(tmp_path / "g.png", img)
    vol = read_image(tmp_path / "g.png")
    assert vol.shape == (1, 5, 7) and vol.pixels.dtype == np.float32
    np.testing.assert_array_equal(vol.pixels[0], img)
    assert not vol.has_patient_geometry


def test_png_rgb_round_trip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    write_png(tmp_path / "c.png", rgb)
    vol = read_image(tmp_path / "c.png")
    assert vol.shape == (1, 4, 6, 3) and vol.pixels.dtype == np.uint8
    np.testing.assert_array_equal(vol.pixels[0], rgb)


def test_jpeg_and_tiff(tmp_path: Path) -> None:
    import tifffile
    from PIL import Image

    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert abs(float(read_image(tmp_path / "a.jpg").pixels.mean()) - 100) < 2
    pages = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5) * 1000
    tifffile.imwrite(tmp_path / "s.tif", pages, photometric="minisblack")
    vol = read_image(tmp_path / "s.tif")
    assert vol.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.pixels, pages)


def test_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataFormatError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "x.bmpx").write_bytes(b"x")
    with pytest.raises(UnsupportedInputError, match="x.bmpx"):
        read_image(tmp_path / "x.bmpx")
    (tmp_path / "bad.nii").write_bytes(b"\x00" * 100)
    with pytest.raises(DataFormatError, match="bad.nii"):
        read_image(tmp_path / "bad.nii")


def test_writers_refuse_wrong_arrays(tmp_path: Path) -> None:
    with pytest.raises(OutputError):
        write_png(tmp_path / "f.png", np.zeros((3, 3), np.float32))
    rgb = Volume(pixels=np.zeros((1, 2, 2, 3), np.uint8), affine=np.eye(4))
    with pytest.raises(OutputError):
        write_nifti(tmp_path / "c.nii", rgb)
    with pytest.raises(OutputError):
        write_mhd(tmp_path / "c.mhd", dicom_like_volume(), element_type="MET_NOPE")


def test_mhd_clips_into_the_element_type(tmp_path: Path) -> None:
    vol = dicom_like_volume()
    vol.pixels[0, 0, 0] = 300.4
    write_mhd(tmp_path / "u8.mhd", vol, element_type="MET_UCHAR")
    back = read_image(tmp_path / "u8.mhd")
    assert back.pixels[0, 0, 0] == 255 and back.pixels.min() >= 0


@pytest.mark.parametrize("style", ["LIST", "LIST 2D", "pattern"])
def test_mhd_with_one_data_file_per_slice_reads_like_the_single_file(tmp_path: Path, style: str) -> None:
    vol = dicom_like_volume()
    write_mhd(tmp_path / "one.mhd", vol)
    single = read_image(tmp_path / "one.mhd")
    header = (tmp_path / "one.mhd").read_text()
    raw = (tmp_path / "one.raw").read_bytes()
    k = vol.pixels.shape[0]
    per = len(raw) // k
    names = [f"slice{i + 1:03d}.raw" for i in range(k)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(raw[i * per:(i + 1) * per])
    head = header[: header.index("ElementDataFile")]
    if style == "pattern":
        text = head + f"ElementDataFile = slice%03d.raw 1 {k} 1\n"
    else:
        text = head + f"ElementDataFile = {style}\n" + "\n".join(names) + "\n"
    (tmp_path / "split.mhd").write_text(text)
    back = read_image(tmp_path / "split.mhd")
    np.testing.assert_array_equal(back.pixels, single.pixels)
    np.testing.assert_allclose(back.affine, single.affine)
    # one slice file missing: named, no traceback
    (tmp_path / names[-1]).unlink()
    with pytest.raises(DataFormatError, match=names[-1] if style != "pattern" else "slice"):
        read_image(tmp_path / "split.mhd")


def test_mhd_bad_pattern_is_named(tmp_path: Path) -> None:
    write_mhd(tmp_path / "one.mhd", dicom_like_volume())
    header = (tmp_path / "one.mhd").read_text()
    (tmp_path / "p.mhd").write_text(header[: header.index("ElementDataFile")] + "ElementDataFile = s%03d.raw one\n")
    with pytest.raises(DataFormatError, match="bad ElementDataFile pattern"):
        read_image(tmp_path / "p.mhd")

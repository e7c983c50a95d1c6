"""Conformance of decode_pixels over every image file shipped with pydicom and pydicom-data.

For each file with pixel data: decode_pixels gives ``(F, R, C)`` float32 / ``(F, R, C, 3)`` uint8
equal to pydicom's own decode (modality LUT applied; colour converted to RGB) — or raises the
documented typed error listed in EXPECTED_FAILURES. Lossless files also decode equal to their
uncompressed twins. Files that cannot be decoded are listed in docs/decoding.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from tests.conftest import pydicom_data_dir, pydicom_test_files_dir
from pydicom.pixels import apply_color_lut, apply_modality_lut

from lesionlens.dicom.pixels import PLUGIN_ORDER, decode_pixels, frame_count, transfer_syntax_of
from lesionlens.errors import PixelDecodeError

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: file name → (error class, code, why). Each is a deliberately broken test file.
EXPECTED_FAILURES: dict[str, tuple[type[Exception], str, str]] = {
    "MR_truncated.dcm": (PixelDecodeError, "pixel-truncated", "pixel data cut short on purpose"),
    "badVR.dcm": (PixelDecodeError, "pixel-decode", "header value with an invalid VR (Rows is not a number)"),
    "meta_missing_tsyntax.dcm": (PixelDecodeError, "pixel-header", "dummy Pixel Data without Rows/Columns"),
    "nested_priv_SQ.dcm": (PixelDecodeError, "pixel-header", "dummy Pixel Data without Rows/Columns"),
    "JPEG2000-embedded-sequence-delimiter.dcm": (
        PixelDecodeError,
        "pixel-decode",
        "the codestream contains a sequence delimiter, so the fragment is cut short; no codec decodes it",
    ),
}

#: files pydicom itself cannot decode → (twin that decodes to about the same image, max abs diff)
LOSSY_TWINS: dict[str, tuple[str, float]] = {
    # 12-bit JPEG Extended; pydicom's plugins refuse it, our direct-GDCM fallback decodes it
    "JPEG-lossy.dcm": ("JPGExtended.dcm", 1.0),
}

#: lossless / re-encoded file → uncompressed (or differently encoded) twin; decodes must be equal
TWINS: list[tuple[str, str]] = [
    ("693_J2KR.dcm", "693_UNCR.dcm"),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
    ("RG3_J2KR.dcm", "RG3_UNCR.dcm"),
    ("US1_J2KR.dcm", "US1_UNCR.dcm"),
    ("JPEG2000.dcm", "JPEG2000_UNC.dcm"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),
    ("SC_rgb_gdcm_KY.dcm", "SC_rgb.dcm"),
    ("gdcm-US-ALOKA-16_big.dcm", "gdcm-US-ALOKA-16.dcm"),
    ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
    ("liver_expb.dcm", "liver.dcm"),
    ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
    ("rtdose_rle.dcm", "rtdose.dcm"),
    ("rtdose_expb.dcm", "rtdose.dcm"),
    ("rtdose_rle_1frame.dcm", "rtdose_1frame.dcm"),
    ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm"),
    ("OBXXXX1A_expb.dcm", "OBXXXX1A.dcm"),
    ("OBXXXX1A_rle_2frame.dcm", "OBXXXX1A_2frame.dcm"),
    ("OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_2frame.dcm"),
    ("emri_small_RLE.dcm", "emri_small.dcm"),
    ("emri_small_big_endian.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("MR_small_expb.dcm", "MR_small.dcm"),
    ("MR_small_implicit.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_padded.dcm", "MR_small.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ("SC_rgb_expb.dcm", "SC_rgb.dcm"),
    ("SC_rgb_rle_2frame.dcm", "SC_rgb_2frame.dcm"),
    ("SC_rgb_expb_2frame.dcm", "SC_rgb_2frame.dcm"),
    ("SC_rgb_rle_16bit.dcm", "SC_rgb_16bit.dcm"),
    ("SC_rgb_expb_16bit_2frame.dcm", "SC_rgb_16bit_2frame.dcm"),
    ("SC_rgb_rle_32bit.dcm", "SC_rgb_32bit.dcm"),
    ("SC_rgb_expb_32bit_2frame.dcm", "SC_rgb_32bit_2frame.dcm"),
    ("color-pl.dcm", "color-px.dcm"),
]


def _image_files() -> list[Path]:
    roots = [pydicom_test_files_dir(), pydicom_data_dir()]
    found: list[Path] = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, force=True, defer_size=256)
            except Exception:  # noqa: BLE001, S112 - not DICOM: not an image file
                continue  # not DICOM or not parseable: not an image file
            if any(k in ds for k in _PIXEL_KEYWORDS):
                found.append(path)
    return found


IMAGE_FILES = _image_files()
BY_NAME = {p.name: p for p in IMAGE_FILES}


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, force=True)


def _reference(ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's decode with the first plugin of our order, modality LUT / colour applied."""
    ts = transfer_syntax_of(ds)
    ds.file_meta.TransferSyntaxUID = ts  # some test files lack it in their file meta
    if ts.is_compressed:
        from pydicom.pixels import get_decoder

        available = get_decoder(ts).available_plugins
        ds.pixel_array_options(decoding_plugin=next(p for p in PLUGIN_ORDER if p in available))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array
    spp = int(ds.get("SamplesPerPixel", 1))
    if arr.ndim == (3 if spp == 3 else 2):
        arr = arr[np.newaxis]
    if spp == 3:
        bits = int(ds.BitsStored)
        return (arr.astype(np.uint64) >> max(bits - 8, 0)).astype(np.uint8)
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        if not ts.is_little_endian and "RedPaletteColorLookupTableData" in ds:
            # pydicom reads non-segmented palette bytes as little endian: give it swapped copies
            for c in ("Red", "Green", "Blue"):
                el = ds[f"{c}PaletteColorLookupTableData"]
                if len(el.value) == 2 * (ds.RedPaletteColorLookupTableDescriptor[0] or 65536):
                    el.value = np.frombuffer(el.value, ">u2").astype("<u2").tobytes()
        rgb = apply_color_lut(arr, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return rgb.astype(np.uint8) if depth <= 8 else (rgb >> (depth - 8)).astype(np.uint8)
    if "PixelData" not in ds:
        return arr.astype(np.float32)
    frames = []
    for i in range(arr.shape[0]):
        frames.append(apply_modality_lut(arr[i], _frame_modality_ds(ds, i)))
    return np.stack(frames).astype(np.float32)


def _frame_modality_ds(ds: pydicom.Dataset, i: int) -> pydicom.Dataset:
    """The dataset whose Rescale attributes apply to frame ``i`` (enhanced multi-frame aware)."""
    for group in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(group)
        if seq:
            item = seq[i] if group.startswith("PerFrame") and i < len(seq) else seq[0]
            pvt = item.get("PixelValueTransformationSequence")
            if pvt and "RescaleSlope" in pvt[0]:
                return pvt[0]
    return ds


def test_the_collection_is_complete() -> None:
    # both sources are present and the expected-failure list names real files
    assert len(IMAGE_FILES) > 100
    assert set(EXPECTED_FAILURES) <= set(BY_NAME)
    assert all(a in BY_NAME and b in BY_NAME for a, b in TWINS)


@pytest.mark.parametrize("path", IMAGE_FILES, ids=_id)
def test_decode_matches_pydicom(path: Path) -> None:
    ds = _read(path)
    if path.name in EXPECTED_FAILURES:
        error, code, _why = EXPECTED_FAILURES[path.name]
        with pytest.raises(error) as info:
            decode_pixels(ds, str(path))
        assert info.value.code == code
        assert str(path) in str(info.value)
        return
    out = decode_pixels(ds, str(path))
    rows, cols, frames = int(ds.Rows), int(ds.Columns), frame_count(ds)
    colour = int(ds.get("SamplesPerPixel", 1)) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    if colour:
        assert out.shape == (frames, rows, cols, 3) and out.dtype == np.uint8
    else:
        assert out.shape == (frames, rows, cols) and out.dtype == np.float32
    if path.name in LOSSY_TWINS:
        twin, tol = LOSSY_TWINS[path.name]
        ref = decode_pixels(_read(BY_NAME[twin]), twin)
        assert np.abs(out.astype(np.float64) - ref).max() <= tol
        return
    np.testing.assert_array_equal(out, _reference(_read(path)))


@pytest.mark.parametrize(("compressed", "plain"), TWINS, ids=[a for a, _ in TWINS])
def test_lossless_twins_decode_equal(compressed: str, plain: str) -> None:
    a = decode_pixels(_read(BY_NAME[compressed]), compressed)
    b = decode_pixels(_read(BY_NAME[plain]), plain)
    np.testing.assert_array_equal(a, b)


def test_ct_comes_out_in_hounsfield_units() -> None:
    path = BY_NAME["CT_small.dcm"]
    ds = _read(path)
    hu = decode_pixels(ds, str(path))
    stored = ds.pixel_array.astype(np.float64)
    np.testing.assert_allclose(hu[0], stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert float(ds.RescaleIntercept) != 0 and hu.min() < 0  # air/fat below zero HU

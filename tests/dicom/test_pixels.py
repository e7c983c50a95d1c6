"""decode_pixels / display_info on hand-made datasets: bad input, modality LUTs, enhanced frames."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from lesionlens.dicom.pixels import decode_pixels, display_info
from lesionlens.errors import PixelDecodeError, UnsupportedTransferSyntaxError


def _grey(stored: np.ndarray, ts: str = ExplicitVRLittleEndian, **attrs: object) -> Dataset:
    """stored: (F, R, C) int16 → a minimal MONOCHROME2 dataset."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    f, r, c = stored.shape
    ds.Rows, ds.Columns, ds.SamplesPerPixel = r, c, 1
    if f > 1:
        ds.NumberOfFrames = f
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = stored.astype("<i2").tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_rescale_gives_physical_float32() -> None:
    stored = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    out = decode_pixels(_grey(stored, RescaleSlope=2.5, RescaleIntercept=-1024), "a.dcm")
    assert out.dtype == np.float32 and out.shape == (2, 3, 4)
    np.testing.assert_allclose(out, stored * 2.5 - 1024)


def test_modality_lut_sequence_maps_values() -> None:
    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]  # 4 entries, first mapped value 10
    item.LUTData = [100, 200, 300, 400]
    item.ModalityLUTType = "HU"
    stored = np.array([[[5, 10, 11, 12, 13, 99]]], dtype=np.int16)
    out = decode_pixels(_grey(stored, ModalityLUTSequence=Sequence([item])), "lut.dcm")
    np.testing.assert_array_equal(out[0, 0], [100, 100, 200, 300, 400, 400])


def test_enhanced_per_frame_rescale() -> None:
    stored = np.ones((3, 2, 2), dtype=np.int16) * 10
    ds = _grey(stored)
    shared = Dataset()
    t = Dataset()
    t.RescaleSlope, t.RescaleIntercept, t.RescaleType = 1, 0, "US"
    shared.PixelValueTransformationSequence = Sequence([t])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for slope, inter in [(1.0, 0.0), (2.0, -5.0), (None, None)]:
        item = Dataset()
        if slope is not None:
            pvt = Dataset()
            pvt.RescaleSlope, pvt.RescaleIntercept = slope, inter
            item.PixelValueTransformationSequence = Sequence([pvt])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    out = decode_pixels(ds, "enh.dcm")
    assert out[:, 0, 0].tolist() == [10.0, 15.0, 10.0]  # frame 3 falls back to the shared group


def test_missing_pixel_data_names_file() -> None:
    ds = _grey(np.zeros((1, 2, 2), np.int16))
    del ds.PixelData
    with pytest.raises(PixelDecodeError, match="no Pixel Data") as info:
        decode_pixels(ds, "/data/x.dcm")
    assert info.value.path == "/data/x.dcm" and info.value.code == "no-pixel-data"


def test_short_pixel_data_is_reported_with_sizes() -> None:
    ds = _grey(np.zeros((2, 4, 4), np.int16))
    ds.PixelData = ds.PixelData[:-6]
    with pytest.raises(PixelDecodeError, match="shorter than") as info:
        decode_pixels(ds, "short.dcm")
    assert "64 bytes" in str(info.value) and info.value.path == "short.dcm"


def test_unknown_transfer_syntax_is_unsupported() -> None:
    ds = _grey(np.zeros((1, 2, 2), np.int16), ts="1.2.3.4.5.6.7")
    with pytest.raises(UnsupportedTransferSyntaxError) as info:
        decode_pixels(ds, "odd.dcm")
    assert info.value.path == "odd.dcm"


def test_garbage_compressed_data_is_a_decode_error() -> None:
    ds = _grey(np.zeros((1, 8, 8), np.int16), ts="1.2.840.10008.1.2.4.90")
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    with pytest.raises(PixelDecodeError, match="could not decode") as info:
        decode_pixels(ds, "bad_j2k.dcm")
    assert info.value.path == "bad_j2k.dcm"


def test_file_meta_without_syntax_is_inferred_and_caller_untouched() -> None:
    ds = _grey(np.full((1, 2, 2), 7, np.int16))
    del ds.file_meta.TransferSyntaxUID
    ds.set_original_encoding(False, True)
    out = decode_pixels(ds, "nometa.dcm")
    assert out.tolist() == [[[7, 7], [7, 7]]]
    assert "TransferSyntaxUID" not in ds.file_meta


def test_display_info_multi_valued_windows_and_monochrome1() -> None:
    ds = _grey(np.zeros((1, 2, 2), np.int16), WindowCenter=[40, -600], WindowWidth=[400, 1500],
               VOILUTFunction="SIGMOID", PhotometricInterpretation="MONOCHROME1")
    info = display_info(ds)
    assert info.windows == [(40.0, 400.0), (-600.0, 1500.0)]
    assert info.voi_function == "SIGMOID" and info.invert and info.source_photometric == "MONOCHROME1"


def test_display_info_voi_lut_sequence() -> None:
    item = Dataset()
    item.LUTDescriptor = [3, -10, 8]
    item.LUTData = [0, 128, 255]
    ds = _grey(np.zeros((1, 2, 2), np.int16), VOILUTSequence=Sequence([item]))
    first, bits, table = display_info(ds).voi_lut  # type: ignore[misc]
    assert (first, bits, table.tolist()) == (-10, 8, [0, 128, 255])

"""Decoding DICOM pixel data into physical values.

:func:`decode_pixels` turns the Pixel Data of one dataset (every frame) into

* ``(F, R, C)`` ``float32`` physical values — the modality LUT applied (Rescale Slope/Intercept,
  Modality LUT Sequence, or the per-frame Pixel Value Transformation of enhanced multi-frame
  objects), so CT comes out in Hounsfield units; or
* ``(F, R, C, 3)`` ``uint8`` RGB for colour images (RGB, YBR_* converted to RGB, PALETTE COLOR
  expanded through its palette; samples of more than 8 bits are scaled down to 8 bits).

Nothing is squashed to 8 bits for greyscale: windowing for display lives in
:mod:`lesionlens.dicom.display`. MONOCHROME1 pixels are returned as stored (physical values);
:func:`display_info` records that the display must invert them.

Codecs: pydicom 3 decoders. For compressed transfer syntaxes the available plugins are tried in
the order :data:`PLUGIN_ORDER` (pylibjpeg first, then GDCM, ...); the first that succeeds wins.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from lesionlens.dicom.types import DisplayInfo
from lesionlens.errors import PixelDecodeError, UnsupportedTransferSyntaxError

#: Order in which decoding plugins are tried for compressed transfer syntaxes.
PLUGIN_ORDER: tuple[str, ...] = ("pylibjpeg", "gdcm", "pyjpegls", "pillow", "pydicom")

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_COLOUR_PHOTOMETRIC = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422"}

__all__ = ["PLUGIN_ORDER", "decode_pixels", "display_info", "frame_count", "transfer_syntax_of"]


def frame_count(ds: Dataset) -> int:
    """Number of frames in ``ds`` (1 when NumberOfFrames is absent or malformed)."""
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1
    return max(n, 1)


def _shallow_copy(ds: Dataset) -> Dataset:
    """A new dataset sharing the element objects but not the element dict (safe to replace
    elements or file meta without touching ``ds``)."""
    out = Dataset({tag: elem for tag, elem in ds.items()})
    meta = getattr(ds, "file_meta", None)
    out.file_meta = FileMetaDataset({tag: elem for tag, elem in meta.items()}) if meta is not None else FileMetaDataset()
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is not None and little is not None:
        out.set_original_encoding(implicit, little, getattr(ds, "original_character_set", None))
    out.filename = getattr(ds, "filename", None)
    return out


def transfer_syntax_of(ds: Dataset) -> UID:
    """The dataset's transfer syntax; inferred from how it was read when the file meta lacks it."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if little is False:
        return ExplicitVRBigEndian
    if implicit is False:
        return ExplicitVRLittleEndian
    return ImplicitVRLittleEndian


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    try:
        value = ds.get(keyword, default)
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _check_native_length(ds: Dataset, source: str, keyword: str) -> None:
    """Raise :class:`PixelDecodeError` when uncompressed pixel data is shorter than the header says."""
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows <= 0 or cols <= 0:
        raise PixelDecodeError(f"Rows/Columns missing or zero ({rows}x{cols})", path=source, code="pixel-header")
    frames = frame_count(ds)
    spp = _int(ds, "SamplesPerPixel", 1) or 1
    if keyword == "PixelData":
        bits = _int(ds, "BitsAllocated", 0)
        if bits <= 0:
            raise PixelDecodeError("BitsAllocated missing or zero", path=source, code="pixel-header")
    else:
        bits = 32 if keyword == "FloatPixelData" else 64
    pixels = rows * cols * frames * spp
    if bits == 1:
        expected = math.ceil(pixels / 8)
    else:
        expected = pixels * (bits // 8)
        if ds.get("PhotometricInterpretation", "") == "YBR_FULL_422":
            expected = expected // 3 * 2  # two luminance + two chrominance samples per pixel pair
    value = ds[keyword].value
    actual = len(value) if value is not None else 0
    if actual < expected:
        raise PixelDecodeError(
            f"pixel data is {actual} bytes, shorter than Rows×Columns×Frames×Samples×bytes = "
            f"{rows}×{cols}×{frames}×{spp}×{bits}/8 = {expected} bytes",
            path=source,
            code="pixel-truncated",
        )


def _raw_decode(ds: Dataset, source: str, keyword: str) -> np.ndarray:
    """Decode all frames with pydicom, trying the installed plugins in :data:`PLUGIN_ORDER`."""
    tsyntax = transfer_syntax_of(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds = _shallow_copy(ds)  # do not touch the caller's dataset
        ds.file_meta.TransferSyntaxUID = tsyntax
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            f"no decoder for transfer syntax {tsyntax} ({getattr(tsyntax, 'name', '')})", path=source
        ) from exc
    if tsyntax.is_compressed:
        if not decoder.is_available:
            raise UnsupportedTransferSyntaxError(
                f"no installed codec decodes {tsyntax.name} ({tsyntax}); "
                f"missing: {'; '.join(decoder.missing_dependencies)}",
                path=source,
            )
        plugins = [p for p in PLUGIN_ORDER if p in decoder.available_plugins]
        plugins += [p for p in decoder.available_plugins if p not in plugins]
    else:
        _check_native_length(ds, source, keyword)
        plugins = [""]
    failures: list[str] = []
    for plugin in plugins:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr, _ = decoder.as_array(ds, decoding_plugin=plugin, as_rgb=True)  # type: ignore[arg-type]
            return arr
        except Exception as exc:  # noqa: BLE001 - codec libraries raise many exception types
            failures.append(f"{plugin or 'native'}: {type(exc).__name__}: {exc}".strip())
    if tsyntax.is_compressed and _int(ds, "SamplesPerPixel", 1) == 1:
        try:
            return _gdcm_direct(ds)
        except Exception as exc:  # noqa: BLE001 - GDCM reports failures loosely
            failures.append(f"gdcm-direct: {type(exc).__name__}: {exc}")
    raise PixelDecodeError(
        f"could not decode {tsyntax.name} pixel data ({' | '.join(failures)})"[:800], path=source
    )


_GDCM_DTYPES = {"UINT8": "u1", "INT8": "i1", "UINT16": "<u2", "INT16": "<i2", "UINT32": "<u4", "INT32": "<i4"}


def _gdcm_direct(ds: Dataset) -> np.ndarray:
    """Last resort for greyscale compressed data: python-gdcm's own image reader.

    pydicom's GDCM plugin refuses some streams that GDCM itself decodes (e.g. 12-bit JPEG
    Extended); this reads the dataset through ``gdcm.ImageReader`` directly.
    Returns (F, R, C) stored values.
    """
    import gdcm  # python-gdcm

    rows, cols, frames = _int(ds, "Rows"), _int(ds, "Columns"), frame_count(ds)
    filename = getattr(ds, "filename", None)
    tmp: str | None = None
    if not (isinstance(filename, str) and os.path.isfile(filename)):
        fd, tmp = tempfile.mkstemp(suffix=".dcm")
        with os.fdopen(fd, "wb") as fh:
            pydicom.dcmwrite(fh, ds, enforce_file_format=False)
        filename = tmp
    try:
        reader = gdcm.ImageReader()
        reader.SetFileName(filename)
        if not reader.Read():
            raise RuntimeError("gdcm.ImageReader could not read the file")
        image = reader.GetImage()
        dtype = _GDCM_DTYPES.get(image.GetPixelFormat().GetScalarTypeAsString())
        if dtype is None:
            raise RuntimeError(f"unsupported GDCM pixel type {image.GetPixelFormat().GetScalarTypeAsString()}")
        buf = image.GetBuffer().encode("utf-8", "surrogateescape")
    finally:
        if tmp is not None:
            os.unlink(tmp)
    arr = np.frombuffer(buf, dtype=dtype)
    if arr.size != rows * cols * frames:
        raise RuntimeError(f"GDCM returned {arr.size} samples, expected {rows * cols * frames}")
    return arr.reshape(frames, rows, cols).astype(dtype.lstrip("<"))


def _frame_transform(item: Dataset | None) -> tuple[float, float] | None:
    if item is None:
        return None
    seq = item.get("PixelValueTransformationSequence")
    if not seq:
        return None
    t = seq[0]
    if "RescaleSlope" in t and "RescaleIntercept" in t:
        try:
            return float(t.RescaleSlope), float(t.RescaleIntercept)
        except (TypeError, ValueError):
            return None
    return None


def _per_frame_rescale(ds: Dataset, frames: int) -> list[tuple[float, float]] | None:
    """Per-frame (slope, intercept) of enhanced multi-frame objects, or None when not given."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_t = _frame_transform(shared[0]) if shared else None
    out: list[tuple[float, float]] = []
    found = shared_t is not None
    for i in range(frames):
        t = None
        if per_frame and i < len(per_frame):
            t = _frame_transform(per_frame[i])
        if t is not None:
            found = True
        out.append(t or shared_t or (1.0, 0.0))
    return out if found else None


def _modality(arr: np.ndarray, ds: Dataset, source: str) -> np.ndarray:
    """arr: (F, R, C) stored values → (F, R, C) float32 physical values."""
    frames = arr.shape[0]
    per_frame = _per_frame_rescale(ds, frames)
    if per_frame is not None:
        slopes = np.array([s for s, _ in per_frame], dtype=np.float64)[:, None, None]
        inters = np.array([b for _, b in per_frame], dtype=np.float64)[:, None, None]
        return (arr.astype(np.float64) * slopes + inters).astype(np.float32)
    if ds.get("ModalityLUTSequence"):
        try:
            return np.asarray(apply_modality_lut(arr, ds)).astype(np.float32)
        except Exception as exc:
            raise PixelDecodeError(f"malformed Modality LUT Sequence: {exc}", path=source, code="modality-lut") from exc
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        try:
            slope, inter = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        except (TypeError, ValueError) as exc:
            raise PixelDecodeError(
                f"malformed RescaleSlope/RescaleIntercept: {exc}", path=source, code="modality-lut"
            ) from exc
        return (arr.astype(np.float64) * slope + inter).astype(np.float32)
    return arr.astype(np.float32)


def _to_rgb8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour samples of any bit depth → uint8 by dropping the low bits."""
    if arr.dtype == np.uint8:
        return arr
    bits = _int(ds, "BitsStored", 0) or arr.dtype.itemsize * 8
    shift = max(bits - 8, 0)
    return np.clip(arr.astype(np.uint64) >> shift, 0, 255).astype(np.uint8)


def decode_pixels(ds: Dataset, source: str) -> np.ndarray:
    """All frames of ``ds`` as physical values (greyscale) or RGB (colour).

    Returns ``(F, R, C)`` float32 with the modality LUT applied, or ``(F, R, C, 3)`` uint8 RGB
    for colour photometric interpretations (RGB, YBR_*, PALETTE COLOR). ``F`` is NumberOfFrames
    (1 for single-frame images).

    Raises :class:`PixelDecodeError` (missing, truncated or undecodable pixel data) or
    :class:`UnsupportedTransferSyntaxError` (no installed codec), both naming ``source``.
    """
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise PixelDecodeError("no Pixel Data in the dataset", path=source, code="no-pixel-data")
    if ds[keyword].value is None or len(ds[keyword].value) == 0:
        raise PixelDecodeError(f"{keyword} is empty", path=source, code="no-pixel-data")
    arr = _raw_decode(ds, source, keyword)
    frames = frame_count(ds)
    spp = _int(ds, "SamplesPerPixel", 1) or 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    colour = spp == 3
    want_ndim = 4 if colour else 3
    if arr.ndim == want_ndim - 1:
        arr = arr[np.newaxis]
    if arr.ndim != want_ndim:
        raise PixelDecodeError(
            f"decoded array has shape {arr.shape}, expected {want_ndim} dims", path=source, code="pixel-shape"
        )
    if arr.shape[0] != frames:
        raise PixelDecodeError(
            f"decoded {arr.shape[0]} frames, NumberOfFrames says {frames}", path=source, code="pixel-shape"
        )
    if colour:
        return np.ascontiguousarray(_to_rgb8(arr, ds))
    if photometric == "PALETTE COLOR":
        try:
            rgb = np.asarray(apply_color_lut(arr, _palette_native_endian(ds)))
        except Exception as exc:
            raise PixelDecodeError(f"malformed palette colour LUT: {exc}", path=source, code="palette") from exc
        return np.ascontiguousarray(_palette_to_rgb8(rgb, ds))
    if keyword != "PixelData":
        return arr.astype(np.float32)
    return np.ascontiguousarray(_modality(arr, ds, source))


def _palette_native_endian(ds: Dataset) -> Dataset:
    """Big-endian datasets: a shallow copy whose non-segmented 16-bit palette data is little endian.

    pydicom 3's ``apply_color_lut`` reads non-segmented palette bytes as little endian
    whatever the transfer syntax; swapping here makes big-endian files decode like their twins.
    """
    if transfer_syntax_of(ds) != ExplicitVRBigEndian or "RedPaletteColorLookupTableData" not in ds:
        return ds
    out = _shallow_copy(ds)
    for colour in ("Red", "Green", "Blue", "Alpha"):
        keyword = f"{colour}PaletteColorLookupTableData"
        raw = ds.get(keyword)
        if isinstance(raw, (bytes, bytearray)) and len(raw) % 2 == 0:
            desc = ds.get("RedPaletteColorLookupTableDescriptor")
            entries = (int(desc[0]) or 65536) if desc is not None else 0
            if len(raw) == 2 * entries:  # 16-bit entries (8-bit tables need no swap)
                elem = ds[keyword]
                swapped = np.frombuffer(bytes(raw), dtype=">u2").astype("<u2").tobytes()
                out[keyword] = DataElement(elem.tag, elem.VR, swapped)
    return out


def _palette_to_rgb8(rgb: np.ndarray, ds: Dataset) -> np.ndarray:
    """Palette output (entries of 8 or 16 bits) → uint8 RGB."""
    if rgb.dtype == np.uint8:
        return rgb
    desc = ds.get("RedPaletteColorLookupTableDescriptor")
    bits = int(desc[2]) if desc is not None and len(desc) > 2 else 16
    if bits <= 8:
        return rgb.astype(np.uint8)
    return (rgb.astype(np.uint32) >> (bits - 8)).astype(np.uint8)


def _voi_source(ds: Dataset) -> Dataset:
    """Where the VOI attributes are: the dataset, or the first frame's Frame VOI LUT item."""
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        return ds
    for group_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(group_kw)
        if groups:
            seq = groups[0].get("FrameVOILUTSequence")
            if seq:
                return seq[0]
    return ds


def _as_list(value: Any) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [float(v) for v in value]
    return [float(value)]


def display_info(ds: Dataset) -> DisplayInfo:
    """What the header says about display: windows, VOI function, VOI LUT, MONOCHROME1.

    Window pairs come from WindowCenter/WindowWidth (every value of a multi-valued pair;
    pairs with width <= 0 are dropped). The VOI LUT is ``(first_mapped, bits, table)`` with
    ``table`` a 1D int64 array, taken from the first VOI LUT Sequence item. For enhanced
    multi-frame objects the first Frame VOI LUT item is used when the top level has none.
    Malformed values are ignored rather than raised (display only).
    """
    src = _voi_source(ds)
    windows: list[tuple[float, float]] = []
    try:
        centers, widths = _as_list(src.get("WindowCenter")), _as_list(src.get("WindowWidth"))
        windows = [(c, w) for c, w in zip(centers, widths) if w > 0]
    except (TypeError, ValueError):
        windows = []
    function = str(src.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    voi_lut: tuple[int, int, np.ndarray] | None = None
    seq = src.get("VOILUTSequence")
    if seq:
        try:
            item = seq[0]
            n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
            n_entries = n_entries or 65536
            raw = item.LUTData
            if isinstance(raw, (bytes, bytearray)):
                dtype = "<u2" if bits > 8 or len(raw) >= 2 * n_entries else "u1"
                little = getattr(ds, "original_encoding", (None, True))[1] is not False
                dtype = dtype if little else dtype.replace("<", ">")
                table = np.frombuffer(bytes(raw), dtype=dtype)[:n_entries].astype(np.int64)
            else:
                table = np.asarray(_as_list(raw), dtype=np.int64)[:n_entries]
            if table.size:
                voi_lut = (first, bits, table)
        except Exception:  # noqa: BLE001 - display only: ignore a malformed VOI LUT
            voi_lut = None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    return DisplayInfo(
        windows=windows,
        voi_function=function if function in {"LINEAR", "LINEAR_EXACT", "SIGMOID"} else "LINEAR",
        voi_lut=voi_lut,
        source_photometric=photometric,
        invert=photometric == "MONOCHROME1",
    )

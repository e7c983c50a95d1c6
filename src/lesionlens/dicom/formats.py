"""Non-DICOM images in and out, as the same :class:`~lesionlens.dicom.types.Volume`.

Formats: PNG / JPEG / TIFF (8 and 16 bit, grey or RGB; multi-page TIFF → several slices),
NIfTI-1/2 (``.nii``, ``.nii.gz``) and MetaImage (``.mhd`` + ``.raw``, ``.mha``; the LUNA16 format).

Geometry conventions
--------------------
Our arrays are ``(K, R, C)`` with ``lps = affine @ [k, r, c, 1]`` (DICOM LPS mm).

* **NIfTI** stores ``data[i, j, k]`` with ``ras = A @ [i, j, k, 1]`` (RAS mm). We map
  ``i = c``, ``j = r``, ``k = k`` (the array is transposed ``(2, 1, 0)``) and flip x, y:
  ``affine = diag(-1, -1, 1, 1) @ A @ P`` where ``P`` reorders ``(k, r, c) → (c, r, k)``.
* **MetaImage** stores x fastest (``x = c``, ``y = r``, ``z = k``) in ITK physical space, which
  is LPS. ``TransformMatrix`` holds the direction of axis x, then y, then z (3 numbers each);
  ``lps = Offset + Σ index_axis · ElementSpacing_axis · direction_axis``.

PNG/JPEG/TIFF have no patient geometry: the affine is the identity (1 mm pixels) and
``Volume.has_patient_geometry`` is False.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.dicom.types import Volume
from lesionlens.errors import DataFormatError, OutputError, UnsupportedInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "MET_TYPES",
    "read_image",
    "read_mhd",
    "read_nifti",
    "read_raster",
    "write_mhd",
    "write_nifti",
    "write_png",
]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGE_SUFFIXES = (*RASTER_SUFFIXES, ".nii", ".nii.gz", ".mhd", ".mha")

#: MetaImage element types → numpy dtypes (byte order applied separately).
MET_TYPES: dict[str, str] = {
    "MET_UCHAR": "u1",
    "MET_CHAR": "i1",
    "MET_USHORT": "u2",
    "MET_SHORT": "i2",
    "MET_UINT": "u4",
    "MET_INT": "i4",
    "MET_ULONG_LONG": "u8",
    "MET_LONG_LONG": "i8",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}

# (k, r, c) index → NIfTI (i, j, k) = (c, r, k): permutation matrix P with [i,j,k,1] = P @ [k,r,c,1]
_P = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | Path) -> Volume:
    """Read a PNG/JPEG/TIFF/NIfTI/MetaImage file into a Volume, dispatching on the suffix.

    Raises :class:`UnsupportedInputError` for other suffixes and :class:`DataFormatError`
    naming the file when its content is malformed or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise UnsupportedInputError("no such file", path=path, code="not-found")
    suffix = _suffix(path)
    if suffix in RASTER_SUFFIXES:
        return read_raster(path)
    if suffix in (".nii", ".nii.gz"):
        return read_nifti(path)
    if suffix in (".mhd", ".mha"):
        return read_mhd(path)
    raise UnsupportedInputError(f"unsupported image format {suffix!r}; expected one of {IMAGE_SUFFIXES}", path=path)


def _grey_or_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """One page (R, C) | (R, C, S) → (R, C) float32 grey or (R, C, 3) uint8 RGB."""
    if arr.ndim == 2:
        return arr.astype(np.float32)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):  # planar RGB(A) TIFF
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[2] in (1, 2):  # grey (+ alpha)
        return arr[..., 0].astype(np.float32)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        if rgb.dtype == np.uint16:
            rgb = (rgb >> 8).astype(np.uint8)
        elif rgb.dtype != np.uint8:
            raise UnsupportedInputError(f"colour samples of type {rgb.dtype} are not supported", path=path)
        return np.ascontiguousarray(rgb)
    raise DataFormatError(f"unexpected image array shape {arr.shape}", path=path)


def read_raster(path: str | Path) -> Volume:
    """PNG/JPEG/TIFF → Volume ``(K, R, C)`` float32 grey (values as stored, 8 or 16 bit) or
    ``(K, R, C, 3)`` uint8 RGB. K is 1, or the page count of a multi-page TIFF."""
    path = Path(path)
    try:
        if _suffix(path) in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                pages = [p.asarray() for p in tif.pages]
        else:
            from PIL import Image

            with Image.open(path) as opened:
                opened.load()
                im: Any = opened
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode == "1":
                    im = im.convert("L")
                pages = [np.asarray(im)]
    except (UnsupportedInputError, DataFormatError):
        raise
    except Exception as exc:
        raise DataFormatError(f"cannot read image: {exc}", path=path) from exc
    slices = [_grey_or_rgb(p, path) for p in pages]
    if not slices or any(s.shape != slices[0].shape for s in slices):
        raise DataFormatError("pages have different sizes or there are none", path=path)
    return Volume(pixels=np.stack(slices), affine=np.eye(4), sources=[str(path)] * len(slices),
                  frame_numbers=list(range(1, len(slices) + 1)), has_patient_geometry=False,
                  metadata={"format": _suffix(path).lstrip(".")})


# --------------------------------------------------------------------------------- NIfTI


def nifti_to_lps_affine(ras_affine: np.ndarray) -> np.ndarray:
    """NIfTI ``(i, j, k) → RAS`` affine → our ``(k, r, c) → LPS`` affine (both 4×4)."""
    return _FLIP @ np.asarray(ras_affine, dtype=np.float64) @ _P


def lps_to_nifti_affine(affine: np.ndarray) -> np.ndarray:
    """Our ``(k, r, c) → LPS`` affine → NIfTI ``(i, j, k) → RAS`` affine (inverse of the above)."""
    return _FLIP @ np.asarray(affine, dtype=np.float64) @ _P  # both matrices are involutions


def read_nifti(path: str | Path) -> Volume:
    """``.nii``/``.nii.gz`` → Volume ``(K, R, C)`` float32 (scl_slope/inter applied), LPS affine.

    A 2D image gives K = 1; 4D images with more than one volume raise UnsupportedInputError.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img: Any = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
        ras = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        raise DataFormatError(f"cannot read NIfTI: {exc}", path=path) from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise UnsupportedInputError(f"NIfTI with shape {data.shape} (time series or vectors) is not supported", path=path)
    pixels = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)
    codes = (int(img.header.get("sform_code", 0)), int(img.header.get("qform_code", 0)))
    return Volume(pixels=pixels, affine=nifti_to_lps_affine(ras), sources=[str(path)] * pixels.shape[0],
                  frame_numbers=[1] * pixels.shape[0], is_volumetric=pixels.shape[0] > 1,
                  has_patient_geometry=any(c > 0 for c in codes), metadata={"format": "nifti"})


def _atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="".join(path.suffixes) or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _integral_int16(pixels: np.ndarray) -> bool:
    return bool(pixels.size) and bool(np.all(np.mod(pixels, 1) == 0)) and pixels.min() >= -32768 and pixels.max() <= 32767


def write_nifti(path: str | Path, volume: Volume) -> Path:
    """Write a greyscale Volume as NIfTI-1 (``.nii`` or ``.nii.gz``) with sform/qform set.

    Integral values within int16 are stored as int16, others as float32. Raises OutputError
    for colour volumes or when writing fails.
    """
    import nibabel as nib

    path = Path(path)
    if volume.pixels.ndim != 3:
        raise OutputError(f"NIfTI output needs a greyscale (K, R, C) volume, got {volume.pixels.shape}", path=path)
    px = volume.pixels
    data = px.astype(np.int16) if _integral_int16(px) else px.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), lps_to_nifti_affine(volume.affine))
    code = 1 if volume.has_patient_geometry else 0
    img.set_sform(img.affine, code=code)
    img.set_qform(img.affine, code=code)
    img.header.set_xyzt_units("mm")
    try:
        return _atomic_write(path, lambda p: nib.save(img, str(p)))
    except Exception as exc:
        raise OutputError(f"cannot write NIfTI: {exc}", path=path) from exc


# --------------------------------------------------------------------------------- MetaImage


def _parse_header(text: str, path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if "=" not in line:
            raise DataFormatError(f"malformed MetaImage header line {line[:60]!r}", path=path)
        key, value = line.split("=", 1)
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    return fields


def _floats(fields: dict[str, str], key: str, n: int, path: Path, default: list[float] | None = None) -> list[float]:
    if key not in fields:
        if default is None:
            raise DataFormatError(f"MetaImage header lacks {key}", path=path)
        return default
    try:
        values = [float(v) for v in fields[key].split()]
    except ValueError as exc:
        raise DataFormatError(f"MetaImage {key} is not numeric: {fields[key]!r}", path=path) from exc
    if len(values) != n:
        raise DataFormatError(f"MetaImage {key} has {len(values)} values, expected {n}", path=path)
    return values


def _data_file_list(datafile: str, rest: bytes, path: Path) -> list[str]:
    """The data files of ``ElementDataFile = LIST [2D|3D]`` (one name per line after the header)
    or of a printf pattern ``ElementDataFile = name%03d.raw first last [step]``."""
    if datafile.upper().startswith("LIST"):
        try:
            names = [ln.strip() for ln in rest.decode("utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as exc:
            raise DataFormatError("MetaImage file list is not text", path=path) from exc
        if not names:
            raise DataFormatError("ElementDataFile = LIST names no files", path=path)
        return names
    parts = datafile.split()
    try:
        first, last = int(parts[1]), int(parts[2])
        step = int(parts[3]) if len(parts) > 3 else 1
        if step == 0 or len(parts) > 4:
            raise ValueError
        names = [parts[0] % i for i in range(first, last + (1 if step > 0 else -1), step)]
    except (IndexError, ValueError, TypeError) as exc:
        raise DataFormatError(f"bad ElementDataFile pattern {datafile!r} (expected 'name%03d.raw first last "
                              "[step]')", path=path) from exc
    if not names:
        raise DataFormatError(f"ElementDataFile pattern {datafile!r} names no files", path=path)
    return names


def _read_part(path: Path, name: str) -> bytes:
    part = path.parent / name
    if not part.is_file():
        raise DataFormatError(f"MetaImage data file {name!r} not found next to the header", path=path)
    return part.read_bytes()


def read_mhd(path: str | Path) -> Volume:
    """``.mhd`` (+ data file) or ``.mha`` → Volume ``(K, R, C)`` float32 with an LPS affine.

    ``ElementNumberOfChannels = 3`` with MET_UCHAR gives ``(K, R, C, 3)`` uint8 RGB.
    The data may be ``LOCAL``, one file, a ``LIST`` of files (one name per line after the
    header, e.g. one per slice) or a printf pattern (``slice%03d.raw 1 120 1``); the parts are
    read in order and joined. Raises DataFormatError (bad header, truncated or missing data) /
    UnsupportedInputError (unknown element type, compressed file lists), naming the file.
    """
    path = Path(path)
    blob = path.read_bytes()
    head_end = blob.find(b"ElementDataFile")
    if head_end < 0:
        raise DataFormatError("not a MetaImage header (no ElementDataFile)", path=path)
    line_end = blob.find(b"\n", head_end)
    line_end = len(blob) if line_end < 0 else line_end + 1
    try:
        fields = _parse_header(blob[:line_end].decode("ascii"), path)
    except UnicodeDecodeError as exc:
        raise DataFormatError("MetaImage header is not ASCII text", path=path) from exc
    try:
        ndims = int(fields.get("NDims", "0"))
    except ValueError as exc:
        raise DataFormatError(f"bad NDims {fields.get('NDims')!r}", path=path) from exc
    if ndims not in (2, 3):
        raise UnsupportedInputError(f"MetaImage with NDims={ndims} is not supported (2 or 3)", path=path)
    dims = [int(v) for v in _floats(fields, "DimSize", ndims, path)]
    if any(d <= 0 for d in dims):
        raise DataFormatError(f"DimSize must be positive, got {dims}", path=path)
    spacing = _floats(fields, "ElementSpacing", ndims, path, [1.0] * ndims)
    offset_key = next((k for k in ("Offset", "Position", "Origin") if k in fields), "Offset")
    offset = _floats(fields, offset_key, ndims, path, [0.0] * ndims)
    tm_key = next((k for k in ("TransformMatrix", "Rotation", "Orientation") if k in fields), "TransformMatrix")
    direction = _floats(fields, tm_key, ndims * ndims, path, list(np.eye(ndims).ravel()))
    etype = fields.get("ElementType", "")
    if etype not in MET_TYPES:
        raise UnsupportedInputError(f"unsupported ElementType {etype!r}", path=path)
    msb = (fields.get("BinaryDataByteOrderMSB") or fields.get("ElementByteOrderMSB") or "False").lower() == "true"
    dtype = np.dtype(MET_TYPES[etype]).newbyteorder(">" if msb else "<")
    channels = int(fields.get("ElementNumberOfChannels", "1"))
    datafile = fields["ElementDataFile"]
    if datafile == "LOCAL":
        raw = blob[line_end:]
    elif datafile.upper().startswith("LIST") or "%" in datafile:
        if fields.get("CompressedData", "False").lower() == "true":
            raise UnsupportedInputError("compressed MetaImage data split over several files is not supported",
                                        path=path)
        raw = b"".join(_read_part(path, name) for name in _data_file_list(datafile, blob[line_end:], path))
    else:
        data_path = path.parent / datafile
        if not data_path.is_file():
            raise DataFormatError(f"MetaImage data file {datafile!r} not found next to the header", path=path)
        raw = data_path.read_bytes()
    if fields.get("CompressedData", "False").lower() == "true":
        try:
            raw = zlib.decompress(raw)
        except zlib.error as exc:
            raise DataFormatError(f"compressed MetaImage data is corrupt: {exc}", path=path) from exc
    shape = list(reversed(dims)) + ([channels] if channels > 1 else [])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) < expected:
        raise DataFormatError(
            f"MetaImage data is truncated: {len(raw)} bytes, DimSize {dims} × {channels} × {etype} needs {expected}",
            path=path,
            code="truncated",
        )
    arr = np.frombuffer(raw[:expected], dtype=dtype).reshape(shape)
    if ndims == 2:
        arr = arr[np.newaxis]
        spacing, offset = [*spacing, 1.0], [*offset, 0.0]
        d2 = np.asarray(direction).reshape(2, 2)
        direction = [d2[0, 0], d2[0, 1], 0.0, d2[1, 0], d2[1, 1], 0.0, 0.0, 0.0, 1.0]
    dirs = np.asarray(direction, dtype=np.float64).reshape(3, 3)  # row a = direction of axis a (x, y, z)
    affine = np.eye(4)
    affine[:3, 0] = dirs[2] * spacing[2]  # k ↔ z
    affine[:3, 1] = dirs[1] * spacing[1]  # r ↔ y
    affine[:3, 2] = dirs[0] * spacing[0]  # c ↔ x
    affine[:3, 3] = offset
    if channels == 3 and arr.dtype.itemsize == 1:
        pixels = np.ascontiguousarray(arr.astype(np.uint8))
    elif channels == 1:
        pixels = arr.astype(np.float32)
    else:
        raise UnsupportedInputError(f"{channels} channels of {etype} are not supported", path=path)
    k = pixels.shape[0]
    return Volume(pixels=pixels, affine=affine, sources=[str(path)] * k, frame_numbers=[1] * k,
                  is_volumetric=ndims == 3 and k > 1, has_patient_geometry=ndims == 3,
                  metadata={"format": "metaimage"})


def write_mhd(path: str | Path, volume: Volume, element_type: str = "MET_SHORT") -> Path:
    """Write a greyscale Volume as MetaImage: ``x.mhd`` + ``x.raw``, or a single ``x.mha``.

    Values are rounded and clipped into ``element_type``'s range for integer types.
    Raises OutputError for colour volumes, unknown element types or write failures.
    """
    path = Path(path)
    if element_type not in MET_TYPES:
        raise OutputError(f"unknown element_type {element_type!r}; use one of {sorted(MET_TYPES)}", path=path)
    if volume.pixels.ndim != 3:
        raise OutputError(f"MetaImage output needs a greyscale (K, R, C) volume, got {volume.pixels.shape}", path=path)
    dtype = np.dtype(MET_TYPES[element_type]).newbyteorder("<")
    px = np.asarray(volume.pixels, dtype=np.float64)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        px = np.clip(np.rint(px), info.min, info.max)
    data = px.astype(dtype).tobytes()
    aff = np.asarray(volume.affine, dtype=np.float64)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)  # (k, r, c)
    safe = np.where(spacing > 0, spacing, 1.0)
    dirs = [aff[:3, 2] / safe[2], aff[:3, 1] / safe[1], aff[:3, 0] / safe[0]]  # x, y, z
    k, r, c = volume.pixels.shape
    local = path.suffix.lower() == ".mha"
    raw_name = path.with_suffix(".raw").name
    fmt = lambda values: " ".join(f"{float(v):.10g}" for v in values)
    header = "\n".join([
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        f"TransformMatrix = {fmt(np.concatenate(dirs))}",
        f"Offset = {fmt(aff[:3, 3])}",
        "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI",
        f"ElementSpacing = {fmt([spacing[2], spacing[1], spacing[0]])}",
        f"DimSize = {c} {r} {k}",
        f"ElementType = {element_type}",
        f"ElementDataFile = {'LOCAL' if local else raw_name}",
    ]) + "\n"
    try:
        if local:
            _atomic_write(path, lambda p: p.write_bytes(header.encode("ascii") + data))
        else:
            _atomic_write(path.with_suffix(".raw"), lambda p: p.write_bytes(data))
            _atomic_write(path, lambda p: p.write_text(header, encoding="ascii"))
    except OSError as exc:
        raise OutputError(f"cannot write MetaImage: {exc}", path=path) from exc
    return path


# --------------------------------------------------------------------------------- PNG


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write one image as PNG. image: ``(R, C)`` uint8 or uint16 grey, or ``(R, C, 3)`` uint8 RGB."""
    from PIL import Image

    path = Path(path)
    arr = np.asarray(image)
    if arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16):
        pil = Image.fromarray(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="))))  # L or I;16
    elif arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        pil = Image.fromarray(np.ascontiguousarray(arr))
    else:
        raise OutputError(f"PNG needs (R, C) uint8/uint16 or (R, C, 3) uint8, got {arr.shape} {arr.dtype}", path=path)
    try:
        return _atomic_write(path, lambda p: pil.save(p, format="PNG"))
    except OSError as exc:
        raise OutputError(f"cannot write PNG: {exc}", path=path) from exc

"""The one safe DICOM reader: bounded reads, bounded inflation, typed errors naming the source.

A *source* is a string naming one file: a filesystem path, or ``archive.zip!member/name`` for a
member of a zip archive. Every function here raises only :class:`~lesionlens.errors.LesionLensError`
subclasses, each with ``path`` set to the source.

What is bounded (see :class:`ReadLimits`):

* file size (and zip member size) — larger files are refused before they are read;
* declared element lengths — a value that runs past the end of the file is a
  :class:`DicomReadError` (``code="truncated"``), never a silently short value;
* Deflated Explicit VR Little Endian — inflated in chunks with ``zlib.decompressobj`` and
  ``max_length``; more than ``max_inflated_bytes`` (or ``max_inflate_ratio`` × the compressed
  size) is a :class:`DeflateBombError`;
* zip members — size cap and compression-ratio check (:class:`ZipBombError`).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset as _pydicom_read_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from lesionlens.errors import DicomReadError, LesionLensError, NotDicomError, UnsupportedInputError

ZIP_SEPARATOR = "!"
_PIXEL_TAGS = {0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData", 0x7FE00010: "PixelData"}
_UNDEFINED = 0xFFFFFFFF
_MAGIC = {  # a few common non-DICOM signatures, for friendlier "not DICOM" reasons
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"PK\x03\x04": "a zip archive",
    b"%PDF": "a PDF document",
    b"GIF8": "a GIF image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"\x1f\x8b": "a gzip file",
}


class DeflateBombError(DicomReadError):
    """A deflated dataset inflates past the configured limit."""

    code = "deflate-bomb"


class ZipBombError(UnsupportedInputError):
    """A zip member is too large or too highly compressed to be read safely."""

    code = "zip-bomb"


class TruncatedError(DicomReadError):
    """A declared element length runs past the end of the file (or the file stops mid-element)."""

    code = "truncated"


@dataclass(frozen=True)
class ReadLimits:
    """Bounds applied to every read. All sizes in bytes.

    max_file_bytes: largest file (or zip member, uncompressed) read at all.
    max_inflated_bytes: largest inflated Deflated-syntax dataset.
    max_inflate_ratio: inflated / compressed size above which a deflated dataset is refused.
    max_zip_ratio: uncompressed / compressed size above which a zip member is refused
        (only checked for members larger than ``zip_ratio_min_bytes``).
    max_zip_members: most members of one archive looked at.
    """

    max_file_bytes: int = 2 * 1024**3
    max_inflated_bytes: int = 1024**3
    max_inflate_ratio: float = 200.0
    max_zip_ratio: float = 200.0
    zip_ratio_min_bytes: int = 1024**2
    max_zip_members: int = 100_000


DEFAULT_LIMITS = ReadLimits()


@dataclass(frozen=True)
class PixelElement:
    """Where the pixel data element of a file is, found while reading the header.

    offset: byte offset of the value inside the (inflated) buffer; length: declared value
    length (``None`` for undefined length, i.e. encapsulated/compressed pixel data).
    """

    keyword: str
    offset: int
    length: int | None


@dataclass
class HeaderRead:
    """The result of :func:`read_header`: the dataset without pixels, plus where pixels are.

    ``buffer`` is the whole (inflated) file content when it was read into memory (zip members,
    deflated files, or ``keep_bytes=True``), so pixels can be taken from it without re-reading.
    ``offsets_in_file``: ``pixel.offset`` is a byte offset in the file itself (a plain,
    non-deflated file read by :func:`read_header`), so the pixel bytes can be read from it later.
    """

    dataset: Dataset
    pixel: PixelElement | None
    buffer: bytes | None = None
    offsets_in_file: bool = False


# --------------------------------------------------------------------------------------------
# sources


def split_source(source: str) -> tuple[Path, str | None]:
    """``"a/b.zip!c/d.dcm"`` → ``(Path("a/b.zip"), "c/d.dcm")``; plain paths → ``(path, None)``."""
    low = source.lower()
    i = low.rfind(".zip" + ZIP_SEPARATOR)
    if i >= 0 and not os.path.exists(source):
        return Path(source[: i + 4]), source[i + 5 :]
    return Path(source), None


def is_zip(path: Path) -> bool:
    if path.suffix.lower() != ".zip" or not path.is_file():
        return False
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _check_member(info: zipfile.ZipInfo, source: str, limits: ReadLimits) -> None:
    if info.file_size > limits.max_file_bytes:
        raise ZipBombError(
            f"zip member is {info.file_size} bytes, over the {limits.max_file_bytes}-byte limit",
            path=source,
        )
    if info.file_size > limits.zip_ratio_min_bytes:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_zip_ratio:
            raise ZipBombError(
                f"zip member compression ratio {ratio:.0f}:1 exceeds {limits.max_zip_ratio:.0f}:1 "
                "(possible zip bomb)",
                path=source,
            )


def iter_zip_members(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[str]:
    """Sources (``archive.zip!member``) of the file members of a zip archive."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsupportedInputError(f"cannot open zip archive: {exc}", path=path, code="bad-zip") from exc
    if len(infos) > limits.max_zip_members:
        raise ZipBombError(f"archive has {len(infos)} members, over {limits.max_zip_members}", path=path)
    for info in infos:
        yield f"{path}{ZIP_SEPARATOR}{info.filename}"


def read_zip_member(archive: Path, member: str, limits: ReadLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of one zip member, size- and ratio-checked (also against a lying header)."""
    source = f"{archive}{ZIP_SEPARATOR}{member}"
    try:
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(member)
            _check_member(info, source, limits)
            with zf.open(info) as fh:
                data = fh.read(min(info.file_size, limits.max_file_bytes) + 1)
    except LesionLensError:
        raise
    except KeyError as exc:
        raise DicomReadError("no such member in the archive", path=source, code="not-found") from exc
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, zlib.error, EOFError) as exc:
        raise DicomReadError(f"cannot read zip member: {exc}", path=source, code="bad-zip") from exc
    if len(data) > info.file_size or len(data) > limits.max_file_bytes:
        raise ZipBombError("zip member inflates past its declared size", path=source)
    return data


def read_source_bytes(source: str, limits: ReadLimits = DEFAULT_LIMITS) -> bytes:
    """All bytes of a source (file or zip member), after the size check."""
    archive, member = split_source(source)
    if member is not None:
        return read_zip_member(archive, member, limits)
    size = _file_size(source, limits)
    try:
        with open(source, "rb") as fh:
            return fh.read(size + 1)
    except OSError as exc:
        raise DicomReadError(f"cannot read file: {exc.strerror or exc}", path=source, code="io") from exc


def _file_size(source: str, limits: ReadLimits) -> int:
    try:
        st = os.stat(source)
    except FileNotFoundError as exc:
        raise DicomReadError("file does not exist", path=source, code="not-found") from exc
    except OSError as exc:
        raise DicomReadError(f"cannot stat file: {exc.strerror or exc}", path=source, code="io") from exc
    if st.st_size > limits.max_file_bytes:
        raise UnsupportedInputError(
            f"file is {st.st_size} bytes, over the {limits.max_file_bytes}-byte limit", path=source, code="too-large"
        )
    return st.st_size


# --------------------------------------------------------------------------------------------
# bounded parsing


class _Bounded:
    """A read/seek/tell wrapper whose reads past the end raise :class:`TruncatedError`.

    pydicom silently returns short values for lengths past the end of a file; this wrapper
    makes that an error. A read of a 4- or 8-byte element header exactly at the end is the
    normal end of the dataset and returns ``b""``.
    """

    def __init__(self, fh: io.BufferedIOBase | io.BytesIO, size: int, source: str):
        self._fh = fh
        self._size = size
        self.name = source

    @property
    def size(self) -> int:
        return self._size

    def read(self, n: int | None = -1, /) -> bytes:
        if n is None or n < 0:
            return self._fh.read()
        pos = self._fh.tell()
        if pos + n > self._size:
            if pos == self._size and n in (4, 8):
                return b""
            raise TruncatedError(
                f"element at byte {pos} declares {n} bytes but only {max(self._size - pos, 0)} remain",
                path=self.name,
            )
        return self._fh.read(n)

    def peek_at(self, pos: int, n: int) -> bytes:
        here = self._fh.tell()
        self._fh.seek(pos)
        data = self._fh.read(n)
        self._fh.seek(here)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _not_dicom_reason(head: bytes) -> str:
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return f"not DICOM: looks like {what}"
    if not head:
        return "not DICOM: empty file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return "not DICOM: looks like a text file"
    return "not DICOM: no 'DICM' prefix and no recognisable DICOM header"


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A preamble-less dataset starts with a group 0x0002/0x0008 tag (little endian)."""
    if len(head) < 8:
        return False
    group, elem = struct.unpack("<HH", head[:4])
    if group in (0x0200, 0x0800):  # big endian
        group, elem = struct.unpack(">HH", head[:4])
    if group not in (0x0002, 0x0008):
        return False
    vr = head[4:6]
    return vr.isalpha() and vr.isupper() or elem < 0x0100


def _inflate(data: bytes, source: str, limits: ReadLimits) -> bytes:
    cap = int(min(limits.max_inflated_bytes, max(len(data), 1) * limits.max_inflate_ratio))
    dec = zlib.decompressobj(-zlib.MAX_WBITS)
    out: list[bytes] = []
    total = 0
    chunk_in = 1 << 16
    pos = 0
    try:
        while True:
            if dec.unconsumed_tail:
                piece = dec.decompress(dec.unconsumed_tail, 1 << 20)
            elif pos < len(data):
                piece = dec.decompress(data[pos : pos + chunk_in], 1 << 20)
                pos += chunk_in
            else:
                piece = dec.flush()
                out.append(piece)
                total += len(piece)
                break
            out.append(piece)
            total += len(piece)
            if total > cap:
                raise DeflateBombError(
                    f"deflated dataset inflates past {cap} bytes (from {len(data)} compressed); refused",
                    path=source,
                )
            if dec.eof:
                break
    except zlib.error as exc:
        raise DicomReadError(f"corrupt deflated dataset: {exc}", path=source, code="corrupt") from exc
    if total > cap:
        raise DeflateBombError(f"deflated dataset inflates past {cap} bytes; refused", path=source)
    return b"".join(out)


def _pixel_element_at(buf: _Bounded, little: bool, implicit: bool) -> PixelElement | None:
    """After a stop-before-pixels parse: the pixel element at the current position, length-checked."""
    pos = buf.tell()
    head = buf.peek_at(pos, 12)
    if len(head) < 8:
        return None
    end = "<" if little else ">"
    group, elem = struct.unpack(end + "HH", head[:4])
    tag = group << 16 | elem
    if tag not in _PIXEL_TAGS:
        return None
    if implicit:
        (length,) = struct.unpack(end + "L", head[4:8])
        offset = pos + 8
    else:
        if len(head) < 12:
            raise TruncatedError("pixel data element header is cut off", path=buf.name)
        (length,) = struct.unpack(end + "L", head[8:12])
        offset = pos + 12
    if length == _UNDEFINED:
        return PixelElement(_PIXEL_TAGS[tag], offset, None)
    if offset + length > buf.size:
        raise TruncatedError(
            f"{_PIXEL_TAGS[tag]} declares {length} bytes but only {buf.size - offset} remain", path=buf.name
        )
    return PixelElement(_PIXEL_TAGS[tag], offset, length)


def _parse(
    fh: io.BufferedIOBase | io.BytesIO,
    size: int,
    source: str,
    *,
    stop_before_pixels: bool,
    limits: ReadLimits,
    data: bytes | None,
    specific_tags: list[int] | None = None,
) -> HeaderRead:
    head = fh.read(132)
    fh.seek(0)
    has_part10 = len(head) >= 132 and head[128:132] == b"DICM"
    if not has_part10 and not _looks_like_raw_dataset(head[:8]):
        raise NotDicomError(_not_dicom_reason(head[:64]), path=source)
    meta = FileMetaDataset()
    ts: UID | None = None
    try:
        buf = _Bounded(fh, size, source)
        if has_part10:
            buf.seek(132)
            meta = pydicom.filereader._read_file_meta_info(buf)  # type: ignore[arg-type]  # read/seek/tell suffice
            if "TransferSyntaxUID" in meta:
                ts = UID(str(meta.TransferSyntaxUID))
        if ts is None:
            implicit, little = _guess_encoding(buf)
        elif ts == DeflatedExplicitVRLittleEndian:
            start = buf.tell()
            rest = data[start:] if data is not None else fh.read()
            data = _inflate(rest, source, limits)
            buf = _Bounded(io.BytesIO(data), len(data), source)
            implicit, little = False, True
        elif ts.is_transfer_syntax:
            implicit, little = ts.is_implicit_VR, ts.is_little_endian
        else:
            implicit, little = False, True
        ds = _pydicom_read_dataset(
            buf, implicit, little, stop_when=pydicom.filereader._at_pixel_data,  # type: ignore[arg-type]
            specific_tags=specific_tags,
        )
        pixel = _pixel_element_at(buf, little, implicit)  # length-checked, names the element
        if not stop_before_pixels and buf.tell() < buf.size:  # the rest: pixel data and anything after it
            ds.update(_pydicom_read_dataset(buf, implicit, little))  # type: ignore[arg-type]
    except LesionLensError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise DicomReadError(f"corrupt DICOM: {type(exc).__name__}: {exc}", path=source, code="corrupt") from exc
    if len(ds) == 0:
        raise NotDicomError("not DICOM: no data elements could be read", path=source)
    fds = FileDataset(
        source, ds, preamble=head[:128] if has_part10 else None, file_meta=meta,
        is_implicit_VR=implicit, is_little_endian=little,
    )
    if ts is None or ts == DeflatedExplicitVRLittleEndian:
        # inflated (or guessed) content: describe the dataset as the encoding it now has
        fds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return HeaderRead(fds, pixel, data)


def parse_bytes(
    data: bytes, source: str, *, stop_before_pixels: bool = False, limits: ReadLimits = DEFAULT_LIMITS
) -> HeaderRead:
    """Parse DICOM bytes (Part 10 file, or a preamble-less dataset) safely.

    Returns the dataset and, with ``stop_before_pixels``, the pixel element's position in
    ``HeaderRead.buffer`` (the inflated bytes for deflated files). Raises NotDicomError /
    DicomReadError (TruncatedError, DeflateBombError) naming ``source``.
    """
    return _parse(io.BytesIO(data), len(data), source, stop_before_pixels=stop_before_pixels, limits=limits, data=data)


def _guess_encoding(buf: _Bounded) -> tuple[bool, bool]:
    head = buf.peek_at(buf.tell(), 6)
    implicit = not (len(head) == 6 and head[4:6].isalpha() and head[4:6].isupper())
    little = not (len(head) >= 2 and head[0] == 0 and head[1] in (0x02, 0x08))
    return implicit, little


def read_header(
    source: str | Path, *, limits: ReadLimits = DEFAULT_LIMITS, specific_tags: list[int] | None = None
) -> HeaderRead:
    """Read everything but the pixel values of one source, locating (and length-checking) pixels.

    Plain files are streamed (only the header bytes are read); zip members are read whole.
    ``HeaderRead.buffer`` is None for plain, non-deflated files. ``specific_tags`` (ints) limits
    which elements are parsed (the others are skipped, their lengths still checked).
    """
    source = str(source)
    archive, member = split_source(source)
    if member is not None:
        data = read_zip_member(archive, member, limits)
        return _parse(
            io.BytesIO(data), len(data), source, stop_before_pixels=True, limits=limits, data=data,
            specific_tags=specific_tags,
        )
    size = _file_size(source, limits)
    try:
        with open(source, "rb") as fh:
            hr = _parse(
                fh, size, source, stop_before_pixels=True, limits=limits, data=None, specific_tags=specific_tags
            )
        hr.offsets_in_file = hr.buffer is None  # not inflated: offsets are the file's own
        return hr
    except OSError as exc:
        raise DicomReadError(f"cannot read file: {exc.strerror or exc}", path=source, code="io") from exc


def read_dataset(
    source: str | Path, *, stop_before_pixels: bool = False, limits: ReadLimits = DEFAULT_LIMITS
) -> Dataset:
    """The one safe DICOM reader: a Dataset from a file path or ``archive.zip!member`` source.

    Raises (each naming the source): NotDicomError, DicomReadError (and its TruncatedError,
    DeflateBombError), UnsupportedInputError (file too large), ZipBombError.
    """
    source = str(source)
    if stop_before_pixels:
        return read_header(source, limits=limits).dataset
    data = read_source_bytes(source, limits)
    return parse_bytes(data, source, stop_before_pixels=False, limits=limits).dataset


__all__ = [
    "DEFAULT_LIMITS",
    "DeflateBombError",
    "HeaderRead",
    "PixelElement",
    "ReadLimits",
    "TruncatedError",
    "ZipBombError",
    "is_zip",
    "iter_zip_members",
    "parse_bytes",
    "read_dataset",
    "read_header",
    "read_source_bytes",
    "split_source",
]

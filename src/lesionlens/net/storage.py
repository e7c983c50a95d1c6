"""A durable instance store: received DICOM objects as ``root/<study>/<series>/<sop>.dcm``.

Every path component is a *validated* UID (digits and single dots, at most 64 characters), never
a raw header value, so nothing a sender writes can steer a file outside ``root``. A put is
durable before it returns: the bytes go to a temporary file next to the final name, are
``fsync``'ed, ``os.replace``'d over the final name, and the directory (and any directory created
for it) is ``fsync``'ed. Re-receiving the same SOP instance replaces the earlier copy
(idempotent), so a sender that retries after a lost response does no harm.

Received data is written with its file meta information and in the transfer syntax it arrived
in (the pixel data is never decoded or re-encoded).

Encryption at rest: given a ``keyring`` (:class:`lesionlens.privacy.keys.KeyRing`), every file is
written AES-GCM encrypted with the ring's active key (``LLENC1``, no name binding, so a file
decrypts wherever it is moved to); plaintext is only ever in memory here. Whoever reads the store
decrypts (:mod:`lesionlens.service.atrest`); nothing in this module reads stored files back.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from lesionlens.dicom.io import DEFAULT_LIMITS, ReadLimits, parse_bytes
from lesionlens.dicom.write import ensure_file_meta, save_dataset
from lesionlens.errors import LesionLensError
from lesionlens.net.errors import InvalidInstanceError, InvalidUIDError, StorageError

log = logging.getLogger(__name__)

#: A UID as used in a path: 1–64 characters, digits separated by single dots.
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
UID_MAX_LEN = 64
_TMP_PREFIX = ".incoming-"
_PREAMBLE = b"\x00" * 128 + b"DICM"


def validate_uid(value: object, *, field: str = "UID") -> str:
    """``value`` as a clean UID string, or :class:`InvalidUIDError` naming ``field``.

    Trailing NUL/space padding is removed; what remains must be digits separated by single dots
    (no empty components, so never ``"."``, ``".."`` or a path separator) and ≤ 64 characters.
    """
    if value is None:
        raise InvalidUIDError(f"{field} is missing")
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = str(value).rstrip("\x00 ")
    if not text:
        raise InvalidUIDError(f"{field} is empty")
    if len(text) > UID_MAX_LEN:
        raise InvalidUIDError(f"{field} is {len(text)} characters long, over the {UID_MAX_LEN}-character limit")
    if not _UID_RE.fullmatch(text):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InvalidUIDError(f"{field} {shown!r} is not a valid UID (digits separated by single dots)")
    return text


@dataclass(frozen=True)
class StoredInstance:
    """One instance written durably by :meth:`InstanceStore.put`.

    path: the final file (``root/<study_uid>/<series_uid>/<sop_instance_uid>.dcm``).
    size: bytes written. replaced: an earlier copy of the same instance was overwritten.
    source: who delivered it (e.g. ``"c-store:CT_SCANNER"``, ``"c-get:ORTHANC"``, ``"wado-rs"``).
    """

    path: Path
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    replaced: bool
    source: str = ""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_meta(meta: FileMetaDataset) -> bytes:
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)  # fills group length and version
    return buf.getvalue()


class InstanceStore:
    """Durable, idempotent store of DICOM instances under ``root``.

    Thread-safe: concurrent puts of different instances never interfere, and concurrent puts of
    the same instance leave one complete copy (each writes its own temporary file and the rename
    is atomic). ``fsync=False`` skips the fsyncs (only for throw-away stores, e.g. benchmarks of
    the rest of the path). ``limits`` bounds parsing of received bytes (deflate bombs etc.).
    ``keyring`` (a :class:`~lesionlens.privacy.keys.KeyRing`, optional): encrypt every file
    written (see the module notes); ``StoredInstance.size`` is then the encrypted size.
    """

    def __init__(self, root: str | Path, *, fsync: bool = True, limits: ReadLimits = DEFAULT_LIMITS,
                 keyring: Any = None):
        self._root = Path(root).absolute()
        self._fsync = fsync
        self._limits = limits
        self._keyring = keyring
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the store folder: {exc.strerror or exc}", path=self._root) from exc

    @property
    def root(self) -> Path:
        return self._root

    @property
    def encrypted(self) -> bool:
        """Whether files are written encrypted (a key ring was given)."""
        return self._keyring is not None

    def __repr__(self) -> str:
        return f"InstanceStore({str(self._root)!r})"

    # ----------------------------------------------------------------------------- paths

    def study_dir(self, study_uid: str) -> Path:
        """The folder of one study (validated UID; the folder may not exist yet)."""
        return self._root / validate_uid(study_uid, field="StudyInstanceUID")

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance is (or would be) stored; every component a validated UID."""
        return (self.study_dir(study_uid) / validate_uid(series_uid, field="SeriesInstanceUID")
                / f"{validate_uid(sop_instance_uid, field='SOPInstanceUID')}.dcm")

    def iter_instances(self, study_uid: str | None = None) -> Iterator[Path]:
        """Stored files (of one study, or all), sorted; temporary files are skipped."""
        base = self.study_dir(study_uid) if study_uid is not None else self._root
        pattern = "*/*.dcm" if study_uid is not None else "*/*/*.dcm"
        yield from sorted(p for p in base.glob(pattern) if not p.name.startswith("."))

    def remove_incomplete(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files left by interrupted puts (a crash mid-write); returns how many."""
        cutoff = time.time() - older_than_s
        n = 0
        for p in self._root.glob(f"*/*/{_TMP_PREFIX}*"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                continue
        return n

    # ----------------------------------------------------------------------------- writing

    def put(self, data: bytes | bytearray | memoryview | Dataset, meta: FileMetaDataset | None = None,
            *, source: str = "") -> StoredInstance:
        """Store one instance durably and return where it went.

        data: either a Part 10 file (preamble, ``DICM``, file meta, dataset) as bytes; or the
            encoded dataset alone as received over the network, with ``meta`` giving its file
            meta information (at least MediaStorageSOPClassUID, MediaStorageSOPInstanceUID and
            TransferSyntaxUID — e.g. pynetdicom's ``event.file_meta``); or a pydicom Dataset.
        meta: file meta for raw dataset bytes (for a Dataset: used when it has no file_meta).

        Raises :class:`InvalidInstanceError` / :class:`InvalidUIDError` (unparseable data, a
        missing or malformed UID, file meta disagreeing with the dataset) and
        :class:`StorageError` (the write failed). Nothing is left behind on failure.
        """
        if isinstance(data, Dataset):
            return self._put_dataset(data, meta, source)
        blob = bytes(data)
        if meta is not None:
            for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
                if kw not in meta:
                    raise InvalidInstanceError(f"file meta information lacks {kw}", code="bad-meta")
            try:
                blob = _PREAMBLE + _encode_meta(meta) + blob
            except Exception as exc:  # pydicom raises several types for bad meta
                raise InvalidInstanceError(f"cannot encode file meta information: {exc}", code="bad-meta") from exc
        label = f"{source or 'received'}"
        try:
            hr = parse_bytes(blob, label, stop_before_pixels=True, limits=self._limits)
        except LesionLensError as exc:
            raise InvalidInstanceError(f"cannot parse the received dataset: {exc.reason}", code=exc.code) from exc
        ds = hr.dataset
        fmeta = ds.file_meta
        uids = self._uids(ds, fmeta)
        ts = str(fmeta.get("TransferSyntaxUID", ""))
        if meta is not None:
            ts = str(meta.TransferSyntaxUID)  # as received (parse_bytes reports inflated syntaxes)
        return self._write_bytes(blob, uids, ts, source)

    def _put_dataset(self, ds: Dataset, meta: FileMetaDataset | None, source: str) -> StoredInstance:
        if meta is not None and not getattr(ds, "file_meta", None):
            ds.file_meta = meta
        fmeta = getattr(ds, "file_meta", None) or FileMetaDataset()
        uids = self._uids(ds, fmeta)
        if self._keyring is not None:  # encode in memory: no plaintext file, not even a temporary one
            ensure_file_meta(ds)
            buf = DicomBytesIO()
            try:
                pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            except Exception as exc:  # pydicom raises many types for unencodable data
                raise InvalidInstanceError(f"cannot encode the dataset: {exc}", code="bad-dataset") from exc
            return self._write_bytes(buf.getvalue(), uids, str(ds.file_meta.TransferSyntaxUID), source)
        final = self.path_for(uids[0], uids[1], uids[2])
        created = self._make_dirs(final.parent)
        replaced = final.exists()
        try:
            save_dataset(ds, final)  # temp file + fsync + os.replace
        except LesionLensError as exc:
            raise StorageError(f"cannot write instance: {exc.reason}", path=final) from exc
        self._sync_dirs(final.parent, created)
        return StoredInstance(final, uids[0], uids[1], uids[2], uids[3],
                              str(ds.file_meta.TransferSyntaxUID), final.stat().st_size, replaced, source)

    @staticmethod
    def _uids(ds: Dataset, fmeta: Dataset) -> tuple[str, str, str, str]:
        sop = validate_uid(ds.get("SOPInstanceUID"), field="SOPInstanceUID")
        sop_class = validate_uid(ds.get("SOPClassUID"), field="SOPClassUID")
        study = validate_uid(ds.get("StudyInstanceUID"), field="StudyInstanceUID")
        series = validate_uid(ds.get("SeriesInstanceUID"), field="SeriesInstanceUID")
        m_sop = fmeta.get("MediaStorageSOPInstanceUID")
        if m_sop is not None and str(m_sop).rstrip("\x00 ") != sop:
            raise InvalidInstanceError(
                f"SOPInstanceUID {sop!r} differs from the file meta / request's {str(m_sop)[:64]!r}",
                code="uid-mismatch")
        m_class = fmeta.get("MediaStorageSOPClassUID")
        if m_class is not None and str(m_class).rstrip("\x00 ") != sop_class:
            raise InvalidInstanceError(
                f"SOPClassUID {sop_class!r} differs from the file meta / request's {str(m_class)[:64]!r}",
                code="sop-class-mismatch")
        if "TransferSyntaxUID" in fmeta and not UID(str(fmeta.TransferSyntaxUID)).is_transfer_syntax:
            # unknown syntaxes are stored as received; just note it
            log.debug("instance %s has an unknown transfer syntax %s", sop, fmeta.TransferSyntaxUID)
        return study, series, sop, sop_class

    def _make_dirs(self, series_dir: Path) -> list[Path]:
        """Create the study/series folders; returns those created (their parents need an fsync)."""
        created: list[Path] = []
        for d in (series_dir.parent, series_dir):
            if not d.is_dir():
                try:
                    d.mkdir(exist_ok=True)
                except OSError as exc:
                    raise StorageError(f"cannot create folder: {exc.strerror or exc}", path=d) from exc
                created.append(d)
        return created

    def _sync_dirs(self, series_dir: Path, created: list[Path]) -> None:
        if not self._fsync:
            return
        try:
            _fsync_dir(series_dir)
            for d in reversed(created):  # make the new folder entries themselves durable
                _fsync_dir(d.parent)
        except OSError as exc:
            raise StorageError(f"cannot fsync folder: {exc.strerror or exc}", path=series_dir) from exc

    def _write_bytes(self, blob: bytes, uids: tuple[str, str, str, str], ts: str, source: str) -> StoredInstance:
        study, series, sop, sop_class = uids
        final = self.path_for(study, series, sop)
        if self._root not in final.parents:  # cannot happen with validated UIDs; belt and braces
            raise InvalidUIDError(f"instance path escapes the store: {final}")
        if self._keyring is not None:
            from lesionlens.privacy.crypto import encrypt_bytes

            blob = encrypt_bytes(blob, self._keyring)
        created = self._make_dirs(final.parent)
        replaced = final.exists()
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".part", dir=final.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                if self._fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
            tmp = None
        except OSError as exc:
            raise StorageError(f"cannot write instance: {exc.strerror or exc}", path=final,
                               code="disk-full" if exc.errno == 28 else None) from exc
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        self._sync_dirs(final.parent, created)
        return StoredInstance(final, study, series, sop, sop_class, ts, len(blob), replaced, source)


__all__ = ["InstanceStore", "StoredInstance", "UID_MAX_LEN", "validate_uid"]

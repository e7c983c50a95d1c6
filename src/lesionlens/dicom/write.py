"""Writing DICOM files — together with the readers, the only place that calls ``dcmwrite``.

Writes are durable and atomic: the bytes go to a temporary file in the target folder, are
fsync'ed, then renamed over the final name, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from lesionlens import __version__
from lesionlens.errors import OutputError

#: The root under which LesionLens derives deterministic UIDs (2.25 = UUID-derived OID arc).
IMPLEMENTATION_VERSION_NAME = f"LESIONLENS_{__version__.replace('.', '')}"[:16]

_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}


def uid_from_seed(*parts: object) -> UID:
    """A valid, deterministic UID (``2.25.<int>``) derived from ``parts`` (seed, role, index...).

    The same parts always give the same UID; different parts give different UIDs.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def ensure_file_meta(ds: Dataset, transfer_syntax_uid: str | None = None) -> None:
    """Fill the File Meta Information group from the dataset (SOP class/instance, syntax)."""
    meta = ds.file_meta if hasattr(ds, "file_meta") and ds.file_meta is not None else FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ts = transfer_syntax_uid or getattr(meta, "TransferSyntaxUID", None) or ExplicitVRLittleEndian
    meta.TransferSyntaxUID = UID(str(ts))
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta


def save_dataset(ds: Dataset, path: str | Path, *, transfer_syntax_uid: str | None = None) -> Path:
    """Write ``ds`` as a DICOM Part 10 file at ``path`` (atomic, fsync'ed).

    transfer_syntax_uid: when it names a compressed syntax (RLE, JPEG-LS, JPEG 2000, ...) the
    pixel data is encoded with pydicom's encoders; the uncompressed syntaxes are written as is.
    Raises :class:`OutputError` naming the file when encoding or writing fails.
    """
    path = Path(path)
    try:
        if transfer_syntax_uid is not None and UID(transfer_syntax_uid) not in _UNCOMPRESSED:
            if "PixelData" not in ds:
                raise OutputError("cannot compress a dataset without Pixel Data", path=path)
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                ensure_file_meta(ds, ExplicitVRLittleEndian)
            ds.compress(UID(transfer_syntax_uid), generate_instance_uid=False)
            ensure_file_meta(ds)
        else:
            ensure_file_meta(ds, transfer_syntax_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                pydicom.dcmwrite(fh, ds, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OutputError:
        raise
    except Exception as exc:  # pydicom/encoder errors of many types
        raise OutputError(f"could not write DICOM: {exc}", path=path) from exc
    return path

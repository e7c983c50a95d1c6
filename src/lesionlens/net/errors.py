"""Errors of the DICOM networking layer (all rooted at :class:`~lesionlens.errors.LesionLensError`).

* :class:`InvalidInstanceError` — a received object cannot be stored (unparseable, a UID is
  missing or malformed, request and dataset disagree). DICOM handlers map it to a 0xC000-range
  status; HTTP handlers to 400/422.
* :class:`StorageError` — the store could not write durably (disk full, permissions); mapped to
  0xA700 "out of resources".
* :class:`NetworkError` — talking to a peer failed: :class:`AssociationError` (could not
  associate / the association dropped), :class:`DimseError` (the peer answered a request with a
  failure status), :class:`DicomWebError` (an HTTP error from a DICOMweb server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lesionlens.errors import LesionLensError

if TYPE_CHECKING:  # pragma: no cover
    from lesionlens.net.scu import SendReport


class InvalidInstanceError(LesionLensError):
    """A received DICOM object cannot be accepted (names the field that is wrong)."""

    code = "invalid-instance"


class InvalidUIDError(InvalidInstanceError):
    """A UID is missing, longer than 64 characters, or not digits separated by single dots."""

    code = "invalid-uid"


class StorageError(LesionLensError):
    """An instance could not be written durably (I/O error, disk full, permissions)."""

    code = "storage"


class NetworkError(LesionLensError):
    """Talking to a DICOM or DICOMweb peer failed."""

    code = "network"


class AssociationError(NetworkError):
    """No association could be established with the peer (or it was lost mid-way).

    ``report`` carries what was done before the failure when a transfer was under way
    (a :class:`~lesionlens.net.scu.SendReport` for :func:`~lesionlens.net.scu.send_files`).
    """

    code = "association"

    def __init__(self, message: str, *, report: SendReport | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.report = report


class DimseError(NetworkError):
    """The peer answered a DIMSE request with a failure status (``status``)."""

    code = "dimse"

    def __init__(self, message: str, *, status: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.status = status


class DicomWebError(NetworkError):
    """A DICOMweb request failed (``status_code`` is the HTTP status when there was one)."""

    code = "dicomweb"

    def __init__(self, message: str, *, status_code: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.status_code = status_code


__all__ = [
    "AssociationError",
    "DicomWebError",
    "DimseError",
    "InvalidInstanceError",
    "InvalidUIDError",
    "NetworkError",
    "StorageError",
]

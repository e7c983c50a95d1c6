"""The one error hierarchy of LesionLens.

Every error a user can meet is a :class:`LesionLensError`. Messages are actionable:
they name the file (or field) and the reason. Boundaries (CLI, HTTP, DICOM handlers)
convert these into one line / a status code / a DIMSE status, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class LesionLensError(Exception):
    """Root of every error LesionLens raises on purpose.

    ``path`` names the file the problem is about (when there is one) and ``code`` is a short
    machine-readable reason (e.g. ``"not-dicom"``, ``"truncated"``) used in JSON outputs.
    """

    code: str = "error"

    def __init__(self, message: str, *, path: str | Path | None = None, code: str | None = None):
        self.path = str(path) if path is not None else None
        if code is not None:
            self.code = code
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(LesionLensError):
    """A configuration value is missing, malformed or out of range (names the field)."""

    code = "config"


class UnsupportedInputError(LesionLensError):
    """The input is valid but of a kind LesionLens does not handle (e.g. a modality or format)."""

    code = "unsupported"


class NotDicomError(UnsupportedInputError):
    """The file is not a DICOM file (no preamble/DICM and no parseable dataset)."""

    code = "not-dicom"


class DicomReadError(LesionLensError):
    """A DICOM file could not be parsed: corrupt, truncated, lengths past the end, ..."""

    code = "dicom-read"


class PixelDecodeError(DicomReadError):
    """Pixel data is missing, undecodable, of an unsupported transfer syntax or the wrong size."""

    code = "pixel-decode"


class UnsupportedTransferSyntaxError(PixelDecodeError):
    """No installed codec can decode the transfer syntax."""

    code = "unsupported-transfer-syntax"


class SeriesAssemblyError(LesionLensError):
    """Slices cannot be put together into a volume (no geometry, nothing selectable, ...)."""

    code = "series-assembly"


class DataFormatError(LesionLensError):
    """A dataset file (YOLO, COCO, LUNA16, JSON truth, ...) is malformed."""

    code = "data-format"


class ModelError(LesionLensError):
    """A model cannot be found, loaded, verified or run."""

    code = "model"


class OutputError(LesionLensError):
    """An output (report, SR, SEG, image) could not be written."""

    code = "output"


__all__ = [
    "LesionLensError",
    "ConfigError",
    "UnsupportedInputError",
    "NotDicomError",
    "DicomReadError",
    "PixelDecodeError",
    "UnsupportedTransferSyntaxError",
    "SeriesAssemblyError",
    "DataFormatError",
    "ModelError",
    "OutputError",
]

"""DICOM (and other image format) ingest: the only package that reads/writes DICOM files."""

from lesionlens.dicom.types import (
    Catalog,
    DisplayInfo,
    InstanceKind,
    InstanceRecord,
    PatientRecord,
    Problem,
    SeriesRecord,
    StudyRecord,
    Volume,
)

__all__ = [
    "Catalog",
    "DisplayInfo",
    "InstanceKind",
    "InstanceRecord",
    "PatientRecord",
    "Problem",
    "SeriesRecord",
    "StudyRecord",
    "Volume",
]

"""DICOM (and other image format) ingest: the only package that reads/writes DICOM files."""

from lesionlens.dicom.io import ReadLimits, read_dataset
from lesionlens.dicom.scan import scan
from lesionlens.dicom.select import SelectionRules, select_series
from lesionlens.dicom.study import StudyRead, load_series, read_study
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
    "ReadLimits",
    "SelectionRules",
    "StudyRead",
    "load_series",
    "read_dataset",
    "read_study",
    "scan",
    "select_series",
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

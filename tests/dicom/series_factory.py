"""Build small, real DICOM series on disk for ingest tests (pydicom datasets + save_dataset)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from lesionlens.dicom.write import save_dataset, uid_from_seed

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass
class SeriesSpec:
    """What to generate. Positions along the normal are ``z0 + k * spacing`` for k in ``slices``."""

    seed: str = "s"
    rows: int = 32
    columns: int = 32
    n_slices: int = 12
    spacing: float = 2.5
    z0: float = -100.0
    pixel_spacing: tuple[float, float] = (0.7, 0.8)
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0)
    origin_xy: tuple[float, float] = (-10.0, -20.0)
    tilt_mm_per_slice: float = 0.0  # shift along the column direction per slice (gantry tilt)
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    series_number: int = 2
    description: str = "CHEST AXIAL"
    study_seed: str = "study"
    pixel_representation: int | Sequence[int] = 1
    intercept: float = -1024.0
    skip: Sequence[int] = ()
    duplicate: Sequence[int] = ()
    transfer_syntax: str = ExplicitVRLittleEndian
    modality: str = "CT"
    extra: dict[str, object] = field(default_factory=dict)


def hu_slice(spec: SeriesSpec, k: int) -> np.ndarray:
    """The HU values written for slice k: (R, C) float32, non-constant, in [-1000, 1200]."""
    r, c = np.mgrid[0 : spec.rows, 0 : spec.columns]
    rng = np.random.default_rng(zlib.crc32(f"{spec.seed}/{k}".encode()))
    img = -1000 + 40 * k + 3 * r + 2 * c + rng.integers(0, 50, size=r.shape)
    return img.astype(np.float32)


def make_slice(spec: SeriesSpec, k: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid_from_seed(spec.seed, "sop", k)
    ds.StudyInstanceUID = uid_from_seed(spec.study_seed, "study")
    ds.SeriesInstanceUID = uid_from_seed(spec.seed, "series")
    ds.FrameOfReferenceUID = uid_from_seed(spec.study_seed, "for")
    ds.PatientID = "P1"
    ds.PatientName = "Test^Patient"
    ds.StudyDate = "20240102"
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = spec.description
    ds.SeriesNumber = spec.series_number
    ds.Modality = spec.modality
    ds.ImageType = list(spec.image_type)
    ds.InstanceNumber = (k * 7919) % 1000 + 1  # scrambled on purpose
    iop = np.asarray(spec.iop, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    ipp = np.array([spec.origin_xy[0], spec.origin_xy[1], 0.0]) + normal * (spec.z0 + k * spec.spacing)
    ipp = ipp + iop[3:] * spec.tilt_mm_per_slice * k
    ds.ImagePositionPatient = [round(float(x), 4) for x in ipp]
    ds.ImageOrientationPatient = [float(x) for x in iop]
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.SliceThickness = abs(spec.spacing)
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    pr = spec.pixel_representation
    pr = pr[k % len(pr)] if isinstance(pr, Sequence) else pr
    ds.PixelRepresentation = pr
    intercept = spec.intercept if pr == 0 else 0.0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1
    stored = hu_slice(spec, k) - intercept
    ds.PixelData = stored.astype("<u2" if pr == 0 else "<i2").tobytes()
    for kw, v in spec.extra.items():
        setattr(ds, kw, v)
    return ds


def write_series(spec: SeriesSpec, folder: Path, *, shuffle_names: bool = True) -> list[Path]:
    """Write the series into ``folder`` under random names; returns paths in slice order k."""
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(spec.seed)
    paths: list[Path] = []
    for k in range(spec.n_slices):
        if k in spec.skip:
            continue
        name = f"{rnd.getrandbits(40):010x}.dcm" if shuffle_names else f"{spec.seed}_{k:04d}.dcm"
        p = save_dataset(make_slice(spec, k), folder / name, transfer_syntax_uid=spec.transfer_syntax)
        paths.append(p)
        if k in spec.duplicate:
            save_dataset(make_slice(spec, k), folder / f"dup_{name}", transfer_syntax_uid=spec.transfer_syntax)
    return paths


def make_non_image(kind: str, study_seed: str = "study", seed: str = "doc") -> Dataset:
    """A minimal Basic Text SR (``kind="sr"``) or Key Object Selection (``kind="ko"``)."""
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR if kind == "sr" else KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = uid_from_seed(seed, "sop")
    ds.StudyInstanceUID = uid_from_seed(study_seed, "study")
    ds.SeriesInstanceUID = uid_from_seed(seed, "series")
    ds.PatientID = "P1"
    ds.PatientName = "Test^Patient"
    ds.Modality = "SR" if kind == "sr" else "KO"
    ds.SeriesNumber = 90
    ds.SeriesDescription = "REPORT"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    return ds

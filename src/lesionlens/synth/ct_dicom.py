"""DICOM objects of a synthetic CT study: CT Image slices, a localizer and a Key Object Selection
document. Files are written with :func:`lesionlens.dicom.write.save_dataset` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from lesionlens.dicom.write import save_dataset, uid_from_seed

if TYPE_CHECKING:
    from lesionlens.synth.ct import CTPhantom

STUDY_DATE = "20240105"
STUDY_TIME = "093000"


def _ds(v: float) -> str:
    """A DS string of at most 16 characters."""
    s = f"{v:.6g}"
    return s if len(s) <= 16 else f"{v:.8e}"[:16]


def _common(ph: CTPhantom, series_uid: str, series_number: int, description: str) -> Dataset:
    """Patient, General Study, Patient Study, General Series, Frame of Reference, Equipment."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = ph.patient["name"]
    ds.PatientID = ph.patient["id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = ph.patient["sex"]
    ds.PatientAge = ph.patient["age"]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom (LesionLens); no real patient"
    ds.StudyInstanceUID = ph.uids["study"]
    ds.StudyDate, ds.StudyTime = STUDY_DATE, STUDY_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"S{ph.seed % 100000:05d}"
    ds.AccessionNumber = f"A{ph.seed % 10**8:08d}"
    ds.StudyDescription = "CT CHEST (SYNTHETIC PHANTOM)"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = STUDY_DATE, STUDY_TIME
    ds.Manufacturer = "LesionLens"
    ds.ManufacturerModelName = ph.scanner["manufacturer_model"]
    ds.SoftwareVersions = "lesionlens.synth.ct"
    ds.InstitutionName = "Synthetic"
    return ds


def _ct_image_attrs(ds: Dataset, ph: CTPhantom) -> None:
    """Modality, Frame of Reference, CT Image module acquisition attributes, pixel description."""
    sc = ph.scanner
    ds.Modality = "CT"
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = ph.uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
    ds.AcquisitionDate, ds.AcquisitionTime = STUDY_DATE, STUDY_TIME
    ds.KVP = _ds(sc["kvp"])
    ds.XRayTubeCurrent = int(sc["tube_current_ma"])
    ds.ExposureTime = 500
    ds.Exposure = int(sc["tube_current_ma"] * 0.5)
    ds.ConvolutionKernel = sc["kernel"]
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ScanOptions = "HELICAL"
    ds.SpiralPitchFactor = 1.0
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = _ds(ph.geometry.spacing_mm[2] * ph.geometry.shape[2])
    ds.DistanceSourceToDetector = "1040"
    ds.DistanceSourceToPatient = "570"
    ds.FilterType = "BODY"
    ds.FocalSpots = "1.2"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    rep = sc["pixel_representation"]
    ds.PixelRepresentation = 0 if rep == "unsigned" else 1
    ds.BitsStored = 12 if rep == "unsigned" else 16
    ds.HighBit = ds.BitsStored - 1
    ds.RescaleIntercept = _ds(sc["rescale_intercept"])
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"


def stored_values(hu: np.ndarray, ph: CTPhantom) -> np.ndarray:
    """HU (int16, any shape) → stored pixel values of the phantom's pixel representation."""
    if ph.scanner["pixel_representation"] == "unsigned":
        return (hu.astype(np.int32) + 1024).astype(np.uint16)
    if ph.scanner["pixel_representation"] == "signed_offset":
        return (hu.astype(np.int32) + 1024).astype(np.int16)
    return hu.astype(np.int16)


def ct_slices(ph: CTPhantom, *, scramble: bool = False) -> list[Dataset]:
    """One CT Image Storage dataset per slice k (in array order), pixels not yet encoded."""
    g = ph.geometry
    k_all = g.shape[0]
    numbers = np.arange(k_all, 0, -1)  # instance 1 is the top slice (scanned head first)
    if scramble:
        numbers = np.random.default_rng([ph.seed, 0x5C]).permutation(numbers)
    stored = stored_values(ph.hu, ph)
    out = []
    for k in range(k_all):
        ds = _common(ph, ph.uids["series"], 2, "CHEST 1.0 LUNG (SYNTHETIC)")
        _ct_image_attrs(ds, ph)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid_from_seed("lesionlens.synth.ct", ph.seed, "ct-slice", k)
        ds.InstanceCreationDate, ds.InstanceCreationTime = STUDY_DATE, STUDY_TIME
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(numbers[k])
        pos = ph.affine[:3, :3] @ np.array([k, 0, 0]) + ph.affine[:3, 3]
        ds.ImagePositionPatient = [_ds(float(v)) for v in pos]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [_ds(g.spacing_mm[1]), _ds(g.spacing_mm[2])]
        ds.SliceThickness = _ds(g.slice_thickness_mm)
        ds.SliceLocation = _ds(float(pos[2]))
        ds.Rows, ds.Columns = g.shape[1], g.shape[2]
        ds.WindowCenter = ["-600", "40"]
        ds.WindowWidth = ["1500", "400"]
        ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        out.append(ds)
    return out


def localizer(ph: CTPhantom) -> Dataset:
    """A coronal projection scout (ImageType ORIGINAL\\PRIMARY\\LOCALIZER) in its own series.

    Pixels are the mean HU along the anterior–posterior direction, resampled to square pixels.
    """
    g = ph.geometry
    dz, _, dx = g.spacing_mm
    proj = ph.hu.astype(np.float32).mean(axis=1)  # (K, C)
    rows = max(2, int(round(g.shape[0] * dz / dx)))
    src = np.linspace(0, g.shape[0] - 1, rows)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, g.shape[0] - 1)
    w = (src - lo)[:, None]
    img = (proj[lo] * (1 - w) + proj[hi] * w)[::-1]  # first row = top of the patient
    img = np.clip(np.rint(img * 3.0 + 2000.0), 0, 4095).astype(np.uint16)  # brighter contrast
    ds = _common(ph, ph.uids["localizer_series"], 1, "TOPOGRAM (SYNTHETIC)")
    _ct_image_attrs(ds, ph)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    del ds.RescaleType
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid_from_seed("lesionlens.synth.ct", ph.seed, "localizer")
    ds.InstanceCreationDate, ds.InstanceCreationTime = STUDY_DATE, STUDY_TIME
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.InstanceNumber = 1
    ds.ScanOptions = "SURVIEW"
    top = ph.affine[:3, 3] + np.array([0.0, g.spacing_mm[1] * (g.shape[1] - 1) / 2,
                                       dz * (g.shape[0] - 1)])
    ds.ImagePositionPatient = [_ds(float(v)) for v in top]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.PixelSpacing = [_ds(dx), _ds(dx)]
    ds.SliceThickness = _ds(float(g.spacing_mm[1] * g.shape[1]))
    ds.Rows, ds.Columns = rows, g.shape[2]
    ds.WindowCenter, ds.WindowWidth = "2000", "4000"
    ds.PixelData = img.tobytes()
    return ds


def key_object(ph: CTPhantom, evidence: list[Dataset]) -> Dataset:
    """A Key Object Selection document ("Of Interest") referencing a few CT slices (highdicom)."""
    from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
    from pydicom.sr.codedict import codes

    picks = evidence[:: max(1, len(evidence) // 3)][:3]
    headers = []
    for e in picks:  # highdicom only needs the header attributes
        h = Dataset()
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                   "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                   "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "Modality",
                   "Rows", "Columns", "StudyDescription"):
            if kw in e:
                setattr(h, kw, getattr(e, kw))
        headers.append(h)
    content = KeyObjectSelection(document_title=codes.DCM.OfInterest, referenced_objects=headers,
                                 description="Synthetic study: slices of interest")
    doc = KeyObjectSelectionDocument(
        evidence=headers, content=content, series_instance_uid=ph.uids["key_object_series"],
        series_number=90, sop_instance_uid=uid_from_seed("lesionlens.synth.ct", ph.seed, "ko"),
        instance_number=1, manufacturer="LesionLens")
    doc.SeriesDescription = "KEY IMAGES (SYNTHETIC)"
    doc.PatientSex = ph.patient["sex"]
    return doc


def _name(ph: CTPhantom, role: str, i: int, random_names: bool, prefix: str) -> str:
    if random_names:
        return str(uid_from_seed("name", ph.seed, role, i)).split(".")[-1][:20]
    return f"{prefix}_{i + 1:04d}.dcm"


def write_study_files(ph: CTPhantom, out: Path, *, transfer_syntax: str | None, with_localizer: bool,
                      with_non_image: bool, random_names: bool, scramble: bool) -> list[Path]:
    """Write slices (and the optional localizer / key object) into ``out``; returns the paths."""
    paths = []
    slices = ct_slices(ph, scramble=scramble)
    for k, ds in enumerate(slices):
        p = out / _name(ph, "ct", k, random_names, "CT")
        paths.append(save_dataset(ds, p, transfer_syntax_uid=transfer_syntax))
    if with_localizer:
        p = out / _name(ph, "loc", 0, random_names, "LOC")
        paths.append(save_dataset(localizer(ph), p, transfer_syntax_uid=transfer_syntax))
    if with_non_image:
        p = out / _name(ph, "ko", 0, random_names, "KO")
        paths.append(save_dataset(key_object(ph, slices), p))
    return paths

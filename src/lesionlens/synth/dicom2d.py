"""2D phantom record, shared rendering helpers and the MG/DX DICOM writer.

A :class:`Phantom2D` holds a projection radiograph as *stored values* ``image: (R, C) uint16``
(what goes into Pixel Data, already inverted for MONOCHROME1) plus its box truth. Generators
(:func:`lesionlens.synth.mammo.generate_mammogram`, :func:`lesionlens.synth.xray.generate_chest_xray`)
render in a *brightness* space ``(R, C) float32`` in ``[0, 1]`` where 1 is most attenuating
(bright on a MONOCHROME2 display) and call :func:`to_stored` last.

:func:`write_2d_study` writes one DICOM file — Digital Mammography X-Ray Image Storage – For
Presentation (MG) or Digital X-Ray Image Storage – For Presentation (DX) — plus the truth JSON
``<name>.truth.json`` beside it (format ``lesionlens.truth2d/1``, see
:mod:`lesionlens.data.formats.dicom_truth`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID
from scipy import ndimage

from lesionlens.data.annotations import ImageAnnotation
from lesionlens.dicom.write import save_dataset, uid_from_seed
from lesionlens.errors import ConfigError

#: Class names of every 2D phantom (labels index into this tuple).
CLASS_NAMES_2D: tuple[str, ...] = ("calcification_cluster", "mass", "nodule")

#: A lesion's box covers every pixel where it adds at least this much brightness.
BOX_THRESHOLD = 0.02

MG_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]


@dataclass
class Phantom2D:
    """A synthetic projection radiograph and its truth.

    image: ``(R, C) uint16`` stored values (0 … 2**bits_stored − 1); for MONOCHROME1 high
        values are dark on display (the generator already inverted them).
    pixel_spacing_mm: ``(row, column)`` spacing in mm at the detector (ImagerPixelSpacing).
    boxes: ``(N, 4) float32`` xyxy pixels; labels: ``(N,) int64`` into ``names``;
    sizes_mm: ``(N,) float32`` — mass/nodule diameter, or the extent of a calcification cluster.
    lesions: per-lesion details (shape, speck centres ``specks_px`` as ``[x, y]`` pixels, ...).
    """

    image: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    boxes: np.ndarray
    labels: np.ndarray
    sizes_mm: np.ndarray
    photometric: Photometric
    bits_stored: int
    modality: Literal["MG", "DX"]
    view: str  # "CC" | "MLO" (MG) or "PA" (DX)
    laterality: str  # "L" | "R" for MG, "" for chest
    seed: int
    names: list[str] = field(default_factory=lambda: list(CLASS_NAMES_2D))
    lesions: list[dict[str, object]] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 1.0)  # (center, width) in stored values

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def brightness(self) -> np.ndarray:
        """``(R, C) float32`` in [0, 1], 1 = bright on display, whatever the photometric."""
        top = float(2**self.bits_stored - 1)
        v = self.image.astype(np.float32) / top
        return 1.0 - v if self.photometric == "MONOCHROME1" else v

    def to_annotation(self, image: str = "") -> ImageAnnotation:
        """The truth as an :class:`ImageAnnotation` (sizes and lesion details in ``extra``)."""
        return ImageAnnotation(
            image=image,
            width=self.width,
            height=self.height,
            boxes=self.boxes.copy(),
            labels=self.labels.copy(),
            extra={"sizes_mm": [float(s) for s in self.sizes_mm]},
        )


# ----------------------------------------------------------------------------- rendering helpers


def check_common(rows: int, cols: int, bits_stored: int, photometric: str) -> None:
    """Validate shared config fields; raises :class:`ConfigError` naming the field."""
    if not (64 <= rows <= 8192 and 64 <= cols <= 8192):
        raise ConfigError(f"size must be 64..8192 pixels per side, got {rows}x{cols}")
    if bits_stored not in (12, 14, 15, 16):
        raise ConfigError(f"bits_stored must be 12, 14, 15 or 16, got {bits_stored}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ConfigError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: float, octaves: int = 3
) -> np.ndarray:
    """Low-frequency noise ``(R, C) float32`` with zero mean and unit-ish std.

    Sums ``octaves`` layers of random grids upsampled bilinearly; the coarsest layer has one
    sample every ``scale_px`` pixels, each further layer half the scale and half the amplitude.
    Cost is one bilinear zoom of the full image per octave.
    """
    r, c = shape
    out = np.zeros(shape, np.float32)
    amp, scale = 1.0, max(scale_px, 2.0)
    for _ in range(octaves):
        gr, gc = int(np.ceil(r / scale)) + 2, int(np.ceil(c / scale)) + 2
        grid = ndimage.gaussian_filter(rng.standard_normal((gr, gc)).astype(np.float32), 0.7)
        up = ndimage.zoom(grid, (r / (gr - 1), c / (gc - 1)), order=1, prefilter=False)
        out += amp * up[:r, :c] / (grid.std() + 1e-6)
        amp *= 0.5
        scale = max(scale / 2, 2.0)
    return out


def sphere_profile(dist: np.ndarray, radius: float, edge_px: float = 1.0) -> np.ndarray:
    """Projected thickness of a sphere (``sqrt(1 - (d/r)²)``, in [0, 1]) with a soft edge.

    dist: distances (any shape) in pixels from the centre; radius in pixels.
    """
    radius = max(radius, 0.5)
    t = np.sqrt(np.clip(1.0 - (dist / radius) ** 2, 0.0, 1.0))
    if edge_px > 0:
        # a narrow linear ramp at the rim so that small objects stay visible after quantisation
        ramp = np.clip((radius + edge_px - dist) / (2 * edge_px), 0.0, 1.0) * 0.15
        t = np.maximum(t, np.where(dist < radius + edge_px, ramp, 0.0))
    return t.astype(np.float32)


def mask_box(mask: np.ndarray, r0: int, c0: int) -> tuple[float, float, float, float]:
    """xyxy pixel box (edges) of the True pixels of ``mask`` placed at offset (r0, c0)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(c0 + cols[0]), float(r0 + rows[0]), float(c0 + cols[-1] + 1), float(r0 + rows[-1] + 1))


def to_stored(brightness: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """``(R, C) float`` brightness in [0, 1] → ``(R, C) uint16`` stored values (inverted for
    MONOCHROME1, so that the display shows the same picture)."""
    top = 2**bits_stored - 1
    b = np.clip(brightness, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        b = 1.0 - b
    return np.rint(b * top).astype(np.uint16)


def window_for(brightness_lo: float, brightness_hi: float, bits_stored: int, photometric: str) -> tuple[float, float]:
    """(center, width) in stored values that spans the brightness range ``[lo, hi]``."""
    top = 2**bits_stored - 1
    lo, hi = brightness_lo * top, brightness_hi * top
    if photometric == "MONOCHROME1":
        lo, hi = top - hi, top - lo
    return (round((lo + hi) / 2.0, 1), round(max(hi - lo, 2.0), 1))


# ----------------------------------------------------------------------------- DICOM


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "PA": ("399348003", "postero-anterior"),
}


def _orientation(phantom: Phantom2D) -> list[str]:
    if phantom.modality == "DX":
        return ["L", "F"]  # PA chest: patient's left on the image right, feet down
    toward_nipple = "A" if phantom.laterality == "L" else "P"
    if phantom.view == "CC":
        return [toward_nipple, "R" if phantom.laterality == "L" else "L"]
    return [toward_nipple, "F"]


def build_dataset(
    phantom: Phantom2D,
    *,
    patient_id: str = "PHANTOM2D",
    patient_name: str = "Phantom^TwoD",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    accession_number: str = "",
    study_date: str = "20240101",
) -> Dataset:
    """A complete MG or DX For-Presentation dataset for ``phantom`` (UIDs derived from the seed)."""
    seed = phantom.seed
    mod = phantom.modality
    ds = Dataset()
    ds.SOPClassUID = MG_FOR_PRESENTATION if mod == "MG" else DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_instance_uid or uid_from_seed("2d", mod, seed, "sop")
    ds.StudyInstanceUID = study_instance_uid or uid_from_seed("2d", mod, seed, "study")
    ds.SeriesInstanceUID = series_instance_uid or uid_from_seed("2d", mod, seed, "series")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = "120000"
    # Patient / study / series
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F" if mod == "MG" else "O"
    ds.StudyDate = study_date
    ds.StudyTime = "120000"
    ds.ContentDate = study_date
    ds.ContentTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(seed % 10**8)
    ds.AccessionNumber = accession_number
    ds.StudyDescription = "Synthetic mammogram" if mod == "MG" else "Synthetic chest radiograph"
    ds.Modality = mod
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"{phantom.laterality}{phantom.view} phantom" if mod == "MG" else "PA phantom"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "LesionLens"
    ds.ManufacturerModelName = "Phantom2D"
    ds.SoftwareVersions = "lesionlens"
    ds.DeviceSerialNumber = "0"
    ds.InstanceNumber = 1
    ds.PatientOrientation = _orientation(phantom)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageType = ["DERIVED", "PRIMARY", "", ""] if mod == "MG" else ["DERIVED", "PRIMARY"]
    ds.ImageLaterality = phantom.laterality if mod == "MG" else "U"
    ds.QualityControlImage = "NO"
    # Anatomy and view
    if mod == "MG":
        ds.AnatomicRegionSequence = Sequence([_code("76752008", "SCT", "Breast")])
        ds.BodyPartExamined = "BREAST"
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.OrganExposed = "BREAST"
        ds.BreastImplantPresent = "NO"
        ds.PartialView = "NO"
    else:
        ds.AnatomicRegionSequence = Sequence([_code("43799004", "SCT", "Chest")])
        ds.BodyPartExamined = "CHEST"
        ds.PositionerType = "NONE"
        ds.ViewPosition = "PA"
        ds.PatientPosition = ""
    value, meaning = _VIEW_CODES[phantom.view]
    view_item = _code(value, "SCT", meaning)
    view_item.ViewModifierCodeSequence = Sequence([])
    ds.ViewCodeSequence = Sequence([view_item])
    # Detector and geometry
    ps = [round(float(phantom.pixel_spacing_mm[0]), 6), round(float(phantom.pixel_spacing_mm[1]), 6)]
    ds.ImagerPixelSpacing = ps
    ds.PixelSpacing = ps
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "magnification at the detector plane"
    ds.EstimatedRadiographicMagnificationFactor = 1.0
    ds.DetectorType = "DIRECT" if mod == "MG" else "SCINTILLATOR"
    ds.DetectorConditionsNominalFlag = "YES"
    ds.DistanceSourceToDetector = 660.0 if mod == "MG" else 1800.0
    ds.KVP = 28.0 if mod == "MG" else 120.0
    ds.ExposureTime = 1000 if mod == "MG" else 10
    ds.XRayTubeCurrent = 100
    ds.Exposure = 100
    ds.ContentQualification = "RESEARCH"
    ds.AcquisitionContextSequence = Sequence([])
    # Pixels
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = phantom.photometric
    ds.Rows, ds.Columns = phantom.height, phantom.width
    ds.BitsAllocated = 16
    ds.BitsStored = phantom.bits_stored
    ds.HighBit = phantom.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if phantom.photometric == "MONOCHROME1" else 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if phantom.photometric == "MONOCHROME1" else "IDENTITY"
    ds.WindowCenter = phantom.window[0]
    ds.WindowWidth = phantom.window[1]
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = np.ascontiguousarray(phantom.image, dtype="<u2").tobytes()
    return ds


def write_2d_study(
    phantom: Phantom2D,
    out_dir: str | Path,
    *,
    filename: str | None = None,
    patient_id: str = "PHANTOM2D",
    transfer_syntax_uid: str | None = None,
    **uids: str,
) -> Path:
    """Write ``phantom`` as one DICOM file in ``out_dir`` and its truth JSON beside it.

    The DICOM file is ``out_dir/<filename>`` (default ``"<mg|dx>-<seed>.dcm"``); the truth is
    ``<same stem>.truth.json`` (format ``lesionlens.truth2d/1``), whose ``image`` names the DICOM
    file relative to the JSON. ``uids`` may give ``study_instance_uid``, ``series_instance_uid``,
    ``sop_instance_uid`` (defaults derive from the seed). Returns the DICOM path.
    """
    from lesionlens.data.formats.dicom_truth import write_truth_2d  # format owner

    out = Path(out_dir)
    name = filename or f"{phantom.modality.lower()}-{phantom.seed}.dcm"
    ds = build_dataset(phantom, patient_id=patient_id, **uids)
    path = save_dataset(ds, out / name, transfer_syntax_uid=transfer_syntax_uid)
    ann = phantom.to_annotation(image=path.name)
    ann.patient_id = patient_id
    ann.study_instance_uid = str(ds.StudyInstanceUID)
    ann.series_instance_uid = str(ds.SeriesInstanceUID)
    ann.sop_instance_uid = str(ds.SOPInstanceUID)
    ann.extra.update(
        {
            "modality": phantom.modality,
            "view": phantom.view,
            "laterality": phantom.laterality,
            "photometric": phantom.photometric,
            "bits_stored": phantom.bits_stored,
            "pixel_spacing_mm": [float(s) for s in phantom.pixel_spacing_mm],
            "seed": phantom.seed,
            "lesions": phantom.lesions,
        }
    )
    write_truth_2d(ann, list(phantom.names), path.with_name(path.stem + ".truth.json"))
    return path

"""DICOM Structured Report of a series' lesions: a highdicom ``Comprehensive3DSR`` holding a
TID 1500 Measurement Report, readable by PACS, viewers and ``hd.sr.srread``.

Content (PS3.16 template rows in brackets):

- observer [TID 1001]: the device — LesionLens, model ``"LesionLens <model name> <version>"``,
  serial = model sha256 prefix; procedure reported: LOINC 24627-2 "CT Chest" for CT, else SNOMED CT
  363679005 "Imaging procedure";
- image library [TID 1600]: the key slices; evidence (Current Requested Procedure Evidence
  Sequence): every image of the series;
- per lesion, with its Tracking Identifier (``tracking_id``) and Tracking UID
  (``tracking_uid``), finding type (SCT 27925004 "Nodule" for label "nodule", 4147007 "Mass",
  else 52988006 "Lesion"), finding category SCT 49755003 "Morphologically abnormal structure",
  finding site (SCT 39607008 "Lung" with laterality SCT 24028007 Right / 7771000 Left from
  ``location.side``; Breast for MG) and algorithm identification [TID 4019] (model name,
  version, sha256 as parameter):

  * a **planar** group [TID 1410] whose ROI is the box on the key slice (SCOORD closed
    POLYLINE, pixel coordinates with (0, 0) at the top-left corner of the top-left pixel —
    the same frame as ``bbox_px``; purpose SCT 75958009 "Bounded by") referencing that SOP
    instance (and frame), with Long axis (SCT 103339001), Short axis (SCT 103340004) and
    Diameter (SCT 81827009) derivation Mean (SCT 373098007), all in mm; the detection
    confidence as DCM 111012 "Certainty of Finding" in % (CID 6048, the CAD operating-point
    axis used by DICOM CAD SR); the nodule type as qualitative evaluation RADLEX RID46010
    "Solidness descriptor" = RID5741 Solid / RID46011 Partially solid / RID46016 Non-solid
    (see :mod:`lesionlens.reports.dicom_common` for why RadLex);
  * for volumetric series with patient geometry, a **volumetric** group [TID 1411] with the
    same tracking identifiers whose ROI is the lesion centre (SCOORD3D POINT in the series'
    Frame of Reference, purpose DCM 111010 "Center", source series referenced), with Volume
    (SCT 118565006, mm3) and, for CT, DCM 112181 "Mean" / 112180 "Maximum Attenuation
    Coefficient" ([hnsf'U]) of the segmentation. For 2D images and non-volumetric series there
    is no SCOORD3D: the planar group carries the HU values (CT) instead.

- a report-level "Qualitative Evaluations" container [TID 1500 rows 12, 14] with the notice
  (:data:`lesionlens.pipeline.types.NOTICE`) and the model version as TEXT.

A series without lesions still gets a report: one measurement group [TID 1501] with SCT
246206008 "Number of lesions" = 0 (highdicom requires at least one group).

Values are rounded as in the findings JSON (mm to 0.01, mm3 and HU to 0.1, % to 0.01).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from lesionlens.dicom.types import Volume
from lesionlens.dicom.write import save_dataset, uid_from_seed
from lesionlens.errors import OutputError
from lesionlens.pipeline.types import NOTICE, Lesion, SeriesResult, StudyResult
from lesionlens.reports.dicom_common import (
    CT_CHEST,
    MANUFACTURER,
    NODULE_TYPES,
    SOLIDNESS,
    Identity,
    anatomy,
    checked_sources,
    finding_type,
    identity,
    is_ct,
    laterality,
    output_attributes,
    slice_ref,
    unique,
    with_patient_study,
)

MM = codes.UCUM.Millimeter
MM3 = codes.UCUM.CubicMillimeter
HU = codes.UCUM.HounsfieldUnit
PERCENT = codes.UCUM.Percent
NO_UNITS = CodedConcept("1", "UCUM", "no units")
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def write_sr(result: StudyResult, series: SeriesResult, path: str | Path, *,
             sources: Sequence[Dataset] | None = None) -> Path:
    """Write the series' lesions as a TID 1500 Comprehensive 3D SR at ``path``.

    sources: the source image headers, one per volume slice (:func:`~lesionlens.reports.
    dicom_common.read_sources`), read here when None. Raises :class:`OutputError`.
    """
    srcs = checked_sources(series, sources)
    try:
        sr = build_sr(result, series, srcs)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's refusals
        raise OutputError(f"could not build the SR: {type(exc).__name__}: {exc}", path=path) from exc
    return save_dataset(sr, path)


def build_sr(result: StudyResult, series: SeriesResult, sources: Sequence[Dataset]) -> hd.sr.Comprehensive3DSR:
    """The SR object (not written) — see the module docstring for its content."""
    vol = series.volume
    ident = identity(result)
    algo = hd.sr.AlgorithmIdentification(name=ident.model_name, version=ident.model_version,
                                         parameters=[f"sha256={ident.model_sha256}"] if ident.model_sha256 else None,
                                         manufacturer=MANUFACTURER)
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                 | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
                 | hd.sr.MeasurementsAndQualitativeEvaluations] = []
    key_images: list[Dataset] = []
    for les in series.lesions:
        planar, volumetric, key_ds = _lesion_groups(les, vol, sources, algo)
        groups.append(planar)
        if volumetric is not None:
            groups.append(volumetric)
        key_images.append(key_ds)
    if not groups:
        groups.append(_no_lesions_group(vol, algo))

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=ident.device_uid, name=MANUFACTURER, manufacturer_name=MANUFACTURER,
            model_name=f"{ident.manufacturer_model_name} {ident.model_version}",
            serial_number=ident.device_serial_number),
    )

    def report_with(library: list[Dataset] | None) -> hd.sr.MeasurementReport:
        return hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=CT_CHEST if is_ct(vol) else codes.SCT.ImagingProcedure,
            imaging_measurements=groups,
            referenced_images=library or None,
        )

    try:
        report = report_with(unique(key_images))
    except (AttributeError, ValueError, KeyError):
        # highdicom cannot describe some images in the library (e.g. enhanced multi-frame CT):
        # the entries are descriptive only — the regions and the evidence still reference them
        report = report_with(None)
    report[0].ContentSequence.append(_notice(ident))

    evidence = unique(sources)
    evidence[0] = with_patient_study(evidence[0])
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        is_complete=True,
        **output_attributes("SR", "SR", result, series, sources),
    )


# --------------------------------------------------------------------------------------------


def _measurement(name: Code | CodedConcept, value: float, unit: Code | CodedConcept, ndigits: int,
                 derivation: Code | CodedConcept | None = None) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(float(value), ndigits), unit=unit, derivation=derivation)


def _hu(les: Lesion) -> list[hd.sr.Measurement]:
    m = les.measurements
    out = []
    if m is not None and m.mean_hu is not None:
        out.append(_measurement(codes.DCM.MeanAttenuationCoefficient, m.mean_hu, HU, 1))
    if m is not None and m.max_hu is not None:
        out.append(_measurement(codes.DCM.MaximumAttenuationCoefficient, m.max_hu, HU, 1))
    return out


def _sites(vol: Volume, les: Lesion) -> list[hd.sr.FindingSite] | None:
    organ = anatomy(vol)
    if organ is None:
        return None
    return [hd.sr.FindingSite(anatomic_location=organ, laterality=laterality(les))]


def _box(les: Lesion, vol: Volume) -> np.ndarray:
    """Closed POLYLINE (5 points, (column, row)) of ``bbox_px``, clipped to the image."""
    rows, cols = vol.pixels.shape[1], vol.pixels.shape[2]
    x1, y1, x2, y2 = (float(v) for v in np.asarray(les.bbox_px, dtype=np.float64)[:4])
    x1, x2 = np.clip([x1, x2], 0.0, float(cols))
    y1, y2 = np.clip([y1, y2], 0.0, float(rows))
    if not (x2 > x1 and y2 > y1):
        raise OutputError(f"lesion {les.tracking_id}: empty box {les.bbox_px!r} on slice {les.key_k}")
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)


def _lesion_groups(les: Lesion, vol: Volume, sources: Sequence[Dataset], algo: hd.sr.AlgorithmIdentification) -> tuple[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | None, Dataset]:
    if not les.tracking_uid:
        raise OutputError(f"lesion {les.tracking_id or '?'} has no tracking UID")
    m = les.measurements
    three_d = (les.center_mm is not None and vol.is_volumetric and vol.has_patient_geometry
               and bool(vol.frame_of_reference_uid))
    ct = is_ct(vol)
    common = dict(finding_type=finding_type(les), finding_category=codes.SCT.MorphologicallyAbnormalStructure,
                  algorithm_id=algo, finding_sites=_sites(vol, les))

    key_ds, frame = slice_ref(vol, sources, les.key_k)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_box(les, vol),
        source_image=hd.sr.SourceImageForRegion.from_source_image(
            key_ds, referenced_frame_numbers=[frame] if frame is not None else None),
    )
    planar_m: list[hd.sr.Measurement] = []
    if m is not None:
        planar_m += [_measurement(codes.SCT.LongAxis, m.long_axis.length_mm, MM, 2),
                     _measurement(codes.SCT.ShortAxis, m.short_axis.length_mm, MM, 2),
                     _measurement(codes.SCT.Diameter, m.mean_diameter_mm, MM, 2, derivation=codes.SCT.Mean)]
    elif les.diameter_mm is not None:  # no measurement: the detector's size estimate
        planar_m.append(_measurement(codes.SCT.Diameter, les.diameter_mm, MM, 2))
    planar_m.append(_measurement(codes.DCM.CertaintyOfFinding, 100.0 * les.confidence, PERCENT, 2))
    if not three_d:
        if m is not None and m.volume_mm3 is not None:
            planar_m.append(_measurement(codes.SCT.Volume, m.volume_mm3, MM3, 1))
        if ct:
            planar_m += _hu(les)
    evaluations = None
    if m is not None and m.nodule_type in NODULE_TYPES:
        evaluations = [hd.sr.QualitativeEvaluation(SOLIDNESS, NODULE_TYPES[m.nodule_type])]
    tracking = hd.sr.TrackingIdentifier(uid=les.tracking_uid, identifier=les.tracking_id)
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, measurements=planar_m,
        qualitative_evaluations=evaluations, geometric_purpose=codes.SCT.BoundedBy, **common)  # type: ignore[arg-type]
    if not three_d:
        return planar, None, key_ds

    assert les.center_mm is not None
    surface = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.asarray(les.center_mm, dtype=np.float64).reshape(1, 3),
        frame_of_reference_uid=vol.frame_of_reference_uid,
        source_series=hd.sr.SourceSeriesForSegmentation(vol.series_instance_uid),
    )
    volume_m: list[hd.sr.Measurement] = []
    if m is not None and m.volume_mm3 is not None:
        volume_m.append(_measurement(codes.SCT.Volume, m.volume_mm3, MM3, 1))
    if ct:
        volume_m += _hu(les)
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=les.tracking_uid, identifier=les.tracking_id),
        referenced_volume_surface=surface, measurements=volume_m or None,
        geometric_purpose=codes.DCM.Center, **common)  # type: ignore[arg-type]
    return planar, volumetric, key_ds


def _no_lesions_group(vol: Volume, algo: hd.sr.AlgorithmIdentification) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    tracking = hd.sr.TrackingIdentifier(uid=str(uid_from_seed("lesionlens-no-lesions", vol.series_instance_uid)),
                                        identifier="no lesions")
    count = hd.sr.Measurement(name=codes.SCT.NumberOfLesions, value=0, unit=NO_UNITS)
    return hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, measurements=[count],
                                                       algorithm_id=algo)


def _notice(ident: Identity) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12 "Qualitative Evaluations" with the notice as TEXT (row 14)."""
    box = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                     relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    text = f"{NOTICE} Model: {ident.model_name} {ident.model_version}."
    box.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=text,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
    return box


__all__ = ["build_sr", "write_sr"]

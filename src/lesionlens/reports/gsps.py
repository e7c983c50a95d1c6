"""DICOM Grayscale Softcopy Presentation State: the lesions drawn on the source images, for any
viewer that applies presentation states (no SR support needed).

- referenced images: every image of the series (so the window applies to the whole series);
- graphic annotations, one per annotated slice and layer, in pixel units (the ``bbox_px`` frame:
  (0, 0) is the top-left corner of the top-left pixel):

  * layer ``LESIONS`` (yellow): the box (closed POLYLINE from ``bbox_px``) on the key slice and
    a TEXT label ``"L1 12.3 mm"`` (tracking id and long axis; the detector's diameter when
    there is no measurement) just above the box (below it at the top edge), on the slice of the
    long axis (the key slice when there is none);
  * layer ``LONG_AXIS`` (red) / ``SHORT_AXIS`` (green): the measured axes (POLYLINE, 2 points)
    on the slice they were measured on;

  every graphic carries the lesion's tracking id and UID (the same as in the SR and SEG);
- VOI: for CT the lung window (W 1500 / L −600, explanation ``LUNG``); otherwise the images'
  own windows; MONOCHROME1 images get an INVERSE presentation LUT so they look as intended.

CT slices whose rescale slope/intercept differ cannot share one presentation state's Modality
LUT: then only the annotated slices are referenced (and :class:`OutputError` is raised if even
those differ).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from lesionlens.dicom.types import Volume
from lesionlens.dicom.write import save_dataset
from lesionlens.errors import OutputError
from lesionlens.pipeline.types import Lesion, SeriesResult, StudyResult
from lesionlens.reports.dicom_common import (
    MANUFACTURER,
    NOT_CLINICAL,
    checked_sources,
    is_ct,
    is_multiframe,
    output_attributes,
    slice_ref,
    unique,
    with_patient_study,
)

LUNG_WINDOW = (-600.0, 1500.0)  # (centre, width) HU
LAYERS = {  # name → (order, description, colour RGB)
    "LESIONS": (1, "LesionLens lesion boxes and labels", (255, 215, 0)),
    "LONG_AXIS": (2, "Long axis (measured)", (255, 64, 64)),
    "SHORT_AXIS": (3, "Short axis (measured)", (64, 230, 64)),
}
TEXT_HEIGHT_FRACTION = 1 / 40  # of the image height, at least 8 px


def write_gsps(result: StudyResult, series: SeriesResult, path: str | Path, *,
               sources: Sequence[Dataset] | None = None) -> Path | None:
    """Write the lesions' boxes, axes and labels as a GSPS at ``path``; None (nothing written)
    when the series has no lesions. sources: one header per volume slice, read here when None.
    Raises :class:`OutputError` (also for colour images, which a grayscale state cannot show)."""
    if not series.lesions:
        return None
    srcs = checked_sources(series, sources)
    try:
        ps = build_gsps(result, series, srcs)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's refusals
        raise OutputError(f"could not build the GSPS: {type(exc).__name__}: {exc}", path=path) from exc
    return save_dataset(ps, path)


def _label(les: Lesion) -> str:
    m = les.measurements
    size = m.long_axis.length_mm if m is not None else les.diameter_mm
    return les.tracking_id if size is None else f"{les.tracking_id} {size:.1f} mm"


def _text_box(text: str, box: tuple[float, float, float, float], rows: int, cols: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a label just above ``box`` (below it at the top), inside the image."""
    h = max(8.0, rows * TEXT_HEIGHT_FRACTION)
    w = min(float(cols), 0.6 * h * max(len(text), 1))
    x1, y1, _, y2 = box
    left = min(max(0.0, x1), cols - w)
    top = y1 - h if y1 - h >= 0 else min(y2, rows - h)
    return (left, max(top, 0.0), left + w, min(max(top, 0.0) + h, float(rows)))


def _clip_points(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.stack([np.clip(points[:, 0], 0.0, float(cols)), np.clip(points[:, 1], 0.0, float(rows))], axis=1)


def _objects(les: Lesion, rows: int, cols: int) -> dict[tuple[int, str], tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]]:
    """This lesion's graphics keyed by (slice k, layer)."""
    out: dict[tuple[int, str], tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]] = defaultdict(lambda: ([], []))
    tid, tuid = (les.tracking_id or les.tracking_uid, les.tracking_uid) if les.tracking_uid else (None, None)
    x1, y1, x2, y2 = (float(v) for v in np.asarray(les.bbox_px, dtype=np.float64)[:4])
    rect = _clip_points(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]), rows, cols)
    out[(les.key_k, "LESIONS")][0].append(hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=rect,
        units=hd.pr.AnnotationUnitsValues.PIXEL, tracking_id=tid, tracking_uid=tuid))
    m = les.measurements
    for axis, layer in ((m.long_axis, "LONG_AXIS"), (m.short_axis, "SHORT_AXIS")) if m is not None else ():
        line = _clip_points(np.array([axis.start, axis.end], dtype=np.float64), rows, cols)
        out[(axis.k, layer)][0].append(hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=line,
            units=hd.pr.AnnotationUnitsValues.PIXEL, tracking_id=tid, tracking_uid=tuid))
    text = _label(les)
    label_k = m.long_axis.k if m is not None else les.key_k
    bb = _text_box(text, (float(rect[0, 0]), float(rect[0, 1]), float(rect[2, 0]), float(rect[2, 1])), rows, cols)
    out[(label_k, "LESIONS")][1].append(hd.pr.TextObject(
        text_value=text, units=hd.pr.AnnotationUnitsValues.PIXEL, bounding_box=bb, tracking_id=tid,
        tracking_uid=tuid))
    return out


def _rescale(ds: Dataset) -> tuple[str, str, str]:
    return (str(ds.get("RescaleSlope", "")), str(ds.get("RescaleIntercept", "")), str(ds.get("RescaleType", "")))


def _referenced(sources: Sequence[Dataset], annotated: set[int]) -> list[Dataset]:
    """All images of the series, or only the annotated ones when their Modality LUTs differ."""
    every = unique(sources)
    if len({_rescale(ds) for ds in every}) <= 1:
        return every
    shown = unique([sources[k] for k in sorted(annotated)])
    if len({_rescale(ds) for ds in shown}) > 1:
        raise OutputError("the annotated slices have different rescale slope/intercept: one presentation "
                          "state cannot window them all")
    return shown


def _modality_lut(volume: Volume, referenced: Sequence[Dataset]) -> hd.ModalityLUTTransformation | None:
    """The (shared, checked by :func:`_referenced`) rescale of single-frame images, given to highdicom
    so it need not inspect every image again (it would: ~0.2 s for 300 slices). None lets
    highdicom take it from the images (multi-frame functional groups, or no rescale at all)."""
    first = referenced[0]
    if is_multiframe(first) or "RescaleSlope" not in first or "RescaleIntercept" not in first:
        return None
    rescale_type = str(first.get("RescaleType", "") or "") or ("HU" if is_ct(volume) else "US")
    return hd.ModalityLUTTransformation(rescale_intercept=float(first.RescaleIntercept),
                                        rescale_slope=float(first.RescaleSlope), rescale_type=rescale_type)


def build_gsps(result: StudyResult, series: SeriesResult, sources: Sequence[Dataset]) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The GSPS object (not written) — see the module docstring."""
    vol = series.volume
    if any(int(ds.get("SamplesPerPixel", 1)) != 1 for ds in unique(sources)):
        raise OutputError("a grayscale presentation state cannot annotate colour images")
    rows, cols = vol.pixels.shape[1], vol.pixels.shape[2]
    graphics: dict[tuple[int, str], tuple[list[hd.pr.GraphicObject], list[hd.pr.TextObject]]] = defaultdict(lambda: ([], []))
    for les in series.lesions:
        for key, (g, t) in _objects(les, rows, cols).items():
            graphics[key][0].extend(g)
            graphics[key][1].extend(t)
    layers = {name: hd.pr.GraphicLayer(layer_name=name, order=order, description=desc,
                                       display_color=hd.color.CIELabColor.from_rgb(*rgb))
              for name, (order, desc, rgb) in LAYERS.items()}
    annotations = []
    for (k, layer), (g, t) in sorted(graphics.items()):
        ds, frame = slice_ref(vol, sources, k)
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[ds], graphic_layer=layers[layer], referenced_frame_number=frame,
            graphic_objects=g or None, text_objects=t or None))
    used = sorted({layer for _, layer in graphics}, key=lambda n: LAYERS[n][0])

    referenced = _referenced(sources, {k for k, _ in graphics})
    referenced[0] = with_patient_study(referenced[0])
    voi = None
    if is_ct(vol):
        # one-item lists: highdicom 0.28 stores a plain-string explanation letter by letter
        voi = [hd.pr.SoftcopyVOILUTTransformation(window_center=[LUNG_WINDOW[0]], window_width=[LUNG_WINDOW[1]],
                                                  window_explanation=["LUNG"])]
    plut = None
    if str(referenced[0].get("PhotometricInterpretation", "")) == "MONOCHROME1":
        plut = hd.PresentationLUTTransformation(presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE)
    ps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=referenced,
        content_label="LESIONLENS",
        content_description=f"{MANUFACTURER} findings {NOT_CLINICAL}",
        graphic_annotations=annotations,
        graphic_layers=[layers[n] for n in used],
        modality_lut_transformation=_modality_lut(vol, referenced),
        voi_lut_transformations=voi,
        presentation_lut_transformation=plut,
        **output_attributes("PR", "GSPS", result, series, sources),
    )
    _body_part(ps, vol, sources[0])
    return ps


_BODY_PARTS = {"CT": "CHEST", "CR": "CHEST", "DX": "CHEST", "MG": "BREAST"}


def _body_part(ps: Dataset, volume: Volume, source: Dataset) -> None:
    """General Series Body Part Examined / Laterality (highdicom does not set them for presentation
    states): Laterality is type 2C — required for paired body parts and whenever the body part is
    not known — so give the body part (the source's, else what the pipeline reads: chest/breast)
    and the laterality when known (empty only when it truly is not)."""
    part = str(source.get("BodyPartExamined", "") or "") or _BODY_PARTS.get(volume.modality.upper(), "")
    if part:
        ps.BodyPartExamined = part
    lat = str(source.get("Laterality", "") or "")
    if not lat and str(source.get("ImageLaterality", "")) in ("R", "L"):
        lat = str(source.ImageLaterality)
    if lat:
        ps.Laterality = lat
    elif not part or part in ("BREAST", "LUNG", "KIDNEY", "EYE", "HAND", "FOOT", "KNEE", "SHOULDER", "HIP"):
        ps.Laterality = ""  # paired (or unknown) body part with unknown side: type 2 → empty


__all__ = ["LUNG_WINDOW", "build_gsps", "write_gsps"]

"""Predictions → the findings document (``lesionlens.findings/1``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lesionlens.dicom.types import Problem, Volume
from lesionlens.engine.predict import Predictor, SeriesPrediction, class_name
from lesionlens.reports.findings import Finding, SeriesFindings, StudyFindings, findings_document


def _pixel_spacing(volume: Volume) -> tuple[float, float] | None:
    """(row, column) mm when the source stated it (DICOM PixelSpacing/ImagerPixelSpacing, NIfTI...)."""
    ps = volume.metadata.get("pixel_spacing") if volume.metadata else None
    if ps:
        return float(ps[0]), float(ps[1])  # type: ignore[index]
    if volume.has_patient_geometry:
        s = volume.spacing_mm
        return float(s[1]), float(s[2])
    return None


def series_findings(pred: SeriesPrediction, predictor: Predictor) -> SeriesFindings:
    vol = pred.volume
    out: list[Finding] = []
    for c in pred.candidates:
        k = c.key_k
        out.append(Finding(
            label=class_name(predictor.meta, c.label), confidence=c.confidence,
            bbox_px=[float(v) for v in c.bbox_px], center_mm=[float(v) for v in c.center_mm],
            diameter_mm=c.diameter_mm,
            sop_instance_uid=vol.sop_instance_uids[k] if k < len(vol.sop_instance_uids) else "",
            frame=vol.frame_numbers[k] if k < len(vol.frame_numbers) else 1,
            extra={"slice_index": k, "slices": [min(c.slices), max(c.slices)], "z_extent_mm": round(c.z_extent_mm, 2),
                   "drift_mm": round(c.drift_mm, 2),
                   **{k: round(v, 4) for k, v in c.stage_scores().items()}},
        ))
    ps = _pixel_spacing(vol)
    for k, det in enumerate(pred.images):
        for box, score, label in zip(det.boxes, det.scores, det.labels):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            diameter = float(np.sqrt(w * ps[1] * h * ps[0])) if ps else None
            centre = None
            if vol.has_patient_geometry:
                idx = np.array([k, (box[1] + box[3]) / 2 - 0.5, (box[0] + box[2]) / 2 - 0.5])
                centre = [float(v) for v in vol.index_to_lps(idx)]
            out.append(Finding(
                label=class_name(predictor.meta, int(label)), confidence=float(score),
                bbox_px=[float(v) for v in box], center_mm=centre, diameter_mm=diameter,
                sop_instance_uid=vol.sop_instance_uids[k] if k < len(vol.sop_instance_uids) else "",
                frame=vol.frame_numbers[k] if k < len(vol.frame_numbers) else 1,
                extra={"size_px": [round(w, 2), round(h, 2)]},
            ))
    out.sort(key=lambda f: -f.confidence)
    return SeriesFindings(vol.series_instance_uid, vol.modality, out,
                          extra={"timings_s": {k: round(v, 4) for k, v in pred.timings.items()},
                                 "shape": list(vol.pixels.shape),
                                 "warnings": [str(p) for p in vol.problems]})


def findings_from_predictions(preds: list[SeriesPrediction], predictor: Predictor,
                              problems: list[Problem] | None = None) -> dict[str, Any]:
    """Group series by study and build the document (model identity included)."""
    studies: dict[str, StudyFindings] = {}
    for p in preds:
        uid = p.volume.study_instance_uid
        studies.setdefault(uid, StudyFindings(uid)).series.append(series_findings(p, predictor))
    extra = {"problems": [pr.to_dict() for pr in (problems or [])],
             "notice": predictor.meta.notice or "Computer-aided detection output; not a diagnosis."}
    return findings_document(predictor.identity, list(studies.values()), extra=extra)

"""The main job: a study on disk → measured, located, filtered lesions with clinical suggestions.

``Detector.load("default").detect(path)`` (or ``lesionlens detect PATH --out DIR``) runs, per study:

1. read — scan the input, select the series the model is made for (the lung model takes CT;
   a study without one is reported with the reason, never a traceback);
2. detect — the model over every slice in batches, per-slice boxes merged into 3D candidates
   (:class:`lesionlens.engine.predict.Predictor`); on 2D images, tiled boxes;
3. measure — lung mask, per-lesion segmentation, long/short axis, volume, HU, type;
4. filter — false-positive reduction, each filter's verdict and reason kept on the candidate;
5. locate and suggest — side/zone/depth, Lung-RADS v2022 and Fleischner 2017 suggestions.

Each stage is timed into ``StudyResult.timings`` (seconds). Writing the outputs (findings
JSON, key images, report, DICOM SR/SEG/GSPS) is :func:`lesionlens.reports.bundle.write_outputs`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lesionlens.dicom.select import SelectionRules
from lesionlens.dicom.study import read_study
from lesionlens.dicom.types import Catalog, Problem, StudyRecord, Volume
from lesionlens.dicom.write import uid_from_seed
from lesionlens.engine.predict import Backend, PredictConfig, Predictor, class_name
from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.pipeline.aggregate import Candidate3D
from lesionlens.pipeline.clinical import suggest
from lesionlens.pipeline.fpr import FPRConfig, apply_filters
from lesionlens.pipeline.lung import lung_info, lung_mask
from lesionlens.pipeline.measure import MeasureConfig, locate, measure_box_2d, measure_lesion
from lesionlens.pipeline.types import Lesion, SeriesResult, StudyResult

Risk = Literal["low", "high"]


@dataclass
class DetectConfig:
    """Settings of the study pipeline (the detector's own are in ``predict``).

    max_candidates: candidates measured and filtered per series, most confident first (with
      ``conf`` near 0 the detector may return thousands; the rest are reported unmeasured).
    risk: patient risk for the Fleischner suggestion.
    workers: processes for reading the study ("auto": every CPU for large inputs).
    """

    predict: PredictConfig = field(default_factory=lambda: PredictConfig(conf=0.5))
    fpr: FPRConfig = field(default_factory=FPRConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    max_candidates: int = 100
    risk: Risk = "low"
    workers: int | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.max_candidates < 1:
            raise ConfigError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.risk not in ("low", "high"):
            raise ConfigError(f"risk must be 'low' or 'high', got {self.risk!r}")


_PATIENT_KEYS = ("PatientSex", "PatientAge")
_STUDY_KEYS = ("AccessionNumber", "InstitutionName", "Manufacturer", "ManufacturerModelName")


class Detector:
    """The study pipeline around one model package. Load once; call :meth:`detect` per input."""

    def __init__(self, model: str | Path = "default", *, backend: Backend = "onnx", device: str = "cpu",
                 threads: int | None = None, config: DetectConfig | None = None):
        self.config = config or DetectConfig()
        self.predictor = Predictor(model, backend=backend, device=device, threads=threads,
                                   config=self.config.predict)
        self.meta = self.predictor.meta

    @classmethod
    def load(cls, model: str | Path = "default", **kwargs: Any) -> Detector:
        return cls(model, **kwargs)

    @property
    def is_ct_model(self) -> bool:
        return self.meta.input.kind == "ct-hu"

    def selection_rules(self) -> SelectionRules:
        """The lung model takes CT volumes only; 2D models take projection images — DERIVED ones
        too: For-Presentation DX/MG images are processed and usually say ``DERIVED\\PRIMARY``."""
        if self.is_ct_model:
            return SelectionRules(modalities=("CT",))
        return SelectionRules(modalities=("DX", "CR", "MG", "DR", "RF", "OT", "SC"), allow_secondary=True,
                              allow_derived=True)

    # ------------------------------------------------------------------------------------
    def detect(self, inputs: str | Path | list[str | Path]) -> list[StudyResult]:
        """Every study found in ``inputs`` → one StudyResult each (status says what happened)."""
        t0 = time.perf_counter()
        read = read_study([str(p) for p in inputs] if isinstance(inputs, list) else str(inputs),
                          rules=self.selection_rules(), workers=self.config.workers)
        t_read = time.perf_counter() - t0
        by_study: dict[str, list[Volume]] = defaultdict(list)
        for v in read.volumes:
            by_study[v.study_instance_uid].append(v)
        results = []
        studies = read.catalog.studies
        if not studies:
            res = StudyResult(study_instance_uid="", status="no-series", model=dict(self.predictor.identity),
                              problems=list(read.problems), timings={"read": t_read})
            res.messages.append("no DICOM image was found in the input" + _skipped_summary(read.catalog))
            return [res]
        for st in studies:
            res = self._new_result(st, read.problems)
            res.timings["read"] = t_read / len(studies)
            vols = by_study.get(st.study_instance_uid, [])
            if not vols:
                res.status = "no-series"
                res.messages.append(self._no_series_message(st))
            for v in vols:
                try:
                    res.series.append(self._series(v, res))
                except LesionLensError as exc:
                    res.status = "partial"
                    res.problems.append(Problem.from_error(exc))
                    res.messages.append(f"series {v.series_instance_uid}: {exc}")
            if res.series and any(p.severity == "error" for p in res.problems) and res.status == "ok":
                res.status = "partial"
            t1 = time.perf_counter()
            res.suggestions = suggest(res, risk=self.config.risk) if self.is_ct_model and res.series else []
            res.timings["clinical"] = time.perf_counter() - t1
            results.append(res)
        return results

    def _new_result(self, st: StudyRecord, problems: list[Problem]) -> StudyResult:
        uids = {se.series_instance_uid for se in st.series}
        srcs = {i.source for se in st.series for i in se.instances}
        mine = [p for p in problems if p.path is None or p.path in srcs or any(u in p.message for u in uids)]
        patient = {"PatientName": st.patient_name, "PatientID": st.patient_id}
        study = {"StudyDate": st.date, "StudyDescription": st.description}
        return StudyResult(study_instance_uid=st.study_instance_uid,
                           patient={k: v for k, v in patient.items() if v},
                           study={k: v for k, v in study.items() if v},
                           model=dict(self.predictor.identity), problems=mine)

    def _no_series_message(self, st: StudyRecord) -> str:
        what = "a CT series" if self.is_ct_model else "a projection image (DX, CR, MG)"
        found = "; ".join(f"{se.modality or '?'} series {se.series_number or ''} "
                          f"'{se.description}': {se.reason or 'not selected'}".replace("  ", " ")
                          for se in st.series) or "no image series"
        return f"nothing to analyse: model '{self.meta.name}' needs {what}. Found: {found}"

    # ------------------------------------------------------------------------------------
    def _series(self, volume: Volume, res: StudyResult) -> SeriesResult:
        for key in _PATIENT_KEYS:
            if volume.metadata.get(key):
                res.patient.setdefault(key, str(volume.metadata[key]))
        for key in _STUDY_KEYS:
            if volume.metadata.get(key):
                res.study.setdefault(key, str(volume.metadata[key]))
        if volume.pixels.ndim != 3:
            raise ConfigError(f"colour images ({volume.modality}) are not supported by model '{self.meta.name}'")
        if self.is_ct_model:
            return self._ct_series(volume)
        return self._image_series(volume)

    def _ct_series(self, volume: Volume) -> SeriesResult:
        cfg = self.config
        out = SeriesResult(volume=volume, warnings=[str(p) for p in volume.problems])
        if not volume.is_volumetric:
            out.warnings.append("the series has no consistent 3D geometry; sizes and locations are approximate")
        slices, timings = self.predictor.predict_slices(volume)
        cands = self.predictor.candidates(volume, slices, timings)  # linked (and rescored), >= conf, sorted
        lesions = [self._lesion(volume, c, i) for i, c in enumerate(cands[: cfg.max_candidates])]
        if len(cands) > cfg.max_candidates:
            out.warnings.append(f"{len(cands) - cfg.max_candidates} low-confidence candidates were not measured "
                                f"(max_candidates={cfg.max_candidates})")

        t0 = time.perf_counter()
        mask = lung_mask(volume)
        info = lung_info(mask, volume)
        out.lung_mask = mask
        timings["lung_mask"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for les in lesions:
            les.measurements = measure_lesion(volume, les, config=cfg.measure, lung=mask)
        timings["measure"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        apply_filters(volume, lesions, mask, cfg.fpr)
        timings["filter"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._split(out, lesions, volume)
        for les in out.lesions:
            les.location = locate(volume, les, info)
        timings["locate"] = time.perf_counter() - t0
        out.timings = dict(timings)
        return out

    def _image_series(self, volume: Volume) -> SeriesResult:
        pred = self.predictor.predict_image(volume)
        out = SeriesResult(volume=volume, warnings=[str(p) for p in volume.problems], timings=dict(pred.timings))
        t0 = time.perf_counter()
        lesions: list[Lesion] = []
        for k, det in enumerate(pred.images):
            for box, score, label in zip(det.boxes, det.scores, det.labels):
                les = Lesion(tracking_id="", tracking_uid="", label=class_name(self.meta, int(label)),
                             confidence=float(score), key_k=k, bbox_px=np.asarray(box, np.float32), slices=(k, k))
                if volume.has_patient_geometry:
                    idx = np.array([k, (box[1] + box[3]) / 2 - 0.5, (box[0] + box[2]) / 2 - 0.5])
                    les.center_mm = volume.index_to_lps(idx)
                les.measurements = measure_box_2d(volume, k, les.bbox_px)
                les.diameter_mm = les.measurements.mean_diameter_mm
                lesions.append(les)
        lesions.sort(key=lambda x: -x.confidence)
        if len(lesions) > self.config.max_candidates:
            out.warnings.append(f"{len(lesions) - self.config.max_candidates} low-confidence candidates were not "
                                f"reported (max_candidates={self.config.max_candidates})")
        self._split(out, lesions[: self.config.max_candidates], volume)
        out.timings["measure"] = time.perf_counter() - t0
        return out

    def _lesion(self, volume: Volume, c: Candidate3D, i: int) -> Lesion:
        return Lesion(tracking_id="", tracking_uid="", label=class_name(self.meta, c.label),
                      confidence=float(c.confidence), key_k=int(c.key_k), bbox_px=np.asarray(c.bbox_px, np.float32),
                      slices=(min(c.slices), max(c.slices)), center_mm=np.asarray(c.center_mm, np.float64),
                      diameter_mm=float(c.diameter_mm),
                      extra={"drift_mm": float(c.drift_mm), "z_extent_mm": float(c.z_extent_mm),
                             "n_boxes": int(c.n_boxes), **c.stage_scores()})

    def _split(self, out: SeriesResult, lesions: list[Lesion], volume: Volume) -> None:
        """Kept lesions get L1, L2, … (by confidence) and a stable tracking UID; rejected ones R1, …"""
        sha = self.predictor.identity["sha256"]
        for les in lesions:
            (out.lesions if les.kept else out.rejected).append(les)
        for prefix, group in (("L", out.lesions), ("R", out.rejected)):
            for n, les in enumerate(group, 1):
                les.tracking_id = f"{prefix}{n}"
                les.tracking_uid = str(uid_from_seed(volume.series_instance_uid, sha, les.key_k,
                                                     *np.round(les.bbox_px, 1).tolist()))


def _skipped_summary(catalog: Catalog) -> str:
    if not catalog.skipped:
        return ""
    reasons = sorted({s.reason for s in catalog.skipped if s.reason})
    return f" ({len(catalog.skipped)} file(s) skipped: {'; '.join(reasons[:3])})"


__all__ = ["DetectConfig", "Detector"]

"""2D detection metrics: COCO-style matching, PR curves, AP/mAP, P/R/F1, size buckets, localisation.

Boxes are the one LesionLens convention: ``(N, 4) float32, xyxy, pixels`` in the original image
grid (edges, not centres). Matching is done per image and per class, greedily by descending score
(stable order, as pycocotools): each prediction takes the still-unmatched truth box of its class
with the highest IoU, if that IoU is ``>= iou_threshold``. AP uses COCO's 101-point interpolation
of the monotone precision envelope; mAP@0.5:0.95 averages AP over IoU 0.50, 0.55, ..., 0.95.
Multi-class AP is the mean over classes that have truth boxes.

Sizes: with a pixel spacing (``(row, col)`` mm, DICOM PixelSpacing order) a truth box's size is
its longest side in mm (or an explicit diameter), bucketed ≤6, 6–10, 10–20, >20 mm; without one
it is its pixel area, bucketed like COCO: small ``< 32²``, medium ``32²–96²``, large ``>= 96²``.

Undefined ratios (precision with no predictions, recall with no truth) are ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lesionlens.data.annotations import ImageAnnotation
from lesionlens.errors import ConfigError, DataFormatError
from lesionlens.metrics.froc import SIZE_BUCKETS_MM, BucketRecall, recall_by_size

COCO_IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)
RECALL_POINTS: np.ndarray = np.linspace(0.0, 1.0, 101)
AREA_BUCKETS_PX: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, float("inf")),
)
"""Pixel-area buckets ``(name, low, high)``: ``low <= area < high``."""


def _boxes(value: Any, name: str, image_id: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataFormatError(
            f"image {image_id!r}: {name} must be (N, 4) xyxy pixels, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise DataFormatError(f"image {image_id!r}: {name} holds non-finite coordinates")
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise DataFormatError(f"image {image_id!r}: {name} has x2 < x1 or y2 < y1 (need xyxy)")
    return arr


def _vec(value: Any, n: int, name: str, image_id: str, dtype: type = np.float64) -> np.ndarray:
    arr: np.ndarray = np.asarray(value, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise DataFormatError(f"image {image_id!r}: {name} has {arr.shape[0]} values for {n} boxes")
    if dtype is np.float64 and not np.all(np.isfinite(arr)):
        raise DataFormatError(f"image {image_id!r}: {name} holds non-finite values")
    return arr


@dataclass
class DetectionSample:
    """Predictions and truth of one image.

    pred_boxes: (M, 4) xyxy px; pred_scores: (M,) float; pred_labels: (M,) int64 class indices.
    gt_boxes: (N, 4) xyxy px; gt_labels: (N,) int64.
    spacing_mm: ``(row, col)`` mm per pixel, or None when unknown.
    gt_diameters_mm: (N,) lesion diameters to bucket by; None → longest box side × spacing.
    """

    pred_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    pred_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pred_labels: np.ndarray | None = None
    gt_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    gt_labels: np.ndarray | None = None
    spacing_mm: tuple[float, float] | None = None
    gt_diameters_mm: np.ndarray | None = None
    image_id: str = ""

    def __post_init__(self) -> None:
        iid = self.image_id
        self.pred_boxes = _boxes(self.pred_boxes, "pred_boxes", iid)
        m = len(self.pred_boxes)
        self.pred_scores = _vec(self.pred_scores, m, "pred_scores", iid)
        self.pred_labels = _vec(
            np.zeros(m) if self.pred_labels is None else self.pred_labels,
            m,
            "pred_labels",
            iid,
            np.int64,
        )
        self.gt_boxes = _boxes(self.gt_boxes, "gt_boxes", iid)
        n = len(self.gt_boxes)
        self.gt_labels = _vec(
            np.zeros(n) if self.gt_labels is None else self.gt_labels, n, "gt_labels", iid, np.int64
        )
        if self.spacing_mm is not None:
            sp = tuple(float(v) for v in self.spacing_mm)
            if len(sp) != 2 or not all(np.isfinite(v) and v > 0 for v in sp):
                raise DataFormatError(
                    f"image {iid!r}: spacing_mm must be (row, col) mm > 0, got {sp}"
                )
            self.spacing_mm = (sp[0], sp[1])
        if self.gt_diameters_mm is not None:
            self.gt_diameters_mm = _vec(self.gt_diameters_mm, n, "gt_diameters_mm", iid)

    @classmethod
    def from_annotation(
        cls,
        truth: ImageAnnotation,
        pred_boxes: np.ndarray,
        pred_scores: np.ndarray,
        pred_labels: np.ndarray | None = None,
        spacing_mm: tuple[float, float] | None = None,
        gt_diameters_mm: np.ndarray | None = None,
    ) -> DetectionSample:
        """Pair a truth :class:`ImageAnnotation` with the detector's output for that image."""
        return cls(
            pred_boxes=pred_boxes,
            pred_scores=pred_scores,
            pred_labels=pred_labels,
            gt_boxes=truth.boxes,
            gt_labels=truth.labels,
            spacing_mm=spacing_mm,
            gt_diameters_mm=gt_diameters_mm,
            image_id=truth.image,
        )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a: (N, 4)`` and ``b: (M, 4)`` (xyxy px) → ``(N, M)`` float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    h = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _check_iou(iou_threshold: float) -> None:
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold: must be in (0, 1], got {iou_threshold}")


def match_image(
    sample: DetectionSample, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching of one image.

    Returns ``pred_to_gt: (M,) int64`` (index of the matched truth box, -1 for a false positive)
    and ``gt_to_pred: (N,) int64`` (index of the matching prediction, -1 for a miss).
    """
    _check_iou(iou_threshold)
    m, n = len(sample.pred_boxes), len(sample.gt_boxes)
    pred_to_gt = np.full(m, -1, np.int64)
    gt_to_pred = np.full(n, -1, np.int64)
    if m == 0 or n == 0:
        return pred_to_gt, gt_to_pred
    iou = box_iou(sample.pred_boxes, sample.gt_boxes)
    assert sample.pred_labels is not None and sample.gt_labels is not None
    iou[sample.pred_labels[:, None] != sample.gt_labels[None, :]] = -1.0
    for p in np.argsort(-sample.pred_scores, kind="mergesort"):
        row = np.where(gt_to_pred < 0, iou[p], -1.0)
        g = int(np.argmax(row))
        if row[g] >= iou_threshold:
            pred_to_gt[p], gt_to_pred[g] = g, p
    return pred_to_gt, gt_to_pred


@dataclass
class PRCurve:
    """Precision/recall over descending score thresholds for one class and IoU threshold.

    precision, recall, scores: (K,) one entry per prediction in descending score order.
    """

    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    n_gt: int
    label: int | None = None
    iou_threshold: float = 0.5


def _all_labels(samples: Sequence[DetectionSample]) -> list[int]:
    labs: set[int] = set()
    for s in samples:
        assert s.gt_labels is not None
        labs.update(int(v) for v in s.gt_labels)
    return sorted(labs)


def pr_curve(
    samples: Sequence[DetectionSample], iou_threshold: float = 0.5, label: int | None = None
) -> PRCurve:
    """PR curve of class ``label`` (None: every class pooled, still matched per class)."""
    _check_iou(iou_threshold)
    scores, tp = [], []
    n_gt = 0
    for s in samples:
        assert s.pred_labels is not None and s.gt_labels is not None
        pred_to_gt, _ = match_image(s, iou_threshold)
        keep = np.ones(len(s.pred_scores), bool) if label is None else s.pred_labels == label
        order = np.argsort(-s.pred_scores[keep], kind="mergesort")
        scores.append(s.pred_scores[keep][order])
        tp.append(pred_to_gt[keep][order] >= 0)
        n_gt += len(s.gt_labels) if label is None else int(np.sum(s.gt_labels == label))
    sc = np.concatenate(scores) if scores else np.zeros(0)
    is_tp = np.concatenate(tp) if tp else np.zeros(0, bool)
    order = np.argsort(-sc, kind="mergesort")
    sc, is_tp = sc[order], is_tp[order]
    ctp, cfp = np.cumsum(is_tp), np.cumsum(~is_tp)
    recall = ctp / n_gt if n_gt else np.full(sc.shape, np.nan)
    precision = ctp / np.maximum(ctp + cfp, 1)
    return PRCurve(precision, recall, sc, n_gt, label, iou_threshold)


def ap_from_curve(curve: PRCurve) -> float:
    """COCO 101-point interpolated AP of one curve (``nan`` when the class has no truth)."""
    if curve.n_gt == 0:
        return float("nan")
    if curve.precision.size == 0:
        return 0.0
    env = np.maximum.accumulate(curve.precision[::-1])[::-1]
    idx = np.searchsorted(curve.recall, RECALL_POINTS, side="left")
    q = np.where(idx < env.size, env[np.minimum(idx, env.size - 1)], 0.0)
    return float(q.mean())


def average_precision(
    samples: Sequence[DetectionSample],
    iou_threshold: float = 0.5,
    labels: Sequence[int] | None = None,
) -> float:
    """AP at one IoU threshold, the mean over ``labels`` (default: classes with truth boxes).

    Returns ``nan`` when no listed class has a truth box.
    """
    _check_iou(iou_threshold)
    labs = _all_labels(samples) if labels is None else list(labels)
    aps = [ap_from_curve(pr_curve(samples, iou_threshold, lab)) for lab in labs]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def mean_average_precision(
    samples: Sequence[DetectionSample],
    iou_thresholds: Sequence[float] | np.ndarray = COCO_IOU_THRESHOLDS,
    labels: Sequence[int] | None = None,
) -> float:
    """mAP: AP averaged over ``iou_thresholds`` (default 0.50:0.05:0.95, i.e. mAP@0.5:0.95)."""
    ths = [float(t) for t in iou_thresholds]
    if not ths:
        raise ConfigError("iou_thresholds: empty")
    for t in ths:
        _check_iou(t)
    aps = [average_precision(samples, t, labels) for t in ths]
    return float(np.mean(aps))


@dataclass
class DetectionReport:
    """Detector quality at one confidence threshold (IoU ``iou_threshold`` for TP).

    recall_by_size: buckets in mm for truth boxes with a known size in mm, else pixel-area buckets
    (both lists are present; a bucket list is empty when no box falls in that system).
    loc_error_px / loc_error_mm: mean centre distance over true positives (mm only over images
    with a spacing); ``nan`` when there are none.
    """

    score_threshold: float
    iou_threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap50: float
    map50_95: float
    recall_by_size_mm: list[BucketRecall]
    recall_by_size_px: list[BucketRecall]
    loc_error_px: float
    loc_error_mm: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``nan`` becomes ``None``."""

        def f(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        def buckets(bs: list[BucketRecall]) -> dict[str, dict[str, Any]]:
            return {
                b.name: {"detected": b.n_detected, "total": b.n_total, "recall": f(b.recall)}
                for b in bs
            }

        return {
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": f(self.precision),
            "recall": f(self.recall),
            "f1": f(self.f1),
            "ap50": f(self.ap50),
            "map50_95": f(self.map50_95),
            "recall_by_size_mm": buckets(self.recall_by_size_mm),
            "recall_by_size_px": buckets(self.recall_by_size_px),
            "loc_error_px": f(self.loc_error_px),
            "loc_error_mm": f(self.loc_error_mm),
        }


def _centres(b: np.ndarray) -> np.ndarray:
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)


def evaluate_detections(
    samples: Sequence[DetectionSample],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    mm_buckets: Sequence[tuple[str, float, float]] = SIZE_BUCKETS_MM,
    px_buckets: Sequence[tuple[str, float, float]] = AREA_BUCKETS_PX,
) -> DetectionReport:
    """All 2D metrics in one report: P/R/F1 at ``score_threshold``, AP@0.5, mAP@0.5:0.95,
    recall by size and mean localisation error (predictions with ``score >= score_threshold``).
    """
    if not np.isfinite(score_threshold):
        raise ConfigError(f"score_threshold: must be finite, got {score_threshold}")
    _check_iou(iou_threshold)
    tp = fp = fn = 0
    diam_mm, hit_mm, area_px, hit_px = [], [], [], []
    err_px: list[np.ndarray] = []
    err_mm: list[np.ndarray] = []
    for s in samples:
        keep = s.pred_scores >= score_threshold
        assert s.pred_labels is not None
        kept = DetectionSample(
            s.pred_boxes[keep],
            s.pred_scores[keep],
            s.pred_labels[keep],
            s.gt_boxes,
            s.gt_labels,
            s.spacing_mm,
            s.gt_diameters_mm,
            s.image_id,
        )
        pred_to_gt, gt_to_pred = match_image(kept, iou_threshold)
        tp += int(np.sum(pred_to_gt >= 0))
        fp += int(np.sum(pred_to_gt < 0))
        fn += int(np.sum(gt_to_pred < 0))
        found = gt_to_pred >= 0
        g = s.gt_boxes
        if s.gt_diameters_mm is not None or s.spacing_mm is not None:
            if s.gt_diameters_mm is not None:
                d = s.gt_diameters_mm
            else:
                assert s.spacing_mm is not None
                d = np.maximum(
                    (g[:, 2] - g[:, 0]) * s.spacing_mm[1], (g[:, 3] - g[:, 1]) * s.spacing_mm[0]
                )
            diam_mm.append(d)
            hit_mm.append(found)
        else:
            area_px.append((g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]))
            hit_px.append(found)
        if found.any():
            delta = _centres(kept.pred_boxes[gt_to_pred[found]]) - _centres(g[found])
            err_px.append(np.hypot(delta[:, 0], delta[:, 1]))
            if s.spacing_mm is not None:
                err_mm.append(
                    np.hypot(delta[:, 0] * s.spacing_mm[1], delta[:, 1] * s.spacing_mm[0])
                )

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0)

    by_mm = recall_by_size(cat(diam_mm), cat(hit_mm).astype(bool), mm_buckets) if diam_mm else []
    by_px: list[BucketRecall] = []
    if area_px:
        areas, hits = cat(area_px), cat(hit_px).astype(bool)
        for name, low, high in px_buckets:
            inside = (areas >= low) & (areas < high)
            by_px.append(BucketRecall(name, int(np.sum(hits & inside)), int(np.sum(inside))))
    e_px, e_mm = cat(err_px), cat(err_mm)
    return DetectionReport(
        score_threshold=float(score_threshold),
        iou_threshold=float(iou_threshold),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=tp / (tp + fp) if tp + fp else float("nan"),
        recall=tp / (tp + fn) if tp + fn else float("nan"),
        f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        ap50=average_precision(samples, 0.5),
        map50_95=mean_average_precision(samples),
        recall_by_size_mm=by_mm,
        recall_by_size_px=by_px,
        loc_error_px=float(e_px.mean()) if e_px.size else float("nan"),
        loc_error_mm=float(e_mm.mean()) if e_mm.size else float("nan"),
    )

"""Evaluation metrics of the detector.

* :mod:`~lesionlens.metrics.froc`: 3D FROC and CPM under the LUNA16 rules (points in LPS mm),
  recall by nodule size at an FP rate, per-scan sensitivity/specificity.
* :mod:`~lesionlens.metrics.detection`: 2D COCO-style matching of ``(N, 4) xyxy`` pixel boxes,
  PR curves, AP@0.5, mAP@0.5:0.95, P/R/F1 at a threshold, recall by size, localisation error.
* :mod:`~lesionlens.metrics.plots`: FROC and PR curve PNGs (``plot_froc``, ``plot_pr``; matplotlib
  is imported on first use).
"""

from typing import Any

from lesionlens.metrics.detection import (
    AREA_BUCKETS_PX,
    COCO_IOU_THRESHOLDS,
    DetectionReport,
    DetectionSample,
    PRCurve,
    ap_from_curve,
    average_precision,
    box_iou,
    evaluate_detections,
    match_image,
    mean_average_precision,
    pr_curve,
)
from lesionlens.metrics.froc import (
    LUNA16_FP_RATES,
    SIZE_BUCKETS_MM,
    BucketRecall,
    FROCResult,
    FROCScan,
    ScanLevelResult,
    ScanMatch,
    compute_froc,
    froc_recall_by_scan_group,
    froc_recall_by_size,
    match_scan,
    recall_by_size,
    scan_level_metrics,
    threshold_at_fp_rate,
)


def __getattr__(name: str) -> Any:
    # The plot helpers import matplotlib; load it only when a plot is asked for.
    if name in ("plot_froc", "plot_pr"):
        from lesionlens.metrics import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AREA_BUCKETS_PX",
    "COCO_IOU_THRESHOLDS",
    "LUNA16_FP_RATES",
    "SIZE_BUCKETS_MM",
    "BucketRecall",
    "DetectionReport",
    "DetectionSample",
    "FROCResult",
    "FROCScan",
    "PRCurve",
    "ScanLevelResult",
    "ScanMatch",
    "ap_from_curve",
    "average_precision",
    "box_iou",
    "compute_froc",
    "froc_recall_by_scan_group",
    "evaluate_detections",
    "froc_recall_by_size",
    "match_image",
    "match_scan",
    "mean_average_precision",
    "plot_froc",
    "plot_pr",
    "pr_curve",
    "recall_by_size",
    "scan_level_metrics",
    "threshold_at_fp_rate",
]

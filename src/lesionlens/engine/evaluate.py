"""Evaluation of a model package on held-out data → ``metrics.json`` and plots.

* CT studies with 3D truth (our DICOM + truth.json folders, or a LUNA16 root): FROC and CPM under
  the LUNA16 rules with a bootstrap CI, recall by nodule size at 1 and 4 FP/scan, per-scan
  sensitivity/specificity, mean localisation error in mm, latency per slice and peak memory.
* A 2D detection dataset (YOLO ``dataset.yaml``): precision/recall/F1 at the operating
  threshold, AP@0.5, mAP@0.5:0.95, recall by size, localisation error.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionlens.engine.predict import Predictor
from lesionlens.errors import ConfigError, DataFormatError
from lesionlens.metrics import (
    FROCResult,
    FROCScan,
    compute_froc,
    froc_recall_by_scan_group,
    froc_recall_by_size,
    plot_froc,
    scan_level_metrics,
    threshold_at_fp_rate,
)


@dataclass
class EvalResult:
    """metrics: what ``metrics.json`` holds; froc: the CT FROC result itself (per-nodule best
    scores, diameters, scans — for further breakdowns), None for 2D evaluations."""

    metrics: dict[str, Any]
    out_dir: Path
    froc: FROCResult | None = None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not np.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def _buckets(buckets: list[Any]) -> list[dict[str, Any]]:
    return [{"name": b.name, "n_detected": b.n_detected, "n_total": b.n_total, "recall": b.recall} for b in buckets]


def evaluate_ct(predictor: Predictor, data: str | Path, out_dir: str | Path, *, operating_fp: float = 1.0,
                n_bootstrap: int = 1000, limit: int | None = None) -> EvalResult:
    """FROC/CPM over every CT case under ``data`` (truth.json folders, or LUNA16 with annotations.csv)."""
    from lesionlens.data.trainset import discover_ct_cases, luna16_cases

    root = Path(data)
    refs = luna16_cases(root) if (root / "annotations.csv").is_file() else discover_ct_cases(root)
    if limit:
        refs = refs[:limit]
    if not refs:
        raise DataFormatError("no CT cases with truth found (truth.json or annotations.csv)", path=root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scans: list[FROCScan] = []
    per_scan: list[dict[str, Any]] = []
    slices, infer_s, total_s = 0, 0.0, 0.0
    for ref in refs:
        case = ref.load()
        t0 = time.perf_counter()
        pred = predictor.predict_volume(case.volume)
        total_s += time.perf_counter() - t0
        slices += case.volume.pixels.shape[0]
        infer_s += pred.timings.get("inference", 0.0)
        cands = pred.candidates
        pts = np.array([c.center_mm for c in cands], np.float64).reshape(-1, 3)
        scores = np.array([c.confidence for c in cands], np.float64)
        scans.append(FROCScan.from_truth(case.truth, pts, scores))
        per_scan.append({"series_instance_uid": case.truth.series_instance_uid, "n_truth": len(case.truth.lesions),
                         "n_candidates": len(cands), "slices": int(case.volume.pixels.shape[0]),
                         "slice_spacing_mm": round(float(case.volume.spacing_mm[0]), 3)})
    res = compute_froc(scans, n_bootstrap=n_bootstrap)
    thr = threshold_at_fp_rate(res, operating_fp)
    scan_level = scan_level_metrics(scans, thr) if np.isfinite(thr) else None
    loc = [float(d) for d in getattr(res, "nodule_hit_distance_mm", []) if d is not None and np.isfinite(d)]
    metrics: dict[str, Any] = {
        "kind": "ct-froc",
        "model": predictor.identity,
        "n_scans": len(scans),
        "froc": res.to_dict(),
        "cpm": res.cpm,
        "cpm_ci": list(res.cpm_ci) if res.cpm_ci is not None else None,
        "operating_point": {"fp_per_scan": operating_fp, "threshold": thr if np.isfinite(thr) else None},
        "recall_by_size_at_1fp": _buckets(froc_recall_by_size(res, 1.0)),
        "recall_by_size_at_4fp": _buckets(froc_recall_by_size(res, 4.0)),
        "recall_by_slice_spacing_at_4fp": [
            {"slice_spacing_mm": g, "buckets": _buckets(b)}
            for g, b in sorted(froc_recall_by_scan_group(res, 4.0, [s["slice_spacing_mm"] for s in per_scan]).items())],
        "scan_level": ({"sensitivity": scan_level.sensitivity, "specificity": scan_level.specificity}
                       if scan_level is not None else None),
        "localization_error_mm": float(np.mean(loc)) if loc else None,
        "latency": {"ms_per_slice_inference": 1000 * infer_s / max(slices, 1),
                    "ms_per_slice_total": 1000 * total_s / max(slices, 1), "backend": predictor.backend},
        "peak_rss_mb": _peak_rss_mb(),
        "scans": per_scan,
    }
    metrics = _clean(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_froc(res, out / "froc.png", title=f"FROC — CPM {res.cpm:.3f}")
    return EvalResult(metrics, out, res)


def evaluate_2d(predictor: Predictor, data: str | Path, out_dir: str | Path, *, split: str = "val",
                conf: float = 0.25) -> EvalResult:
    """AP/mAP/P/R/F1 on one split of a YOLO-layout dataset."""
    from lesionlens.engine.dataset import DetectionSamples, read_dataset_yaml
    from lesionlens.metrics import DetectionSample, evaluate_detections, plot_pr, pr_curve

    info = read_dataset_yaml(data)
    if split not in info.splits:
        raise ConfigError(f"split {split!r} not in the dataset (has {sorted(info.splits)})")
    ds = DetectionSamples(info, split, predictor.meta.input, crop=None)
    samples = []
    t0 = time.perf_counter()
    for i in range(len(ds)):
        img, boxes, labels = ds.raw(i)
        det = predictor.detect_image(img)
        samples.append(DetectionSample(pred_boxes=det.boxes, pred_scores=det.scores, pred_labels=det.labels,
                                       gt_boxes=boxes, gt_labels=labels, image_id=str(ds.images[i].name)))
    elapsed = time.perf_counter() - t0
    rep = evaluate_detections(samples, score_threshold=conf)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = _clean({"kind": "2d-detection", "model": predictor.identity, "split": split, **rep.to_dict(),
                      "latency": {"ms_per_image": 1000 * elapsed / max(len(ds), 1)}, "peak_rss_mb": _peak_rss_mb()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_pr(pr_curve(samples, 0.5), out / "pr_curve.png", title="PR @ IoU 0.5")
    return EvalResult(metrics, out)

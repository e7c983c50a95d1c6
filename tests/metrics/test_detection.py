"""2D detection metrics against hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesionlens.data.annotations import ImageAnnotation
from lesionlens.errors import ConfigError, DataFormatError
from lesionlens.metrics.detection import (
    DetectionSample,
    average_precision,
    box_iou,
    evaluate_detections,
    match_image,
    mean_average_precision,
    pr_curve,
)

G1 = [0, 0, 10, 10]
G2 = [50, 50, 70, 70]
FAR = [200, 200, 210, 210]


def test_box_iou_by_hand() -> None:
    iou = box_iou(
        np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    )
    # overlap 5x10=50, union 150 → 1/3; identical → 1; disjoint → 0
    assert iou.shape == (1, 3) and iou[0] == pytest.approx([1 / 3, 1.0, 0.0])


def test_greedy_matching_highest_score_first() -> None:
    # Two predictions on one truth box: the higher score wins even though its IoU is lower.
    s = DetectionSample(
        pred_boxes=[[0, 0, 10, 8], [0, 0, 10, 10]], pred_scores=[0.9, 0.5], gt_boxes=[G1]
    )
    p2g, g2p = match_image(s, 0.5)
    assert p2g.tolist() == [0, -1] and g2p.tolist() == [0]


def test_matching_respects_class() -> None:
    s = DetectionSample(
        pred_boxes=[G1], pred_scores=[0.9], pred_labels=[1], gt_boxes=[G1], gt_labels=[0]
    )
    p2g, _ = match_image(s)
    assert p2g.tolist() == [-1]


def test_perfect_detector_ap_is_one() -> None:
    s = DetectionSample(pred_boxes=[G1, G2], pred_scores=[0.9, 0.8], gt_boxes=[G1, G2])
    assert average_precision([s]) == 1.0
    assert mean_average_precision([s]) == 1.0


def test_hand_worked_ap() -> None:
    # .9 TP, .8 FP, .7 TP over 2 truths: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # Envelope 1, 2/3, 2/3. Recall points 0.00..0.50 (51) → 1; 0.51..1.00 (50) → 2/3.
    s = DetectionSample(pred_boxes=[G1, FAR, G2], pred_scores=[0.9, 0.8, 0.7], gt_boxes=[G1, G2])
    c = pr_curve([s])
    assert c.precision == pytest.approx([1, 0.5, 2 / 3])
    assert c.recall == pytest.approx([0.5, 0.5, 1])
    assert average_precision([s]) == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_ap_pools_images_and_misses_count() -> None:
    # Image 1: .6 TP; image 2: .9 FP and a missed truth. Sorted: .9 FP, .6 TP → P 0, 1/2; R 0, 1/2.
    # Envelope 1/2, 1/2; recall points 0..0.5 (51) → 1/2, the rest → 0.
    a = DetectionSample(pred_boxes=[G1], pred_scores=[0.6], gt_boxes=[G1])
    b = DetectionSample(pred_boxes=[FAR], pred_scores=[0.9], gt_boxes=[G2])
    assert average_precision([a, b]) == pytest.approx(51 * 0.5 / 101)


def test_map_over_iou_thresholds() -> None:
    # IoU 0.825 → TP at 0.50..0.80 (7 of 10 thresholds) → mAP 0.7
    s = DetectionSample(pred_boxes=[[0, 0, 10, 8.25]], pred_scores=[0.9], gt_boxes=[G1])
    assert box_iou(s.pred_boxes, s.gt_boxes)[0, 0] == pytest.approx(0.825)
    assert mean_average_precision([s]) == pytest.approx(0.7)


def test_multiclass_ap_is_mean_over_classes_with_truth() -> None:
    s = DetectionSample(
        pred_boxes=[G1, G2, FAR],
        pred_scores=[0.9, 0.9, 0.9],
        pred_labels=[0, 2, 5],  # class 5 has no truth: left out of the mean
        gt_boxes=[G1, G2],
        gt_labels=[0, 1],  # class 1 never predicted → AP 0
    )
    assert average_precision([s]) == pytest.approx(0.5)


def test_empty_cases() -> None:
    assert math.isnan(average_precision([DetectionSample()]))
    only_gt = DetectionSample(gt_boxes=[G1])
    assert average_precision([only_gt]) == 0.0
    rep = evaluate_detections([only_gt], score_threshold=0.5)
    assert (rep.tp, rep.fp, rep.fn) == (0, 0, 1)
    assert math.isnan(rep.precision) and rep.recall == 0.0 and rep.f1 == 0.0
    assert math.isnan(rep.loc_error_px)


def test_prf1_at_threshold() -> None:
    # Scores .9 TP, .8 FP, .7 TP, .4 FP; truths 3. At .5: TP 2, FP 1, FN 1.
    s = DetectionSample(
        pred_boxes=[G1, FAR, G2, [300, 300, 320, 320]],
        pred_scores=[0.9, 0.8, 0.7, 0.4],
        gt_boxes=[G1, G2, [100, 100, 140, 140]],
    )
    r = evaluate_detections([s], score_threshold=0.5)
    assert (r.tp, r.fp, r.fn) == (2, 1, 1)
    assert r.precision == pytest.approx(2 / 3) and r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 / 3)
    r = evaluate_detections([s], score_threshold=0.85)
    assert (r.tp, r.fp, r.fn) == (1, 0, 2) and r.f1 == pytest.approx(2 / 4)


def test_localisation_error_px_and_mm() -> None:
    # Centre offset 3 columns, 4 rows → 5 px; spacing (row 0.5, col 2.0) → hypot(6, 2) mm.
    s = DetectionSample(
        pred_boxes=[[3, 4, 103, 104]],
        pred_scores=[0.9],
        gt_boxes=[[0, 0, 100, 100]],
        spacing_mm=(0.5, 2.0),
    )
    r = evaluate_detections([s])
    assert r.tp == 1
    assert r.loc_error_px == pytest.approx(5.0)
    assert r.loc_error_mm == pytest.approx(math.hypot(6.0, 2.0))
    no_sp = DetectionSample(
        pred_boxes=[[3, 4, 103, 104]], pred_scores=[0.9], gt_boxes=[[0, 0, 100, 100]]
    )
    r = evaluate_detections([s, no_sp])
    assert r.loc_error_px == pytest.approx(5.0) and r.loc_error_mm == pytest.approx(
        math.hypot(6.0, 2.0)
    )


def test_recall_by_size_pixel_buckets() -> None:
    small, medium, large = [0, 0, 20, 20], [100, 100, 150, 150], [300, 300, 400, 400]
    edge = [500, 500, 532, 532]  # area exactly 32² → medium (COCO: small is < 32²)
    s = DetectionSample(
        pred_boxes=[medium, edge], pred_scores=[0.9, 0.9], gt_boxes=[small, medium, large, edge]
    )
    r = evaluate_detections([s])
    got = {b.name: (b.n_detected, b.n_total) for b in r.recall_by_size_px}
    assert got == {"small": (0, 1), "medium": (2, 2), "large": (0, 1)}
    assert r.recall_by_size_mm == []


def test_recall_by_size_mm_buckets() -> None:
    # spacing 0.5 mm: boxes 10, 16, 30, 50 px long side → 5, 8, 15, 25 mm
    boxes = [[0, 0, 10, 4], [100, 100, 116, 110], [200, 200, 230, 230], [300, 300, 320, 350]]
    s = DetectionSample(
        pred_boxes=boxes[1:3], pred_scores=[0.9, 0.9], gt_boxes=boxes, spacing_mm=(0.5, 0.5)
    )
    r = evaluate_detections([s])
    got = {b.name: (b.n_detected, b.n_total) for b in r.recall_by_size_mm}
    assert got == {"<=6mm": (0, 1), "6-10mm": (1, 1), "10-20mm": (1, 1), ">20mm": (0, 1)}
    # explicit diameters win over box size
    s2 = DetectionSample(pred_boxes=[], pred_scores=[], gt_boxes=boxes[:1], gt_diameters_mm=[21.0])
    got = {b.name: b.n_total for b in evaluate_detections([s2]).recall_by_size_mm}
    assert got[">20mm"] == 1


def test_from_annotation() -> None:
    ann = ImageAnnotation("img.png", 64, 64, boxes=[G1], labels=[0])
    s = DetectionSample.from_annotation(ann, np.array([G1], np.float32), np.array([0.5]))
    assert s.image_id == "img.png" and average_precision([s]) == 1.0
    assert evaluate_detections([s]).to_dict()["precision"] == 1.0


def test_bad_arguments() -> None:
    with pytest.raises(DataFormatError, match="pred_boxes"):
        DetectionSample(pred_boxes=[[0, 0, 1]], pred_scores=[1.0])
    with pytest.raises(DataFormatError, match="gt_boxes"):
        DetectionSample(gt_boxes=[[10, 0, 0, 10]])  # x2 < x1
    with pytest.raises(DataFormatError, match="pred_scores"):
        DetectionSample(pred_boxes=[G1], pred_scores=[])
    with pytest.raises(DataFormatError, match="spacing_mm"):
        DetectionSample(spacing_mm=(0.0, 1.0))
    with pytest.raises(ConfigError, match="iou_threshold"):
        average_precision([DetectionSample()], iou_threshold=0.0)

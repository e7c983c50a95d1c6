"""FROC/CPM under the LUNA16 rules, checked against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lesionlens.data.annotations import Lesion3D, StudyTruth
from lesionlens.errors import ConfigError, DataFormatError
from lesionlens.metrics.froc import (
    FROCScan,
    compute_froc,
    froc_recall_by_scan_group,
    froc_recall_by_size,
    match_scan,
    scan_level_metrics,
    threshold_at_fp_rate,
)


def three_scans() -> list[FROCScan]:
    """Scan A: nodules n1 (d 10 at origin), n2 (d 6 at x=30), one excluded finding (d 8).
    Scan B: nodule n3 (d 20 at origin). Scan C: no nodules.

    Candidates (score): A: c1 .9 hits n1; c2 .6 hits n1 again (double → ignored);
    c3 .8 inside the excluded finding (ignored); c4 .7 far away (FP); c5 .3 hits n2 (2.9 mm < 3).
    B: c6 .5 at 15 mm from n3 (radius 10 → FP); c7 .4 hits n3. C: c8 .95 and c9 .2 (FPs).
    """
    a = FROCScan(
        candidates_mm=[[1, 0, 0], [0, 2, 0], [0, 51, 0], [100, 0, 0], [30, 2.9, 0]],
        scores=[0.9, 0.6, 0.8, 0.7, 0.3],
        nodules_mm=[[0, 0, 0], [30, 0, 0]],
        nodule_diameters_mm=[10, 6],
        excluded_mm=[[0, 50, 0]],
        excluded_diameters_mm=[8],
        scan_id="A",
    )
    b = FROCScan(
        candidates_mm=[[0, 0, 15], [0, 9, 0]],
        scores=[0.5, 0.4],
        nodules_mm=[[0, 0, 0]],
        nodule_diameters_mm=[20],
        scan_id="B",
    )
    c = FROCScan(candidates_mm=[[5, 5, 5], [9, 9, 9]], scores=[0.95, 0.2], scan_id="C")
    return [a, b, c]


def test_match_scan_outcomes() -> None:
    m = match_scan(three_scans()[0])
    assert m.candidate_outcome == ["tp", "ignored-double", "ignored-excluded", "fp", "tp"]
    assert m.nodule_best.tolist() == [0, 4]
    assert m.nodule_best_score.tolist() == [0.9, 0.3]
    assert m.nodule_hit_distance_mm == pytest.approx([1.0, 2.9])


def test_froc_curve_and_cpm_by_hand() -> None:
    # Entries by score: .95 FP(C), .9 TP(n1), .7 FP, .5 FP, .4 TP(n3), .3 TP(n2), .2 FP.
    # 3 scans, 3 nodules → points (FP/scan, sens):
    # (0,0) (1/3,0) (1/3,1/3) (2/3,1/3) (1,1/3) (1,2/3) (1,1) (4/3,1)
    r = compute_froc(three_scans(), n_bootstrap=0)
    third = 1 / 3
    assert r.fps_per_scan == pytest.approx([0, third, third, 2 * third, 1, 1, 1, 4 * third])
    assert r.sensitivities == pytest.approx([0, 0, third, third, third, 2 * third, 1, 1])
    assert r.thresholds.tolist() == [math.inf, 0.95, 0.9, 0.7, 0.5, 0.4, 0.3, 0.2]
    # 1/8, 1/4: on the flat start → 0; 1/2: between (1/3,1/3) and (2/3,1/3) → 1/3;
    # 1: np.interp takes the last point at FP 1 → 1; 2, 4, 8: past the end → 1.
    expected = {0.125: 0.0, 0.25: 0.0, 0.5: third, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    assert r.operating_points == pytest.approx(expected)
    assert r.cpm == pytest.approx((third + 4) / 7)
    assert (r.n_scans, r.n_nodules, r.n_candidates) == (3, 3, 9)
    assert (r.n_false_positives, r.n_ignored_double, r.n_ignored_excluded) == (4, 1, 1)
    assert math.isnan(r.ci_low[1.0]) and math.isnan(r.cpm_ci[0])


def test_interpolation_between_fp_levels() -> None:
    # One scan, 2 nodules (d 10 at x=0 and x=100), 2 scans in all; candidates:
    # FP .9, TP .8, FP .7, FP .6, TP .5.
    # Points (FP/scan, sens): (0,0) (.5,0) (.5,.5) (1,.5) (1.5,.5) (1.5,1)
    s1 = FROCScan(
        candidates_mm=[[50, 0, 0], [0, 0, 0], [60, 0, 0], [70, 0, 0], [100, 0, 0]],
        scores=[0.9, 0.8, 0.7, 0.6, 0.5],
        nodules_mm=[[0, 0, 0], [100, 0, 0]],
        nodule_diameters_mm=[10, 10],
    )
    r = compute_froc([s1, FROCScan()], n_bootstrap=0)
    # 1/8 → 0; 1/4 → 0; 1/2 → .5 (last point at .5); 1 → .5; 2, 4, 8 → 1
    assert list(r.operating_points.values()) == pytest.approx([0, 0, 0.5, 0.5, 1, 1, 1])
    assert r.cpm == pytest.approx(4.0 / 7)


def test_candidate_inside_two_overlapping_nodules_hits_both() -> None:
    scan = FROCScan(
        candidates_mm=[[3, 0, 0]],
        scores=[0.8],
        nodules_mm=[[0, 0, 0], [6, 0, 0]],
        nodule_diameters_mm=[10, 10],
    )
    m = match_scan(scan)
    assert m.candidate_outcome == ["tp"]
    assert m.nodule_best.tolist() == [0, 0]
    r = compute_froc([scan], n_bootstrap=0)
    assert r.n_false_positives == 0
    assert all(v == 1.0 for v in r.operating_points.values()) and r.cpm == 1.0


def test_overlapping_nodules_best_hit_each() -> None:
    # c0 (.9) at x=-4 hits only nodule a; c1 (.8) at x=3 hits a and b → best for b; nothing ignored.
    scan = FROCScan(
        candidates_mm=[[-4, 0, 0], [3, 0, 0]],
        scores=[0.9, 0.8],
        nodules_mm=[[0, 0, 0], [6, 0, 0]],
        nodule_diameters_mm=[10, 10],
    )
    m = match_scan(scan)
    assert m.candidate_outcome == ["tp", "tp"]
    assert m.nodule_best_score.tolist() == [0.9, 0.8]


def test_boundary_is_strict_like_luna16() -> None:
    # Exactly on the radius (5 mm from the centre of a 10 mm nodule) is not a hit: a FP.
    scan = FROCScan(
        candidates_mm=[[5, 0, 0]], scores=[0.5], nodules_mm=[[0, 0, 0]], nodule_diameters_mm=[10]
    )
    assert match_scan(scan).candidate_outcome == ["fp"]


def test_double_hits_do_not_add_false_positives() -> None:
    scan = FROCScan(
        candidates_mm=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
        scores=[0.4, 0.9, 0.6, 0.1],
        nodules_mm=[[0, 0, 0]],
        nodule_diameters_mm=[8],
    )
    r = compute_froc([scan], n_bootstrap=0)
    assert r.n_false_positives == 0 and r.n_ignored_double == 3
    assert r.nodule_best_score.tolist() == [0.9]
    assert r.fps_per_scan.tolist() == [0, 0] and r.sensitivities.tolist() == [0, 1]


def test_excluded_unknown_diameter_reads_as_10mm() -> None:
    # Excluded finding with diameter -1 → 10 mm: a candidate 4.9 mm away is ignored, 5.1 mm is a FP.
    scan = FROCScan(
        candidates_mm=[[4.9, 0, 0], [0, 5.1, 0]],
        scores=[0.5, 0.6],
        excluded_mm=[[0, 0, 0]],
        excluded_diameters_mm=[-1],
    )
    assert match_scan(scan).candidate_outcome == ["ignored-excluded", "fp"]


def test_from_truth_splits_excluded() -> None:
    truth = StudyTruth(
        "1.2.3",
        lesions=[Lesion3D((0, 0, 0), 10.0), Lesion3D((50, 0, 0), 8.0, excluded=True)],
    )
    scan = FROCScan.from_truth(truth, np.array([[51.0, 0, 0], [1.0, 0, 0]]), np.array([0.7, 0.6]))
    assert scan.scan_id == "1.2.3" and len(scan.nodules_mm) == 1 and len(scan.excluded_mm) == 1
    assert match_scan(scan).candidate_outcome == ["ignored-excluded", "tp"]


def test_no_candidates() -> None:
    scan = FROCScan(nodules_mm=[[0, 0, 0]], nodule_diameters_mm=[5])
    r = compute_froc([scan, FROCScan()], n_bootstrap=20)
    assert r.cpm == 0.0 and r.n_candidates == 0
    assert r.cpm_ci == (0.0, 0.0)
    assert math.isnan(r.nodule_best_score[0])


def test_no_nodules_gives_nan_sensitivity() -> None:
    r = compute_froc([FROCScan(candidates_mm=[[0, 0, 0]], scores=[0.3])], n_bootstrap=10)
    assert r.n_nodules == 0 and r.n_false_positives == 1
    assert math.isnan(r.cpm) and all(math.isnan(v) for v in r.operating_points.values())
    assert math.isnan(r.cpm_ci[0]) and r.fps_per_scan.tolist() == [0.0, 1.0]


def test_only_true_positives() -> None:
    scan = FROCScan(
        candidates_mm=[[0, 0, 0]],
        scores=[0.9],
        nodules_mm=[[0, 0, 0], [40, 0, 0]],
        nodule_diameters_mm=[6, 6],
    )
    r = compute_froc([scan], n_bootstrap=0)
    assert r.cpm == 0.5  # one of two found, no FPs at all


def test_bootstrap_deterministic_and_contains_estimate() -> None:
    scans = three_scans() * 4  # 12 scans
    r1 = compute_froc(scans, n_bootstrap=300, seed=7)
    r2 = compute_froc(scans, n_bootstrap=300, seed=7)
    r3 = compute_froc(scans, n_bootstrap=300, seed=8)
    assert r1.cpm_ci == r2.cpm_ci and r1.ci_low == r2.ci_low and r1.ci_high == r2.ci_high
    assert r1.cpm_ci != r3.cpm_ci or r1.ci_low != r3.ci_low
    assert r1.cpm == pytest.approx((1 / 3 + 4) / 7)  # same curve as three_scans(): rates unchanged
    assert r1.cpm_ci[0] <= r1.cpm <= r1.cpm_ci[1]
    assert r1.cpm_ci[0] < r1.cpm_ci[1]
    for k, v in r1.operating_points.items():
        assert r1.ci_low[k] <= v <= r1.ci_high[k]
    assert np.all(r1.band_low <= r1.band_high)


def test_bootstrap_of_identical_scans_is_degenerate() -> None:
    # Every resample of identical scans has the same curve, so the CI collapses on the estimate.
    scan = FROCScan(
        candidates_mm=[[0, 0, 0], [50, 0, 0]],
        scores=[0.5, 0.9],
        nodules_mm=[[0, 0, 0]],
        nodule_diameters_mm=[10],
    )
    r = compute_froc([scan] * 5, n_bootstrap=50, seed=1)
    # points (0,0) (1,0) (1,1): sens 0 below 1 FP/scan, 1 from 1 on → CPM 4/7
    assert r.cpm == pytest.approx(4 / 7)
    assert r.cpm_ci == pytest.approx((4 / 7, 4 / 7))
    assert r.ci_low == pytest.approx(r.operating_points) and r.ci_high == pytest.approx(
        r.operating_points
    )


def test_recall_by_size_at_fp_rate() -> None:
    r = compute_froc(three_scans(), n_bootstrap=0)
    # At 1/2 FP/scan the real operating point is the last with FP rate <= 1/2: threshold .9
    assert threshold_at_fp_rate(r, 0.5) == 0.9
    assert threshold_at_fp_rate(r, 0.1) == math.inf
    rec = {b.name: (b.n_detected, b.n_total) for b in froc_recall_by_size(r, 0.5)}
    # n2 6 mm → "<=6mm"; n1 10 mm → "6-10mm" (10 is in (6, 10]); n3 20 mm → "10-20mm"
    assert rec == {"<=6mm": (0, 1), "6-10mm": (1, 1), "10-20mm": (0, 1), ">20mm": (0, 0)}
    rec1 = froc_recall_by_size(r, 1.0)  # threshold .3: all three found
    assert [b.recall for b in rec1[:3]] == [1.0, 1.0, 1.0] and math.isnan(rec1[3].recall)


def test_recall_by_scan_group_at_fp_rate() -> None:
    """Scans A and C are "thin", B "thick": at 1/2 FP/scan (threshold .9) A's n1 (10 mm) is found,
    its n2 (6 mm) not, B's n3 (20 mm) not; C has no nodule and adds nothing to "thin"."""
    r = compute_froc(three_scans(), n_bootstrap=0)
    by = froc_recall_by_scan_group(r, 0.5, ["thin", "thick", "thin"])
    assert list(by) == ["thin", "thick"]
    assert {b.name: (b.n_detected, b.n_total) for b in by["thin"]} == {"<=6mm": (0, 1), ">6mm": (1, 1)}
    assert {b.name: (b.n_detected, b.n_total) for b in by["thick"]} == {"<=6mm": (0, 0), ">6mm": (0, 1)}
    at1 = froc_recall_by_scan_group(r, 1.0, ["a", "b", "c"])  # threshold .3: all found; "c" has no nodule
    assert list(at1) == ["a", "b"] and [b.n_detected for b in at1["a"]] == [1, 1]
    with pytest.raises(DataFormatError, match="scan_groups"):
        froc_recall_by_scan_group(r, 1.0, ["a", "b"])


def test_scan_level_metrics() -> None:
    scans = three_scans()
    # threshold .92: only C (no nodules) has a candidate ≥ .92 → tp 0, fn 2, fp 1, tn 0
    s = scan_level_metrics(scans, 0.92)
    assert (s.tp, s.fn, s.fp, s.tn) == (0, 2, 1, 0)
    assert s.sensitivity == 0.0 and s.specificity == 0.0
    s = scan_level_metrics(scans, 0.96)
    assert (s.tp, s.fn, s.fp, s.tn) == (0, 2, 0, 1) and s.specificity == 1.0
    s = scan_level_metrics(scans, 0.45)  # A (.9) and B (.5) positive; C (.95) too
    assert (s.tp, s.fn, s.fp, s.tn) == (2, 0, 1, 0) and s.sensitivity == 1.0


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(DataFormatError, match="candidates_mm"):
        FROCScan(candidates_mm=[[0, 0]], scores=[1.0])
    with pytest.raises(DataFormatError, match="scores"):
        FROCScan(candidates_mm=[[0, 0, 0]], scores=[1.0, 2.0])
    with pytest.raises(DataFormatError, match="nodule_diameters_mm"):
        FROCScan(nodules_mm=[[0, 0, 0]], nodule_diameters_mm=[0])
    with pytest.raises(DataFormatError, match="scans"):
        compute_froc([])
    with pytest.raises(ConfigError, match="n_bootstrap"):
        compute_froc([FROCScan()], n_bootstrap=-1)
    with pytest.raises(ConfigError, match="confidence"):
        compute_froc([FROCScan()], confidence=1.0)
    with pytest.raises(ConfigError, match="fp_rates"):
        compute_froc([FROCScan()], fp_rates=[0.0, 1.0])

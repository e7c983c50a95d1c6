from __future__ import annotations

import numpy as np
import pytest

from lesionlens.errors import ConfigError
from lesionlens.pipeline.aggregate import AggregateConfig, SliceDetections, aggregate, link_tracks

# index (k, r, c) -> LPS: 2 mm slices along +z, 0.7 mm pixels, origin (-100, -120, 50)
AFFINE = np.array(
    [[0, 0, 0.7, -100.0], [0, 0.7, 0, -120.0], [2.0, 0, 0, 50.0], [0, 0, 0, 1]], dtype=np.float64
)


def _sphere_dets(center_kcr: tuple[float, float, float], radius_mm: float, score: float = 0.9) -> list[SliceDetections]:
    kc, rc, cc = center_kcr
    dets = []
    for k in range(40):
        dz = (k - kc) * 2.0
        if abs(dz) >= radius_mm:
            continue
        r_px = np.sqrt(radius_mm**2 - dz**2) / 0.7
        # box edges: pixel c spans [c, c+1) so the centre index c sits at box coordinate c + 0.5
        box = [cc + 0.5 - r_px, rc + 0.5 - r_px, cc + 0.5 + r_px, rc + 0.5 + r_px]
        dets.append(SliceDetections(k, np.array([box], np.float32), np.array([score], np.float32), np.array([0])))
    return dets


def _merge(*lists: list[SliceDetections]) -> list[SliceDetections]:
    by_k: dict[int, list[SliceDetections]] = {}
    for lst in lists:
        for d in lst:
            by_k.setdefault(d.k, []).append(d)
    return [
        SliceDetections(
            k,
            np.concatenate([d.boxes for d in ds]),
            np.concatenate([d.scores for d in ds]),
            np.concatenate([d.labels for d in ds]),
        )
        for k, ds in sorted(by_k.items())
    ]


def test_sphere_becomes_one_candidate_at_its_centre() -> None:
    dets = _sphere_dets((12.0, 100.0, 80.0), radius_mm=5.0)
    cands = aggregate(dets, AFFINE)
    assert len(cands) == 1
    c = cands[0]
    expected = AFFINE[:3, :3] @ np.array([12.0, 100.0, 80.0]) + AFFINE[:3, 3]
    np.testing.assert_allclose(c.center_mm, expected, atol=0.05)
    # largest cross-section is the equator: sqrt(w*h) of a circumscribed square of the 10 mm circle
    assert c.diameter_mm == pytest.approx(10.0, abs=0.1)
    assert c.drift_mm == pytest.approx(0.0, abs=1e-6)
    assert c.key_k == 12 and c.n_boxes == 5


def test_two_nodules_stay_apart_and_a_missed_slice_does_not_split() -> None:
    a = _sphere_dets((10.0, 50.0, 50.0), 6.0, score=0.8)
    b = _sphere_dets((11.0, 150.0, 150.0), 4.0, score=0.6)
    a = [d for d in a if d.k != 10]  # detector missed the middle slice of nodule a
    cands = aggregate(_merge(a, b), AFFINE)
    assert len(cands) == 2
    assert cands[0].confidence == pytest.approx(0.8) and cands[1].confidence == pytest.approx(0.6)
    assert sorted(cands[0].slices) == [8, 9, 11, 12]


def test_vessel_drifts_and_spans_many_slices() -> None:
    dets = []
    for k in range(0, 30):
        c = 60 + 2.0 * k  # moves 2 px per slice
        dets.append(SliceDetections(k, np.array([[c - 4, 90, c + 4, 98]], np.float32), np.array([0.5], np.float32), np.array([0])))
    cands = aggregate(dets, AFFINE)
    assert len(cands) == 1
    assert cands[0].z_extent_mm == pytest.approx(60.0)
    assert cands[0].drift_mm == pytest.approx(58 * 0.7, rel=1e-3)


def test_labels_are_not_linked_across_classes() -> None:
    d0 = SliceDetections(0, np.array([[10, 10, 20, 20]], np.float32), np.array([0.9], np.float32), np.array([0]))
    d1 = SliceDetections(1, np.array([[10, 10, 20, 20]], np.float32), np.array([0.9], np.float32), np.array([1]))
    assert len(link_tracks([d0, d1])) == 2


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="min_iou"):
        AggregateConfig(min_iou=2.0)

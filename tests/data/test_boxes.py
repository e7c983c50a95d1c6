"""Box conversions: round trips, YOLO normalisation, clipping, areas, IoU."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlens.data import boxes as B


def test_conversions_round_trip() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (20, 2))
    wh = rng.uniform(1, 50, (20, 2))
    xyxy = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    assert np.allclose(B.xywh_to_xyxy(B.xyxy_to_xywh(xyxy)), xyxy, atol=1e-4)
    assert np.allclose(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-4)
    assert np.allclose(B.yolo_to_xyxy(B.xyxy_to_yolo(xyxy, 200, 150), 200, 150), xyxy, atol=1e-3)


def test_known_values() -> None:
    box = [[10, 20, 30, 60]]
    assert B.xyxy_to_xywh(box).tolist() == [[10, 20, 20, 40]]
    assert B.xyxy_to_cxcywh(box).tolist() == [[20, 40, 20, 40]]
    assert B.xyxy_to_yolo(box, 100, 200).tolist() == [[0.2, 0.2, 0.2, 0.2]]
    assert B.box_area(box).tolist() == [800]
    assert B.box_area([[5, 5, 4, 9]]).tolist() == [0]  # inverted → 0


def test_empty_inputs_keep_shape() -> None:
    for fn in (B.xyxy_to_xywh, B.xywh_to_xyxy, B.xyxy_to_cxcywh, B.cxcywh_to_xyxy):
        assert fn(np.zeros((0, 4))).shape == (0, 4)
    assert B.box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_clip_and_outside() -> None:
    b = [[-5, -1, 50, 20], [10, 10, 20, 20], [0, 0, 100.4, 10], [5, 5, 5, 9]]
    assert B.clip_boxes(b, 40, 30).tolist()[0] == [0, 0, 40, 20]
    assert B.boxes_outside(b, 100, 30).tolist() == [True, False, False, True]
    assert B.boxes_outside([[0, 0, np.nan, 1]], 10, 10).tolist() == [True]


def test_iou_matrix() -> None:
    a = [[0, 0, 10, 10], [20, 20, 30, 30]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 101, 101]]
    iou = B.box_iou(a, b)
    assert iou.shape == (2, 3) and iou.dtype == np.float32
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[1].tolist() == [0, 0, 0]
    assert B.box_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]]).tolist() == [[0.0]]  # empty union


def test_bad_size_raises() -> None:
    with pytest.raises(ValueError):
        B.xyxy_to_yolo([[0, 0, 1, 1]], 0, 10)

from __future__ import annotations

import numpy as np
import pytest

from lesionlens.errors import ConfigError
from lesionlens.models.postprocess import Postprocessor, batched_nms, nms


def _pred(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, np.float32)[None]


def test_nms_hand_case() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 4]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # box 1 overlaps box 0 with IoU 90/110 = 0.82 -> suppressed; box 3 IoU 0.4 -> kept at 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 1, 2, 3]


def test_nms_is_class_wise() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert batched_nms(boxes, scores, np.array([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, np.array([1, 1]), 0.5).tolist() == [0]


def test_postprocessor_threshold_labels_and_order() -> None:
    pred = _pred([
        [0, 0, 10, 10, 0.9, 0.1],
        [1, 0, 11, 10, 0.2, 0.8],   # class 1, overlaps the first but other class -> kept
        [1, 1, 11, 11, 0.7, 0.0],   # class 0, suppressed by the first
        [40, 40, 50, 50, 0.1, 0.05],  # below conf
    ])
    (d,) = Postprocessor(conf=0.25, iou=0.5)(pred)
    assert d.labels.tolist() == [0, 1]
    assert d.scores.tolist() == pytest.approx([0.9, 0.8])
    assert d.boxes.dtype == np.float32 and d.boxes.shape == (2, 4)
    (d,) = Postprocessor(conf=0.25, iou=0.5, class_agnostic=True)(pred)
    assert d.labels.tolist() == [0]


def test_conf_zero_returns_the_low_tail_up_to_max_det() -> None:
    rng = np.random.default_rng(0)
    n = 500
    xy = rng.uniform(0, 1000, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + 4], 1)  # tiny, almost never overlapping
    scores = rng.uniform(0, 0.01, (n, 1)).astype(np.float32)
    pred = np.concatenate([boxes, scores], 1)[None]
    (d,) = Postprocessor(conf=0.0, iou=0.5, max_det=300)(pred)
    assert len(d) == 300
    assert np.all(np.diff(d.scores) <= 0) and d.scores.max() == pytest.approx(scores.max())
    (d,) = Postprocessor(conf=0.001, iou=0.5, max_det=1000)(pred)
    assert len(d) > 400


def test_batch_empty_and_clip() -> None:
    pred = np.zeros((2, 3, 5), np.float32)
    pred[1, 0] = [-5, -5, 10, 10, 0.9]
    out = Postprocessor(conf=0.5)(pred, image_size=(8, 6))
    assert len(out) == 2 and len(out[0]) == 0
    assert out[1].boxes.tolist() == [[0, 0, 6, 8]]


def test_accepts_torch() -> None:
    torch = pytest.importorskip("torch")
    (d,) = Postprocessor(conf=0.5)(torch.tensor([[[0.0, 0.0, 4.0, 4.0, 0.9]]]))
    assert len(d) == 1


@pytest.mark.parametrize("kwargs,field", [({"conf": 1.5}, "conf"), ({"iou": 0}, "iou"), ({"max_det": 0}, "max_det"), ({"max_det": 10, "pre_nms_topk": 5}, "pre_nms_topk")])
def test_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Postprocessor(**kwargs)
    with pytest.raises(ConfigError, match="pred"):
        Postprocessor()(np.zeros((1, 2, 3)))

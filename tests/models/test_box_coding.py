from __future__ import annotations

import math

import pytest
import torch

from lesionlens.models.boxes import bbox2dist, bbox_iou, box_iou_pairwise, dist2bbox, make_anchors


def test_make_anchors_centres_and_strides() -> None:
    pts, st = make_anchors([(2, 3), (1, 1)], [4, 8])
    assert pts.shape == (7, 2) and st.shape == (7, 1)
    assert pts[:3].tolist() == [[2, 2], [6, 2], [10, 2]]  # row 0, x first
    assert pts[3].tolist() == [2, 6]
    assert pts[6].tolist() == [4, 4] and st[6, 0] == 8


def test_distance_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(50, 2, generator=g) * 100
    d = torch.rand(3, 50, 4, generator=g) * 20
    boxes = dist2bbox(d, pts)
    assert torch.allclose(bbox2dist(boxes, pts), d, atol=1e-4)
    assert (boxes[..., 2:] >= boxes[..., :2]).all()


def test_bbox2dist_clamps() -> None:
    pts = torch.tensor([[10.0, 10.0]])
    boxes = torch.tensor([[12.0, 0.0, 40.0, 11.0]])  # point left of the box
    d = bbox2dist(boxes, pts, max_dist=15)
    assert d.tolist() == [[0.0, 10.0, 15.0, 1.0]]


def test_iou_hand_values() -> None:
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 0.0, 3.0, 2.0])
    assert bbox_iou(a, b).item() == pytest.approx(2 / 6, abs=1e-5)
    assert bbox_iou(a, a).item() == pytest.approx(1.0, abs=1e-5)
    # GIoU of disjoint boxes: IoU 0, enclosing 4x2 = 8, union 4 -> -0.5
    c = torch.tensor([2.0, 0.0, 4.0, 2.0])
    d = torch.tensor([0.0, 0.0, 1.0, 2.0])
    assert bbox_iou(d, torch.tensor([3.0, 0.0, 4.0, 2.0]), "giou").item() == pytest.approx(-0.5, abs=1e-5)
    # CIoU, same aspect ratio (v = 0): IoU - rho^2 / c^2; a vs b: rho = 1, c^2 = 3^2 + 2^2
    assert bbox_iou(a, b, "ciou").item() == pytest.approx(2 / 6 - 1 / 13, abs=1e-5)
    assert bbox_iou(a, c, "ciou").item() == pytest.approx(0 - 4 / 20, abs=1e-5)
    # CIoU aspect term: a 2x2 vs 4x2 box sharing the left-top corner
    e = torch.tensor([0.0, 0.0, 4.0, 2.0])
    v = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2
    iou = 0.5
    alpha = v / (v - iou + 1)
    assert bbox_iou(a, e, "ciou").item() == pytest.approx(iou - 1 / 20 - alpha * v, abs=1e-5)


def test_pairwise_matches_elementwise() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [0.0, 0.0, 2.0, 2.0], [9.0, 9.0, 10.0, 10.0]])
    m = box_iou_pairwise(a, b)
    assert m.shape == (2, 3)
    assert m[0, 0].item() == pytest.approx(1 / 3, abs=1e-5) and m[0, 1].item() == pytest.approx(1.0, abs=1e-5)
    assert m[1].abs().sum().item() == 0.0


def test_unknown_iou_kind() -> None:
    with pytest.raises(ValueError):
        bbox_iou(torch.zeros(4), torch.zeros(4), "diou")

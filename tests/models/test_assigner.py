from __future__ import annotations

import pytest
import torch

from lesionlens.errors import ConfigError
from lesionlens.models.assigner import TaskAlignedAssigner
from lesionlens.models.boxes import make_anchors


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    # one 8x8 level at stride 4 -> anchor centres at 2, 6, 10, ..., 30
    pts, _ = make_anchors([(8, 8)], [4])
    return pts, pts.shape[0]


def test_assigns_anchors_inside_box() -> None:
    pts, n = _grid()
    gt = torch.tensor([[[4.0, 4.0, 12.0, 12.0]]])  # contains centres x, y in {6, 10}
    pd_boxes = gt.expand(1, n, 4).clone()  # perfect boxes everywhere -> IoU 1
    scores = torch.full((1, n, 2), 0.5)
    a = TaskAlignedAssigner(topk=10)(scores, pd_boxes, pts, torch.tensor([[1]]), gt, torch.tensor([[True]]))
    expected = {(6.0, 6.0), (10.0, 6.0), (6.0, 10.0), (10.0, 10.0)}
    got = {tuple(pts[i].tolist()) for i in torch.nonzero(a.fg_mask[0]).flatten().tolist()}
    assert got == expected
    assert (a.labels[0][a.fg_mask[0]] == 1).all()
    assert torch.allclose(a.boxes[0][a.fg_mask[0]], gt[0, 0].expand(4, 4))
    # class-1 soft targets on positives (best = max IoU = 1), zero elsewhere and for class 0
    assert a.scores[0, :, 0].abs().sum() == 0
    assert a.scores[0][a.fg_mask[0], 1].max().item() == pytest.approx(1.0, abs=1e-4)
    assert a.scores[0][~a.fg_mask[0]].abs().sum() == 0


def test_topk_keeps_best_aligned() -> None:
    pts, n = _grid()
    gt = torch.tensor([[[4.0, 4.0, 12.0, 12.0]]])
    scores = torch.full((1, n, 1), 0.1)
    best = int(((pts - torch.tensor([10.0, 10.0])).abs().sum(1) == 0).nonzero())
    scores[0, best, 0] = 0.9
    pd_boxes = gt.expand(1, n, 4).clone()
    a = TaskAlignedAssigner(topk=1)(scores, pd_boxes, pts, torch.tensor([[0]]), gt, torch.tensor([[True]]))
    assert a.fg_mask.sum() == 1 and bool(a.fg_mask[0, best])


def test_tiny_box_gets_nearest_anchor() -> None:
    pts, n = _grid()
    gt = torch.tensor([[[6.5, 6.5, 7.5, 7.5]]])  # contains no centre; nearest is (6, 6)
    a = TaskAlignedAssigner()(torch.full((1, n, 1), 0.5), torch.zeros(1, n, 4), pts, torch.tensor([[0]]), gt, torch.tensor([[True]]))
    idx = torch.nonzero(a.fg_mask[0]).flatten().tolist()
    assert [tuple(pts[i].tolist()) for i in idx] == [(6.0, 6.0)]


def test_empty_and_padded_targets() -> None:
    pts, n = _grid()
    asg = TaskAlignedAssigner()
    a = asg(torch.rand(2, n, 1), torch.rand(2, n, 4), pts, torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert not a.fg_mask.any() and a.scores.sum() == 0
    # second image's row is padding: nothing assigned there
    gt = torch.tensor([[[4.0, 4.0, 12.0, 12.0]], [[4.0, 4.0, 12.0, 12.0]]])
    a = asg(torch.full((2, n, 1), 0.5), gt[:1].expand(2, n, 4).clone(), pts, torch.zeros(2, 1, dtype=torch.long), gt, torch.tensor([[True], [False]]))
    assert a.fg_mask[0].sum() == 4 and not a.fg_mask[1].any()


def test_overlapping_boxes_anchor_goes_to_higher_iou() -> None:
    pts, n = _grid()
    big = [0.0, 0.0, 32.0, 32.0]
    small = [4.0, 4.0, 12.0, 12.0]
    gt = torch.tensor([[big, small]])
    pd_boxes = torch.tensor(small).expand(1, n, 4).clone()  # predictions match the small box
    a = TaskAlignedAssigner(topk=64)(torch.full((1, n, 1), 0.5), pd_boxes, pts, torch.zeros(1, 2, dtype=torch.long), gt, torch.tensor([[True, True]]))
    inside_small = (pts[:, 0] > 4) & (pts[:, 0] < 12) & (pts[:, 1] > 4) & (pts[:, 1] < 12)
    assert (a.gt_index[0][inside_small] == 1).all()
    assert (a.gt_index[0][a.fg_mask[0] & ~inside_small] == 0).all()


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="topk"):
        TaskAlignedAssigner(topk=0)


def test_score_floor_lifts_the_best_anchor_of_a_poorly_overlapped_box() -> None:
    """A 4 px lesion predicted 2 px off has IoU ~0.33: with the default the best anchor's target is
    that IoU; with score_floor=1 it is 1 (the other anchors keep their relative alignment)."""
    pts, n = _grid()
    gt = torch.tensor([[[4.0, 4.0, 8.0, 8.0]]])
    pd = torch.tensor([6.0, 4.0, 10.0, 8.0]).expand(1, n, 4).clone()  # shifted 2 px: IoU = 1/3
    scores = torch.full((1, n, 1), 0.5)
    args = (scores, pd, pts, torch.tensor([[0]]), gt, torch.tensor([[True]]))
    plain = TaskAlignedAssigner()(*args)
    lifted = TaskAlignedAssigner(score_floor=1.0)(*args)
    half = TaskAlignedAssigner(score_floor=0.5)(*args)
    assert plain.fg_mask.equal(lifted.fg_mask) and plain.fg_mask.any()
    assert plain.scores.max().item() == pytest.approx(1 / 3, abs=1e-3)
    assert lifted.scores.max().item() == pytest.approx(1.0, abs=1e-4)
    assert half.scores.max().item() == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ConfigError, match="score_floor"):
        TaskAlignedAssigner(score_floor=1.5)

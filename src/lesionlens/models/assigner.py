"""Task-aligned label assignment (TOOD, Feng et al. 2021; as used by YOLOv8-style detectors).

For each ground-truth box, the candidate anchor points are those whose centre lies inside the
box; each candidate gets the alignment metric ``t = score^alpha * IoU^beta`` (score of the
box's class, IoU of the predicted box with the ground truth); the ``topk`` candidates by ``t``
become positives. An anchor claimed by several boxes goes to the box it overlaps most.
A box too small to contain any anchor centre gets its nearest anchor point (tiny lesions
must never be dropped silently). Soft class targets are ``t`` normalised per box so that the
best anchor of a box gets that box's best IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lesionlens.errors import ConfigError
from lesionlens.models.boxes import bbox_iou


@dataclass
class Assignment:
    """Per-anchor training targets for a batch (``N`` anchors, ``nc`` classes).

    labels: ``(B, N) int64`` class of the assigned box (0 where not foreground);
    boxes: ``(B, N, 4) float32`` xyxy pixels of the assigned box; scores: ``(B, N, nc)`` soft
    class targets; fg_mask: ``(B, N) bool``; gt_index: ``(B, N) int64`` index of the assigned box.
    """

    labels: Tensor
    boxes: Tensor
    scores: Tensor
    fg_mask: Tensor
    gt_index: Tensor


class TaskAlignedAssigner(nn.Module):
    """``TaskAlignedAssigner(topk=10, alpha=0.5, beta=6.0)``; see the module docstring."""

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9,
                 score_floor: float = 0.0):
        super().__init__()
        if topk < 1:
            raise ConfigError(f"topk: must be >= 1, got {topk}")
        if alpha < 0 or beta < 0:
            raise ConfigError(f"alpha/beta: must be >= 0, got {alpha}/{beta}")
        if not 0.0 <= score_floor <= 1.0:
            raise ConfigError(f"score_floor: must be in [0, 1], got {score_floor}")
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps
        self.score_floor = score_floor

    @torch.no_grad()
    def forward(
        self,
        pd_scores: Tensor,
        pd_boxes: Tensor,
        anchor_points: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        gt_mask: Tensor,
    ) -> Assignment:
        """Assign targets.

        pd_scores: ``(B, N, nc)`` predicted probabilities (after sigmoid); pd_boxes: ``(B, N, 4)``
        xyxy pixels; anchor_points: ``(N, 2)`` (x, y) pixels; gt_labels: ``(B, M) int64``;
        gt_boxes: ``(B, M, 4)`` xyxy pixels; gt_mask: ``(B, M) bool`` (padding rows False).
        """
        b, n, nc = pd_scores.shape
        m = gt_boxes.shape[1]
        dev = pd_scores.device
        if m == 0 or not bool(gt_mask.any()):
            return Assignment(
                torch.zeros(b, n, dtype=torch.long, device=dev),
                torch.zeros(b, n, 4, device=dev),
                torch.zeros(b, n, nc, device=dev),
                torch.zeros(b, n, dtype=torch.bool, device=dev),
                torch.zeros(b, n, dtype=torch.long, device=dev),
            )
        gt_mask = gt_mask.bool()
        in_gts = self._candidates(anchor_points, gt_boxes) & gt_mask[..., None]  # (B, M, N)
        # alignment metric for candidates
        lbl = gt_labels.long().clamp(0, nc - 1)
        score = pd_scores.gather(2, lbl[:, None, :].expand(b, n, m)).transpose(1, 2)  # (B, M, N)
        iou = bbox_iou(gt_boxes[:, :, None, :], pd_boxes[:, None, :, :], "iou").clamp(min=0)  # (B, M, N)
        iou = iou * in_gts
        metric = score.pow(self.alpha) * iou.pow(self.beta)
        ranked = torch.where(in_gts, metric, torch.full_like(metric, -1.0))
        k = min(self.topk, n)
        top_idx = ranked.topk(k, dim=-1).indices  # (B, M, k)
        mask_topk = torch.zeros_like(in_gts).scatter_(-1, top_idx, True)
        pos = mask_topk & in_gts  # (B, M, N)
        # an anchor claimed by several boxes keeps the box of highest IoU (ties: any)
        multi = pos.sum(1) > 1  # (B, N)
        if bool(multi.any()):
            overlap = bbox_iou(gt_boxes[:, :, None, :], pd_boxes[:, None, :, :], "iou")
            overlap = torch.where(pos, overlap, torch.full_like(overlap, -2.0))
            best = torch.zeros_like(pos).scatter_(1, overlap.argmax(1, keepdim=True), True)
            pos = torch.where(multi[:, None, :], best & pos, pos)
        fg = pos.any(1)  # (B, N)
        gt_index = pos.float().argmax(1)  # (B, N)
        batch_idx = torch.arange(b, device=dev)[:, None]
        labels = torch.where(fg, lbl[batch_idx, gt_index], torch.zeros_like(gt_index))
        boxes = gt_boxes[batch_idx, gt_index]  # (B, N, 4)
        # soft targets: metric normalised so each box's best anchor gets that box's best IoU
        # (at least ``score_floor``: a few px off on a 4 px nodule is a low IoU, not a worse find)
        metric = metric * pos
        max_metric = metric.amax(-1, keepdim=True)
        max_iou = (iou * pos).amax(-1, keepdim=True).clamp(min=self.score_floor) * pos.any(-1, keepdim=True)
        norm = (metric * max_iou / (max_metric + self.eps)).amax(1)  # (B, N)
        scores = torch.zeros(b, n, nc, device=dev)
        scores.scatter_(2, labels[..., None], 1.0)
        scores = scores * (norm * fg)[..., None]
        return Assignment(labels, boxes, scores, fg, gt_index)

    def _candidates(self, points: Tensor, gt_boxes: Tensor) -> Tensor:
        """``(B, M, N) bool``: anchor centre strictly inside the box, or (for a box that contains
        no centre) the nearest anchor point."""
        x, y = points[:, 0], points[:, 1]
        gx1, gy1, gx2, gy2 = (gt_boxes[..., i, None] for i in range(4))  # (B, M, 1)
        d = torch.stack((x - gx1, y - gy1, gx2 - x, gy2 - y), -1)  # (B, M, N, 4)
        inside = d.amin(-1) > self.eps
        empty = ~inside.any(-1)  # (B, M)
        if bool(empty.any()):
            centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)
            dist = (points[None, None] - centre[:, :, None]).pow(2).sum(-1)  # (B, M, N)
            nearest = torch.zeros_like(inside).scatter_(-1, dist.argmin(-1, keepdim=True), True)
            inside = inside | (nearest & empty[..., None])
        return inside


__all__ = ["Assignment", "TaskAlignedAssigner"]

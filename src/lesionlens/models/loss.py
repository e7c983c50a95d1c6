"""Detection criterion: task-aligned assignment, then class + box (IoU-type) + DFL losses.

``DetectionLoss(config)(outputs, targets)``:

* outputs: the training-mode output of :class:`~lesionlens.models.detector.Detector`, a list per
  stride of ``(B, 4 * reg_max + nc, h, w)`` raw maps;
* targets: a list of ``B`` items, each ``(boxes (n, 4) float32 xyxy input pixels, labels (n,) int64)``
  (a tuple, or a dict with ``"boxes"`` and ``"labels"``); ``n`` may be 0 (negative images);
* returns ``{"loss": weighted sum (backward this), "box", "cls", "dfl"}``, scalar tensors; the
  parts are unweighted and averaged per image.

Class loss: BCE against soft IoU-quality targets (default) or varifocal loss. Box loss:
``1 - CIoU`` (or GIoU) weighted by the target quality. DFL: cross-entropy on the two bins around
each target side distance (Li et al., Generalized Focal Loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionlens.errors import ConfigError
from lesionlens.models.assigner import TaskAlignedAssigner
from lesionlens.models.boxes import bbox2dist, bbox_iou, dist2bbox, make_anchors
from lesionlens.models.detector import DetectorConfig, dfl_expectation, flatten_outputs

Target = tuple[Tensor, Tensor] | Mapping[str, Tensor]


@dataclass
class LossConfig:
    """Loss weights and assigner settings.

    box/cls/dfl: weights in the total; iou: ``"ciou"`` | ``"giou"``; cls_loss: ``"bce"`` |
    ``"varifocal"``; topk/alpha/beta/score_floor: :class:`TaskAlignedAssigner` (score_floor: the
    least class target of a box's best anchor; 0 = its IoU, as in TOOD/YOLOv8; 1 = hard targets).
    """

    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    iou: str = "ciou"
    cls_loss: str = "bce"
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    score_floor: float = 0.0

    def __post_init__(self) -> None:
        for name in ("box", "cls", "dfl"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: loss weight must be >= 0, got {getattr(self, name)}")
        if self.iou not in ("ciou", "giou"):
            raise ConfigError(f"iou: {self.iou!r} is not 'ciou' or 'giou'")
        if self.cls_loss not in ("bce", "varifocal"):
            raise ConfigError(f"cls_loss: {self.cls_loss!r} is not 'bce' or 'varifocal'")


def varifocal_loss(logits: Tensor, target: Tensor, alpha: float = 0.75, gamma: float = 2.0) -> Tensor:
    """Elementwise varifocal loss (Zhang et al. 2021): positives weighted by their IoU target,
    negatives down-weighted by ``alpha * p^gamma``. ``logits, target: (..., nc)``."""
    p = logits.sigmoid()
    weight = alpha * p.detach().pow(gamma) * (target <= 0) + target * (target > 0)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


def _pack_targets(targets: Sequence[Any], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """List of per-image targets -> padded ``boxes (B, M, 4)``, ``labels (B, M)``, ``mask (B, M)``."""
    boxes_l, labels_l = [], []
    for i, t in enumerate(targets):
        bx, lb = (t["boxes"], t["labels"]) if isinstance(t, Mapping) else t
        bx = torch.as_tensor(bx, dtype=torch.float32, device=device).reshape(-1, 4)
        lb = torch.as_tensor(lb, dtype=torch.long, device=device).reshape(-1)
        if len(bx) != len(lb):
            raise ConfigError(f"targets[{i}]: {len(bx)} boxes but {len(lb)} labels")
        boxes_l.append(bx)
        labels_l.append(lb)
    m = max((len(b) for b in boxes_l), default=0)
    b = len(boxes_l)
    boxes = torch.zeros(b, m, 4, device=device)
    labels = torch.zeros(b, m, dtype=torch.long, device=device)
    mask = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, (bx, lb) in enumerate(zip(boxes_l, labels_l)):
        boxes[i, : len(bx)] = bx
        labels[i, : len(lb)] = lb
        mask[i, : len(bx)] = True
    return boxes, labels, mask


class DetectionLoss(nn.Module):
    """Criterion for :class:`~lesionlens.models.detector.Detector`; see the module docstring."""

    def __init__(self, config: DetectorConfig, loss_config: LossConfig | None = None):
        super().__init__()
        self.config = config
        self.lc = loss_config or LossConfig()
        self.assigner = TaskAlignedAssigner(self.lc.topk, self.lc.alpha, self.lc.beta,
                                            score_floor=self.lc.score_floor)

    def forward(self, outputs: Sequence[Tensor], targets: Sequence[Target]) -> dict[str, Tensor]:
        cfg, lc = self.config, self.lc
        r, nc = cfg.reg_max, cfg.num_classes
        if len(outputs) != len(cfg.strides):
            raise ConfigError(f"outputs: {len(outputs)} levels for strides {cfg.strides} (model in eval mode?)")
        b = outputs[0].shape[0]
        if len(targets) != b:
            raise ConfigError(f"targets: {len(targets)} items for a batch of {b}")
        dev = outputs[0].device
        dist_logits, cls_logits = flatten_outputs(outputs, r)  # (B,N,4,R), (B,N,nc)
        dist_logits, cls_logits = dist_logits.float(), cls_logits.float()
        shapes = [(int(o.shape[2]), int(o.shape[3])) for o in outputs]
        points, stride = make_anchors(shapes, cfg.strides, device=dev)
        pd_boxes = dist2bbox(dfl_expectation(dist_logits) * stride, points)  # (B, N, 4) pixels

        gt_boxes, gt_labels, gt_mask = _pack_targets(targets, dev)
        if bool((gt_labels[gt_mask] >= nc).any()) or bool((gt_labels[gt_mask] < 0).any()):
            raise ConfigError(f"targets: labels must be in [0, {nc})")
        a = self.assigner(cls_logits.detach().sigmoid(), pd_boxes.detach(), points, gt_labels, gt_boxes, gt_mask)
        score_sum = a.scores.sum().clamp(min=1.0)

        if lc.cls_loss == "bce":
            cls_l = F.binary_cross_entropy_with_logits(cls_logits, a.scores, reduction="none")
        else:
            cls_l = varifocal_loss(cls_logits, a.scores)
        loss_cls = cls_l.sum() / score_sum

        fg = a.fg_mask
        if bool(fg.any()):
            weight = a.scores.sum(-1)[fg]  # (P,)
            iou = bbox_iou(pd_boxes[fg], a.boxes[fg], lc.iou)
            loss_box = ((1.0 - iou) * weight).sum() / score_sum
            pts = points[None].expand(b, -1, -1)[fg]
            tgt = bbox2dist(a.boxes[fg], pts) / stride[None].expand(b, -1, -1)[fg]
            tgt = tgt.clamp(0, r - 1 - 0.01)
            loss_dfl = (self._dfl(dist_logits[fg], tgt) * weight[:, None]).mean(-1).sum() / score_sum
        else:
            loss_box = loss_dfl = cls_logits.sum() * 0.0 + dist_logits.sum() * 0.0
        total = lc.box * loss_box + lc.cls * loss_cls + lc.dfl * loss_dfl
        return {"loss": total, "box": loss_box.detach(), "cls": loss_cls.detach(), "dfl": loss_dfl.detach()}

    @staticmethod
    def _dfl(logits: Tensor, target: Tensor) -> Tensor:
        """``logits: (P, 4, R)``, ``target: (P, 4)`` in ``[0, R-1)`` -> ``(P, 4)`` DFL."""
        tl = target.long()
        wl = tl + 1 - target
        lp = logits.log_softmax(-1)
        left = lp.gather(-1, tl[..., None]).squeeze(-1)
        right = lp.gather(-1, (tl + 1)[..., None]).squeeze(-1)
        return -(left * wl + right * (1 - wl))


__all__ = ["DetectionLoss", "LossConfig", "varifocal_loss"]

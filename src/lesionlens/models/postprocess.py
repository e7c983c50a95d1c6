"""Post-processing of decoded detector output: score threshold, class-wise NMS, max detections.

Runs in numpy so the CPU/ONNX Runtime path needs no torch (torch tensors are accepted and
converted). NMS is deliberately kept out of the ONNX graph: the graph stays plain and
quantisable, and the caller controls the low-confidence tail — with ``conf`` near 0 every
candidate that survives NMS is returned up to ``max_det``, which FROC analysis needs.

Input: ``pred: (B, N, 4 + nc)`` (or ``(N, 4 + nc)``) float: boxes xyxy input pixels, then
per-class scores in [0, 1] — the output of ``Detector.eval()`` / :class:`OnnxDetector`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lesionlens.errors import ConfigError


@dataclass
class Detections:
    """Detections in one image: ``boxes (K, 4) float32`` xyxy input pixels, ``scores (K,)
    float32`` descending, ``labels (K,) int64`` class indices."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __len__(self) -> int:
        return len(self.scores)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS. ``boxes (K, 4)`` xyxy, ``scores (K,)`` -> indices kept, by descending score.

    A box is suppressed when its IoU with a kept, higher-scoring box is > ``iou_threshold``.
    """
    order = np.argsort(-scores, kind="stable")
    boxes = boxes.astype(np.float64)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / (area[i] + area[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-wise NMS (boxes of different labels never suppress each other) via a per-class
    coordinate offset. Returns kept indices by descending score."""
    if boxes.size == 0:
        return np.zeros((0,), np.int64)
    offset = labels.astype(np.float64)[:, None] * (float(np.abs(boxes).max()) + 1.0) * 2.0
    return nms(boxes.astype(np.float64) + offset, scores, iou_threshold)


class Postprocessor:
    """``Postprocessor(conf=0.25, iou=0.5, max_det=100)(pred) -> list[Detections]`` (one per image).

    conf: keep candidates with best-class score >= conf (0 keeps everything);
    iou: NMS IoU threshold; max_det: detections per image at most; pre_nms_topk: only the
    highest-scoring candidates enter NMS (bounds the cost when ``conf`` is ~0);
    class_agnostic: NMS across classes; image_size ``(H, W)`` in ``__call__`` clips boxes.
    Each anchor contributes one candidate, labelled with its best class.
    """

    def __init__(
        self,
        conf: float = 0.25,
        iou: float = 0.5,
        max_det: int = 100,
        pre_nms_topk: int = 3000,
        class_agnostic: bool = False,
    ):
        if not 0.0 <= conf <= 1.0:
            raise ConfigError(f"conf: must be in [0, 1], got {conf}")
        if not 0.0 < iou <= 1.0:
            raise ConfigError(f"iou: must be in (0, 1], got {iou}")
        if max_det < 1:
            raise ConfigError(f"max_det: must be >= 1, got {max_det}")
        if pre_nms_topk < max_det:
            raise ConfigError(f"pre_nms_topk: must be >= max_det ({max_det}), got {pre_nms_topk}")
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.pre_nms_topk, self.class_agnostic = pre_nms_topk, class_agnostic

    def __call__(self, pred: Any, image_size: tuple[int, int] | None = None) -> list[Detections]:
        arr = pred.detach().float().cpu().numpy() if hasattr(pred, "detach") else np.asarray(pred, np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[-1] < 5:
            raise ConfigError(f"pred: expected (B, N, 4 + nc), got shape {arr.shape}")
        return [self._one(p, image_size) for p in arr]

    def _one(self, p: np.ndarray, image_size: tuple[int, int] | None) -> Detections:
        boxes, cls_scores = p[:, :4], p[:, 4:]
        labels = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(labels)), labels]
        keep = np.flatnonzero(scores >= self.conf) if self.conf > 0 else np.arange(len(scores))
        if keep.size > self.pre_nms_topk:
            keep = keep[np.argpartition(-scores[keep], self.pre_nms_topk - 1)[: self.pre_nms_topk]]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if image_size is not None:
            h, w = image_size
            boxes = np.stack(
                (boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h), boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)), 1
            )
        if self.class_agnostic:
            idx = nms(boxes, scores, self.iou)
        else:
            idx = batched_nms(boxes, scores, labels, self.iou)
        idx = idx[: self.max_det]
        return Detections(
            boxes[idx].astype(np.float32).reshape(-1, 4),
            scores[idx].astype(np.float32),
            labels[idx].astype(np.int64),
        )


__all__ = ["Detections", "Postprocessor", "batched_nms", "nms"]

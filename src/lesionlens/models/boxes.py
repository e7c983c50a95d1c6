"""Torch box coding for the detector: anchor points, distance (ltrb) <-> xyxy, IoU family.

Conventions (see :mod:`lesionlens.data.annotations`): boxes are ``(..., 4) float32 xyxy`` in
pixels of the network input grid, x right (columns), y down (rows), edges not centres.
Anchor points are the *centres* of feature-map cells: cell ``(i, j)`` of a stride-``s`` map
sits at ``((j + 0.5) * s, (i + 0.5) * s)`` pixels. Distances ``ltrb`` are ``(..., 4)``
non-negative pixels from an anchor point to the left, top, right and bottom box edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

EPS = 1e-7


def make_anchors(
    shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Anchor points of several feature levels, level after level, row-major inside a level.

    shapes: ``(H_l, W_l)`` per level; strides: pixels per cell per level.
    Returns ``points: (N, 2)`` (x, y) pixel centres and ``stride: (N, 1)`` with
    ``N = sum(H_l * W_l)``; both ``dtype``.
    """
    points, stride_list = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        sx = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        sy = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).reshape(-1, 2))
        stride_list.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_list)


def dist2bbox(distance: Tensor, points: Tensor) -> Tensor:
    """``distance: (..., N, 4)`` ltrb pixels + ``points: (N, 2)`` -> ``(..., N, 4)`` xyxy pixels."""
    lt, rb = distance[..., :2], distance[..., 2:]
    return torch.cat((points - lt, points + rb), -1)


def bbox2dist(boxes: Tensor, points: Tensor, max_dist: float | None = None) -> Tensor:
    """``boxes: (..., N, 4)`` xyxy + ``points: (N, 2)`` -> ``(..., N, 4)`` ltrb distances.

    Distances are clamped to ``[0, max_dist]`` when ``max_dist`` is given (DFL targets use
    ``reg_max - 1 - 0.01`` in stride units).
    """
    lt = points - boxes[..., :2]
    rb = boxes[..., 2:] - points
    d = torch.cat((lt, rb), -1)
    if max_dist is not None:
        d = d.clamp(0, max_dist)
    return d


def box_area(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(...)`` area (0 for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou_pairwise(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box in ``a: (N, 4)`` with every box in ``b: (M, 4)`` -> ``(N, M)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / (union + EPS)


def bbox_iou(a: Tensor, b: Tensor, kind: str = "iou") -> Tensor:
    """Element-wise IoU-type overlap of broadcastable ``a, b: (..., 4)`` xyxy -> ``(...)``.

    kind: ``"iou"``, ``"giou"`` (IoU - (C - U) / C, C = enclosing box area) or ``"ciou"``
    (IoU - rho^2 / c^2 - alpha * v, Zheng et al. 2020; rho = centre distance, c = enclosing
    diagonal, v = aspect-ratio consistency). GIoU and CIoU lie in ``(-1, 1]``.
    """
    if kind not in ("iou", "giou", "ciou"):
        raise ValueError(f"unknown IoU kind {kind!r}")
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    w1, h1 = (ax2 - ax1).clamp(min=0), (ay2 - ay1).clamp(min=0)
    w2, h2 = (bx2 - bx1).clamp(min=0), (by2 - by1).clamp(min=0)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter + EPS
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if kind == "giou":
        c_area = cw * ch + EPS
        return iou - (c_area - union) / c_area
    c2 = cw**2 + ch**2 + EPS
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + EPS)) - torch.atan(w1 / (h1 + EPS))).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + EPS))
    return iou - (rho2 / c2 + v * alpha)


__all__ = ["bbox2dist", "bbox_iou", "box_area", "box_iou_pairwise", "dist2bbox", "make_anchors"]

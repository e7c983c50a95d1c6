"""Box conversions — the ONE place where box conventions are translated.

The LesionLens convention is ``boxes: (N, 4) float32, xyxy, pixels`` in the original image grid:
x to the right (columns), y down (rows), edges not centres (a box covering exactly pixel
column 3 is ``x1=3, x2=4``). Other conventions appear only at format boundaries:

* ``xywh`` — top-left corner plus width/height in pixels (COCO ``bbox``; the studies JSON layout).
* ``cxcywh`` — centre plus width/height in pixels.
* YOLO — ``cxcywh`` divided by the image width/height, i.e. normalised to ``[0, 1]``.

Every function takes and returns ``(N, 4)`` arrays (``float32`` unless stated) and accepts any
array-like that reshapes to ``(-1, 4)``; an empty input gives a ``(0, 4)`` output.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_boxes",
    "box_area",
    "box_iou",
    "boxes_outside",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
    "xyxy_to_yolo",
    "yolo_to_xyxy",
]


def as_boxes(boxes: object) -> np.ndarray:
    """Any array-like of boxes → ``(N, 4) float32`` (no convention change)."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def xyxy_to_xywh(boxes: object) -> np.ndarray:
    """``(N, 4)`` xyxy px → ``(N, 4)`` float32 ``x1, y1, w, h`` px."""
    b = as_boxes(boxes)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def xywh_to_xyxy(boxes: object) -> np.ndarray:
    """``(N, 4)`` ``x1, y1, w, h`` px → ``(N, 4)`` float32 xyxy px."""
    b = as_boxes(boxes)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def xyxy_to_cxcywh(boxes: object) -> np.ndarray:
    """``(N, 4)`` xyxy px → ``(N, 4)`` float32 ``cx, cy, w, h`` px."""
    b = as_boxes(boxes)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    return np.stack([b[:, 0] + w / 2, b[:, 1] + h / 2, w, h], axis=1)


def cxcywh_to_xyxy(boxes: object) -> np.ndarray:
    """``(N, 4)`` ``cx, cy, w, h`` px → ``(N, 4)`` float32 xyxy px."""
    b = as_boxes(boxes)
    hw, hh = b[:, 2] / 2, b[:, 3] / 2
    return np.stack([b[:, 0] - hw, b[:, 1] - hh, b[:, 0] + hw, b[:, 1] + hh], axis=1)


def xyxy_to_yolo(boxes: object, width: int, height: int) -> np.ndarray:
    """``(N, 4)`` xyxy px in a ``width`` × ``height`` image → ``(N, 4)`` float64 normalised cxcywh.

    float64 so that written label files keep six significant decimals exactly.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    c = xyxy_to_cxcywh(boxes).astype(np.float64)
    return c / np.array([width, height, width, height], dtype=np.float64)


def yolo_to_xyxy(boxes: object, width: int, height: int) -> np.ndarray:
    """``(N, 4)`` normalised cxcywh → ``(N, 4)`` float32 xyxy px in a ``width`` × ``height`` image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    px = b * np.array([width, height, width, height], dtype=np.float64)
    return cxcywh_to_xyxy(px)


def clip_boxes(boxes: object, width: int, height: int) -> np.ndarray:
    """Clip ``(N, 4)`` xyxy px boxes to ``[0, width] × [0, height]`` → ``(N, 4)`` float32."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b


def box_area(boxes: object) -> np.ndarray:
    """``(N,)`` float32 areas (px²) of xyxy boxes; inverted boxes count as 0."""
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a: object, b: object) -> np.ndarray:
    """IoU matrix ``(N, M)`` float32 between xyxy boxes ``a (N, 4)`` and ``b (M, 4)``.

    Pairs whose union is empty (two zero-area boxes) get IoU 0.
    """
    a4, b4 = as_boxes(a), as_boxes(b)
    lt = np.maximum(a4[:, None, :2], b4[None, :, :2])
    rb = np.minimum(a4[:, None, 2:], b4[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a4)[:, None] + box_area(b4)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return iou.astype(np.float32)


def boxes_outside(boxes: object, width: int, height: int, tol: float = 0.5) -> np.ndarray:
    """``(N,)`` bool: which xyxy boxes reach outside the image by more than ``tol`` px, or are
    inverted/empty (``x2 <= x1`` or ``y2 <= y1``). Readers use it to reject bad annotations."""
    b = as_boxes(boxes)
    out = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > width + tol) | (b[:, 3] > height + tol)
    bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]) | ~np.isfinite(b).all(axis=1)
    return out | bad

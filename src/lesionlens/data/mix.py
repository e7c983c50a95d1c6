"""Sample-mixing augmentation: copy-paste of lesions and mosaic.

Both work on samples in physical units (``image (C, H, W)`` HU for CT stacks, raw intensity for
2D; ``boxes (N, 4)`` xyxy px; ``labels (N,)``), before the per-sample :class:`Augmenter`.

* **Copy-paste** (:func:`paste_lesions`): lesion patches cut from other training images (all
  channels, so a 2.5D stack keeps its neighbouring slices) are pasted at a new place. The paste
  is a *max blend* inside the ellipse inscribed in the lesion's box, feathered at its rim: a
  lesion is denser than the lung it is pasted into, so the result is what a scanner would show
  for a nodule sitting there — the target's own structures (a vessel) stay where they are
  denser. For CT, a place qualifies only when the target's centre channel is lung there (median
  below ``lung_hu``), so nodules are not pasted into the mediastinum or outside the body. Places
  overlapping an existing box are not used.
* **Mosaic** (:func:`mosaic`): four crops of half the size, from four images, tiled into one
  sample. Scale is kept (no resizing): the detector works at native pixel size, and a lesion's
  size in pixels is what it must learn.

A :class:`LesionBank` holds the patches, filled as training images are read (reservoir
sampling, so it stays a fair sample of the whole split at a fixed memory cost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LesionPatch:
    image: np.ndarray  # (C, h, w) physical values around the lesion
    box: np.ndarray  # (4,) xyxy px inside ``image``
    label: int


@dataclass
class LesionBank:
    """At most ``capacity`` lesion patches (reservoir sample of every lesion offered)."""

    capacity: int = 512
    margin_px: int = 2
    max_side_px: int = 96  # larger lesions are not banked (a large paste rarely fits a crop)
    seed: int = 0
    patches: list[LesionPatch] = field(default_factory=list)
    seen: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return len(self.patches)

    def offer(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> None:
        """Bank the lesions of one (un-augmented) training image."""
        _, h, w = image.shape
        m = self.margin_px
        for box, label in zip(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels).reshape(-1)):
            x0, y0 = max(0, int(np.floor(box[0])) - m), max(0, int(np.floor(box[1])) - m)
            x1, y1 = min(w, int(np.ceil(box[2])) + m), min(h, int(np.ceil(box[3])) + m)
            if x1 - x0 < 2 or y1 - y0 < 2 or max(x1 - x0, y1 - y0) > self.max_side_px:
                continue
            patch = LesionPatch(np.array(image[:, y0:y1, x0:x1], np.float32),
                                (box - np.array([x0, y0, x0, y0], np.float32)).astype(np.float32), int(label))
            self.seen += 1
            if len(self.patches) < self.capacity:
                self.patches.append(patch)
            else:
                j = int(self._rng.integers(self.seen))
                if j < self.capacity:
                    self.patches[j] = patch


def _ellipse_weight(h: int, w: int, box: np.ndarray, feather_px: float = 1.0) -> np.ndarray:
    """(h, w) weights in [0, 1]: 1 inside the ellipse inscribed in ``box``, falling to 0 over
    ``feather_px`` outside it."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ax, ay = max((box[2] - box[0]) / 2, 0.5), max((box[3] - box[1]) / 2, 0.5)
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)  # 1 on the ellipse
    dist_px = (r - 1.0) * min(ax, ay)
    return np.clip(1.0 - dist_px / max(feather_px, 1e-3), 0.0, 1.0).astype(np.float32)


def _overlaps(box: np.ndarray, boxes: np.ndarray, pad: float = 2.0) -> bool:
    if len(boxes) == 0:
        return False
    b = boxes.reshape(-1, 4)
    return bool(np.any((b[:, 0] < box[2] + pad) & (b[:, 2] > box[0] - pad)
                       & (b[:, 1] < box[3] + pad) & (b[:, 3] > box[1] - pad)))


def paste_lesions(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, bank: LesionBank,
                  rng: np.random.Generator, *, n: int = 1, lung_hu: float | None = -600.0,
                  tries: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste up to ``n`` lesions from ``bank`` into ``image`` (see the module notes).

    lung_hu: CT only — the target's centre channel must have a median below this under the
    patch (None: any place). → (image, boxes, labels) with the pasted boxes appended."""
    if len(bank) == 0 or n <= 0:
        return image, boxes, labels
    img = np.array(image, np.float32, copy=True)
    out_boxes = [np.asarray(boxes, np.float32).reshape(-1, 4)]
    out_labels = [np.asarray(labels, np.int64).reshape(-1)]
    c, h, w = img.shape
    mid = c // 2
    for _ in range(n):
        patch = bank.patches[int(rng.integers(len(bank)))]
        if patch.image.shape[0] != c:
            continue
        ph, pw = patch.image.shape[1:]
        if ph >= h or pw >= w:
            continue
        weight = _ellipse_weight(ph, pw, patch.box)
        for _ in range(tries):
            y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            new_box = patch.box + np.array([x0, y0, x0, y0], np.float32)
            if _overlaps(new_box, np.concatenate(out_boxes)):
                continue
            region = img[:, y0:y0 + ph, x0:x0 + pw]
            if lung_hu is not None and float(np.median(region[mid][weight > 0.5])) >= lung_hu:
                continue
            blended = np.maximum(region, patch.image)
            img[:, y0:y0 + ph, x0:x0 + pw] = region + weight[None] * (blended - region)
            out_boxes.append(new_box[None])
            out_labels.append(np.array([patch.label], np.int64))
            break
    return img, np.concatenate(out_boxes).astype(np.float32), np.concatenate(out_labels)


def mosaic(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int,
           min_box_px: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile four samples of ``(C, size // 2, size // 2)`` (top-left, top-right, bottom-left,
    bottom-right) into one ``(C, size, size)`` sample; boxes shifted with their tile."""
    if len(parts) != 4:
        raise ValueError(f"mosaic needs 4 samples, got {len(parts)}")
    half = size // 2
    c = parts[0][0].shape[0]
    out = np.empty((c, size, size), np.float32)
    all_boxes, all_labels = [], []
    for (img, bxs, lbl), (oy, ox) in zip(parts, ((0, 0), (0, half), (half, 0), (half, half))):
        if img.shape != (c, half, half):
            raise ValueError(f"mosaic tile has shape {img.shape}, expected {(c, half, half)}")
        out[:, oy:oy + half, ox:ox + half] = img
        b = np.asarray(bxs, np.float32).reshape(-1, 4)
        if len(b):
            b = b.copy()
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, half) + ox
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, half) + oy
            keep = ((b[:, 2] - b[:, 0]) >= min_box_px) & ((b[:, 3] - b[:, 1]) >= min_box_px)
            all_boxes.append(b[keep])
            all_labels.append(np.asarray(lbl, np.int64).reshape(-1)[keep])
    if not all_boxes:
        return out, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    return out, np.concatenate(all_boxes), np.concatenate(all_labels)


__all__ = ["LesionBank", "LesionPatch", "mosaic", "paste_lesions"]

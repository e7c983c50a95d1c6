"""Merge per-slice 2D detections of a CT series into 3D lesion candidates.

A nodule starts and ends: its cross-section grows then shrinks over a few slices and its centre
stays put. A vessel continues across many slices and drifts. Linking per-slice boxes into tracks
and describing each track (extent, drift, equivalent diameter) is what lets the later stages tell
them apart and what FROC evaluation scores.

Coordinates: boxes are ``(N, 4) float32 xyxy`` pixels with edges at integer positions (pixel
column ``c`` spans ``[c, c + 1)``), so a box centre ``x`` sits at column index ``x − 0.5``.
Volume indices and the affine follow :mod:`lesionlens.dicom.types`: ``lps = affine @ [k, r, c, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lesionlens.errors import ConfigError


@dataclass(frozen=True)
class SliceDetections:
    """Detections on one slice ``k``: boxes (N,4) float32 xyxy px; scores (N,) float32; labels (N,)."""

    k: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class AggregateConfig:
    """How boxes on neighbouring slices are linked.

    min_iou: link two boxes on neighbouring slices when their IoU reaches this, or when the centre
      distance is within ``center_frac`` of the larger box's mean side.
    max_gap: slices a track may skip (a missed detection on one slice does not split a nodule).
    """

    min_iou: float = 0.2
    center_frac: float = 0.5
    max_gap: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_iou <= 1.0:
            raise ConfigError(f"aggregate.min_iou must be in [0, 1], got {self.min_iou}")
        if self.max_gap < 0:
            raise ConfigError(f"aggregate.max_gap must be >= 0, got {self.max_gap}")


@dataclass
class Candidate3D:
    """A 3D lesion candidate.

    center_mm: (3,) LPS mm, score-weighted over the track's slices; diameter_mm: equivalent
    diameter of the largest in-plane cross-section (sqrt of box width × height in mm);
    key_k / bbox_px: the slice with the highest score and its box (xyxy px).
    drift_mm: in-plane distance between the first and last slices' centres (vessels drift);
    z_extent_mm: span along the slice normal.
    """

    label: int
    confidence: float
    center_mm: np.ndarray
    diameter_mm: float
    inplane_diameter_mm: float
    z_extent_mm: float
    drift_mm: float
    key_k: int
    bbox_px: np.ndarray
    slices: list[int] = field(default_factory=list)
    n_boxes: int = 0
    slice_scores: list[float] = field(default_factory=list)
    detector_confidence: float | None = None  # set when a rescorer replaced ``confidence``
    patch_probability: float | None = None  # the 3D patch classifier's probability (pipeline/patchnet.py)
    detail_probability: float | None = None  # its detail classifier's, for small candidates

    def stage_scores(self) -> dict[str, float]:
        """The scores the false-positive reduction stages kept beside ``confidence`` (only those set)."""
        return {k: float(v) for k, v in (("detector_confidence", self.detector_confidence),
                                         ("patch_probability", self.patch_probability),
                                         ("detail_probability", self.detail_probability)) if v is not None}


def _link_matrix(prev: np.ndarray, cur: np.ndarray, cfg: AggregateConfig) -> np.ndarray:
    """Link strengths of every (current box, previous box) pair, ``(len(cur), len(prev))``:
    ``1 + IoU`` when the IoU reaches ``min_iou``; else ``1 − d / (center_frac · side)`` when the
    centre distance ``d`` is under ``center_frac`` × the larger box's mean side; else 0 (no link)."""
    ix = np.clip(np.minimum(cur[:, None, 2], prev[None, :, 2]) - np.maximum(cur[:, None, 0], prev[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(cur[:, None, 3], prev[None, :, 3]) - np.maximum(cur[:, None, 1], prev[None, :, 1]), 0, None)
    inter = ix * iy
    area_c = (cur[:, 2] - cur[:, 0]) * (cur[:, 3] - cur[:, 1])
    area_p = (prev[:, 2] - prev[:, 0]) * (prev[:, 3] - prev[:, 1])
    union = area_c[:, None] + area_p[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    cc, cp = (cur[:, :2] + cur[:, 2:]) / 2, (prev[:, :2] + prev[:, 2:]) / 2
    side = np.maximum(np.mean(cur[:, 2:] - cur[:, :2], axis=1)[:, None], np.mean(prev[:, 2:] - prev[:, :2], axis=1)[None, :])
    d = np.linalg.norm(cc[:, None, :] - cp[None, :, :], axis=2)
    lim = cfg.center_frac * side
    near = np.where(d < lim, 1.0 - np.divide(d, lim, out=np.ones_like(d), where=lim > 0), 0.0)
    return np.where(iou >= cfg.min_iou, 1.0 + iou, near)


def link_tracks(dets: list[SliceDetections], config: AggregateConfig | None = None) -> list[list[tuple[int, int]]]:
    """Link boxes across slices into tracks: each track is a list of (k, index in that slice).

    Greedy by score: boxes on each slice are taken in descending score order and join the best
    open track of the same label whose last box is at most ``max_gap + 1`` slices back (ties: the
    oldest track). Only open tracks are compared, all at once (:func:`_link_matrix`), so the cost
    grows with the boxes per slice, not with the tracks of the whole series.
    """
    cfg = config or AggregateConfig()
    tracks: list[list[tuple[int, int]]] = []
    last_k: list[int] = []
    last_box: list[np.ndarray] = []
    last_label: list[int] = []
    active: list[int] = []  # open track indices, ascending
    for d in sorted(dets, key=lambda d: d.k):
        k = d.k
        active = [t for t in active if k - last_k[t] <= cfg.max_gap + 1 and k != last_k[t]]
        n = len(d.scores)
        if n == 0:
            continue
        order = np.argsort(-np.asarray(d.scores), kind="stable")
        labels = np.asarray(d.labels).astype(np.int64)
        if active:
            prev = np.stack([last_box[t] for t in active]).astype(np.float64)
            strength = _link_matrix(prev, np.asarray(d.boxes, np.float64), cfg)
            strength[labels[:, None] != np.array([last_label[t] for t in active])[None, :]] = 0.0
        else:
            strength = np.zeros((n, 0))
        taken = np.zeros(len(active), bool)
        new_active = []
        for i in order:
            row = np.where(taken, 0.0, strength[i])
            j = int(np.argmax(row)) if row.size else -1
            box = np.asarray(d.boxes[i], np.float64)
            if j >= 0 and row[j] > 0.0:
                t = active[j]
                taken[j] = True
                tracks[t].append((k, int(i)))
                last_k[t], last_box[t] = k, box
            else:  # a new track (its index is above every open one: ``active`` stays ascending)
                new_active.append(len(tracks))
                tracks.append([(k, int(i))])
                last_k.append(k)
                last_box.append(box)
                last_label.append(int(labels[i]))
        active += new_active
    return tracks


def aggregate(
    dets: list[SliceDetections], affine: np.ndarray, config: AggregateConfig | None = None
) -> list[Candidate3D]:
    """Per-slice detections → 3D candidates sorted by descending confidence.

    affine: (4,4) index (k, r, c, 1) → LPS mm of the volume the slices come from.
    """
    by_k = {d.k: d for d in dets}
    lin = np.asarray(affine, dtype=np.float64)
    col_mm = float(np.linalg.norm(lin[:3, 2]))
    row_mm = float(np.linalg.norm(lin[:3, 1]))
    slice_mm = float(np.linalg.norm(lin[:3, 0]))
    out: list[Candidate3D] = []
    for tr in link_tracks(dets, config):
        ks = np.array([k for k, _ in tr], dtype=np.float64)
        boxes = np.stack([by_k[k].boxes[i] for k, i in tr]).astype(np.float64)
        scores = np.array([by_k[k].scores[i] for k, i in tr], dtype=np.float64)
        label = int(by_k[tr[0][0]].labels[tr[0][1]])
        w = scores / scores.sum() if scores.sum() > 0 else np.full(len(scores), 1 / len(scores))
        centres_rc = np.stack([(boxes[:, 1] + boxes[:, 3]) / 2 - 0.5, (boxes[:, 0] + boxes[:, 2]) / 2 - 0.5], axis=1)
        idx = np.array([float(w @ ks), float(w @ centres_rc[:, 0]), float(w @ centres_rc[:, 1])])
        center = lin[:3, :3] @ idx + lin[:3, 3]
        sizes_mm = np.sqrt((boxes[:, 2] - boxes[:, 0]) * col_mm * (boxes[:, 3] - boxes[:, 1]) * row_mm)
        inplane = float(sizes_mm.max())
        z_extent = float((ks.max() - ks.min() + 1) * slice_mm)
        drift_px = centres_rc[np.argmax(ks)] - centres_rc[np.argmin(ks)]
        drift = float(np.hypot(drift_px[0] * row_mm, drift_px[1] * col_mm))
        # key slice: the highest score; among equal scores the largest cross-section
        key = int(np.lexsort((sizes_mm, scores))[-1])
        # the largest in-plane size is the measurement a radiologist makes on axial slices
        diameter = inplane
        conf = float(scores.max())
        out.append(
            Candidate3D(
                label=label,
                confidence=conf,
                center_mm=center,
                diameter_mm=diameter,
                inplane_diameter_mm=inplane,
                z_extent_mm=z_extent,
                drift_mm=drift,
                key_k=int(ks[key]),
                bbox_px=boxes[key].astype(np.float32),
                slices=[int(k) for k in ks],
                n_boxes=len(tr),
                slice_scores=[float(v) for v in scores],
            )
        )
    out.sort(key=lambda c: -c.confidence)
    return out

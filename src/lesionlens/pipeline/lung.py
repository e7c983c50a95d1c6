"""Lung segmentation of a chest CT: :func:`lung_mask` and the extent facts :func:`lung_info`.

The mask serves three later stages: false-positive reduction (a lung nodule lies in the lung),
measurement (a juxtapleural nodule is cut from the chest wall along the pleura) and location
(side, upper/middle/lower zone, central/peripheral depth).

Method (classic threshold + connected components, done on an in-plane coarse grid for speed):

1. air = HU below ``air_hu`` on every ``f``-th row and column (``f`` so that the coarse pixel
   is about ``coarse_mm``);
2. per slice, air connected to the image's in-plane border is outside the body and removed;
3. in 3D, air components at least ``min_fraction`` of the largest (and ``min_volume_ml``) are
   lung — both lungs, whether they are two components or one;
4. per slice and per side, a closing with a disc of ``close_mm`` (a square ⊕ diamond octagon)
   seals the neck between a juxtapleural nodule and the lung, then holes (vessels, nodules,
   airways walls) up to ``max_hole_mm2`` are filled — so a nodule on the pleura is inside;
5. the coarse mask is brought back to the full grid (nearest sample).

Arrays follow :mod:`lesionlens.dicom.types`: ``pixels (K, R, C)`` float32 HU and
``lps = affine @ [k, r, c, 1]`` (LPS: +x patient's left, +z head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError, UnsupportedInputError

_CROSS2 = np.zeros((3, 3, 3), bool)
_CROSS2[1] = ndi.generate_binary_structure(2, 1)
_SQUARE2 = np.zeros((3, 3, 3), bool)
_SQUARE2[1] = True


@dataclass(frozen=True)
class LungConfig:
    """Lung-mask settings.

    air_hu: voxels below are air or lung parenchyma (lung ≈ −850 HU, soft tissue > −100 HU).
    coarse_mm: in-plane pixel size of the working grid (never finer than the image).
    min_fraction / min_volume_ml: an inner air component is lung when at least this fraction of
      the largest one and this volume (drops the trachea, oesophageal and bowel gas).
    close_mm: radius of the per-slice closing that brings juxtapleural nodules inside the lung;
      it must exceed the in-plane radius of the largest nodule to be enclosed (30 mm → 15 mm).
    max_hole_mm2: per-slice holes up to this area are filled (vessels, nodules); larger ones
      (a mediastinum enclosed where both lungs meet) are not.
    """

    air_hu: float = -500.0
    coarse_mm: float = 2.5
    min_fraction: float = 0.05
    min_volume_ml: float = 2.0
    close_mm: float = 16.0
    max_hole_mm2: float = 2000.0

    def __post_init__(self) -> None:
        if not -1000.0 < self.air_hu < 0.0:
            raise ConfigError(f"lung.air_hu must be between -1000 and 0 HU, got {self.air_hu}")
        if self.coarse_mm <= 0 or self.close_mm < 0 or self.max_hole_mm2 < 0 or self.min_volume_ml < 0:
            raise ConfigError("lung.coarse_mm must be > 0 and close_mm, max_hole_mm2, min_volume_ml >= 0")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise ConfigError(f"lung.min_fraction must be in [0, 1], got {self.min_fraction}")


@dataclass
class LungInfo:
    """Extent facts of a lung mask, in LPS mm (what :func:`lesionlens.pipeline.measure.locate` uses).

    z_top_mm / z_bottom_mm: LPS z of the most cranial / caudal lung voxel centre (None when the
      mask is empty); the zones are thirds of this span.
    midline_x_mm: LPS x of the gap between the lungs (x above it is the patient's left).
    medial_mm / lateral_mm: (K, 2) float64 per slice and side (column 0 right, 1 left): the
      distance (mm, along x) from the midline to the lung's medial and lateral edge on that slice;
      NaN where that lung is absent.
    """

    z_top_mm: float | None
    z_bottom_mm: float | None
    midline_x_mm: float
    medial_mm: np.ndarray
    lateral_mm: np.ndarray

    @property
    def empty(self) -> bool:
        return self.z_top_mm is None


def _factor(volume: Volume, coarse_mm: float) -> int:
    sp = volume.spacing_mm
    return max(1, int(round(coarse_mm / float(min(sp[1], sp[2])))))


def _border_ids(lab: np.ndarray) -> np.ndarray:
    """Labels touching the in-plane border of a (K, R, C) label array."""
    return np.unique(np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(),
                                     lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))


def _fill_holes_2d(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Per-slice hole filling of (K, R, C) bool: background components that do not touch the
    in-plane border and have at most ``max_px`` pixels become foreground."""
    lab, n = ndi.label(~mask, structure=_CROSS2)
    if n == 0:
        return mask
    fill = np.bincount(lab.ravel(), minlength=n + 1) <= max_px
    fill[0] = False
    fill[_border_ids(lab)] = False
    return mask | fill[lab]


def _close_2d(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Per-slice closing of (K, R, C) bool with an octagonal disc of ``radius_px`` (cropped to
    the mask's bounding box plus a margin, so the array border never erodes it)."""
    if radius_px < 1 or not mask.any():
        return mask
    a = int(round(0.414 * radius_px))  # square half-side
    b = max(1, int(round(radius_px)) - a)  # diamond radius: a square ⊕ diamond ≈ disc
    pad = a + b + 1
    ks, rs, cs = (np.flatnonzero(mask.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    k0, k1 = int(ks[0]), int(ks[-1]) + 1
    r0, r1 = max(int(rs[0]) - pad, 0), min(int(rs[-1]) + 1 + pad, mask.shape[1])
    c0, c1 = max(int(cs[0]) - pad, 0), min(int(cs[-1]) + 1 + pad, mask.shape[2])
    sub = np.pad(mask[k0:k1, r0:r1, c0:c1], ((0, 0), (pad, pad), (pad, pad)))
    if a:
        sub = ndi.binary_dilation(sub, _SQUARE2, iterations=a)
    sub = ndi.binary_dilation(sub, _CROSS2, iterations=b)
    sub = ndi.binary_erosion(sub, _CROSS2, iterations=b, border_value=1)
    if a:
        sub = ndi.binary_erosion(sub, _SQUARE2, iterations=a, border_value=1)
    out = mask.copy()
    out[k0:k1, r0:r1, c0:c1] |= sub[:, pad:-pad, pad:-pad]
    return out


def close_slices_mm(mask: np.ndarray, radius_mm: float, dy: float, dx: float) -> np.ndarray:
    """Per-slice closing of a (K, R, C) bool mask with a disc of ``radius_mm`` (exact, via
    distance transforms; row/column spacing ``dy``/``dx`` mm); the array border does not erode
    it. Used to close a lung region over a juxtapleural nodule."""
    if radius_mm <= 0 or not mask.any():
        return mask
    samp = (1e6, dy, dx)  # a huge slice spacing keeps the distance transform per slice
    grown = ndi.distance_transform_edt(~mask, sampling=samp) <= radius_mm
    if grown.all():
        return grown  # type: ignore[no-any-return]
    pad = ((0, 0), (1, 1), (1, 1))
    shrunk = ndi.distance_transform_edt(np.pad(grown, pad, constant_values=True), sampling=samp)[:, 1:-1, 1:-1]
    return mask | (shrunk > radius_mm)  # type: ignore[no-any-return]


def _gap_column(mask: np.ndarray) -> int | None:
    """Column (of a (K, R, C) mask) in the gap between the two lungs: the least occupied column in
    the middle 40 % of the mask's column extent; None when the mask is empty."""
    prof = mask.sum(axis=(0, 1))
    cols = np.flatnonzero(prof)
    if len(cols) == 0:
        return None
    lo, hi = int(cols[0]), int(cols[-1])
    a, b = lo + int(0.3 * (hi - lo)), hi - int(0.3 * (hi - lo))
    if b <= a:
        return (lo + hi) // 2
    seg = prof[a : b + 1]
    best = np.flatnonzero(seg == seg.min())
    return a + int(best[len(best) // 2])


def lung_mask(volume: Volume, config: LungConfig | None = None) -> np.ndarray:
    """The lungs of a CT volume: (K, R, C) bool on the volume's grid.

    Vessels, airways walls and nodules inside the lungs — juxtapleural nodules included — are
    part of the mask. A volume without lungs (e.g. an abdomen) gives an all-False mask.
    Raises :class:`UnsupportedInputError` for colour pixels.
    """
    cfg = config or LungConfig()
    px = volume.pixels
    if px.ndim != 3:
        raise UnsupportedInputError(f"lung_mask needs a (K, R, C) HU volume, got pixels of shape {px.shape}")
    K, R, C = px.shape
    f = _factor(volume, cfg.coarse_mm)
    o = f // 2
    sp = volume.spacing_mm
    px_mm2 = float(sp[1] * sp[2]) * f * f
    air = px[:, o::f, o::f] < cfg.air_hu
    # 2. outside the body: air touching the in-plane border, per slice
    lab, n = ndi.label(air, structure=_CROSS2)
    outside = np.zeros(n + 1, bool)
    outside[_border_ids(lab)] = True
    outside[0] = True
    inner = ~outside[lab]
    del lab
    # 3. large 3D components
    lab, n = ndi.label(inner)
    if n == 0:
        return np.zeros(px.shape, bool)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    min_vox = max(cfg.min_fraction * sizes.max(), cfg.min_volume_ml * 1000.0 / (px_mm2 * float(sp[0])))
    keep = sizes >= min_vox
    keep[0] = False
    lung = keep[lab]
    del lab
    # 4. per side: close (juxtapleural nodules), then fill holes
    gap = _gap_column(lung)
    radius_px = cfg.close_mm / (f * float(min(sp[1], sp[2])))
    if gap is not None and radius_px >= 1:
        right, left = lung.copy(), lung.copy()
        right[:, :, gap:] = False
        left[:, :, :gap] = False
        lung = lung | _close_2d(right, radius_px) | _close_2d(left, radius_px)
    lung = _fill_holes_2d(lung, cfg.max_hole_mm2 / px_mm2)
    if f == 1:
        return lung
    # 5. back to the full grid: coarse sample i sits at full index f * i + o
    ri = np.clip(np.rint((np.arange(R) - o) / f).astype(np.intp), 0, lung.shape[1] - 1)
    ci = np.clip(np.rint((np.arange(C) - o) / f).astype(np.intp), 0, lung.shape[2] - 1)
    return np.take(np.take(lung, ri, axis=1), ci, axis=2)


def lung_info(mask: np.ndarray | None, volume: Volume) -> LungInfo | None:
    """Extent facts of ``mask`` (K, R, C) bool on ``volume``'s grid; None without a mask.

    Positions use the affine (LPS mm); rows are taken at the image centre for the x of a column,
    which is exact for axial images and close for slightly tilted ones.
    """
    if mask is None:
        return None
    K, R, C = mask.shape
    per_kc = np.asarray(np.any(mask, axis=1), dtype=bool)  # (K, C)
    ks = np.flatnonzero(per_kc.any(axis=1))
    nan = np.full((K, 2), np.nan)
    cols = np.arange(C, dtype=np.float64)
    xs = volume.index_to_lps(np.stack([np.zeros(C), np.full(C, (R - 1) / 2), cols], axis=1))[:, 0]
    if len(ks) == 0:
        return LungInfo(None, None, float(xs.mean()), nan, nan.copy())
    zs = volume.index_to_lps(np.stack([ks.astype(float), np.full(len(ks), (R - 1) / 2),
                                       np.full(len(ks), (C - 1) / 2)], axis=1))[:, 2]
    gap = _gap_column(mask[:: max(1, K // 64)])
    mid_x = float(xs[gap]) if gap is not None else float(xs.mean())
    medial, lateral = nan.copy(), nan.copy()
    dist = xs - mid_x  # signed: > 0 patient's left
    for side, sign in ((0, -1.0), (1, 1.0)):
        on = per_kc & (sign * dist > 0)[None, :]
        d = np.where(on, sign * dist[None, :], np.nan)
        has = on.any(axis=1)
        if has.any():
            medial[has, side] = np.nanmin(d[has], axis=1)
            lateral[has, side] = np.nanmax(d[has], axis=1)
    return LungInfo(float(zs.max()), float(zs.min()), mid_x, medial, lateral)


def lung_sides(mask: np.ndarray, info: LungInfo, volume: Volume) -> np.ndarray:
    """(K, R, C) uint8 side labels of ``mask``: 0 outside, 1 right lung, 2 left lung
    (split at ``info.midline_x_mm``; the patient's left is LPS +x)."""
    C = mask.shape[2]
    xs = volume.index_to_lps(np.stack([np.zeros(C), np.zeros(C), np.arange(C, dtype=np.float64)], axis=1))[:, 0]
    left = (xs > info.midline_x_mm)[None, None, :]
    return np.where(mask, np.where(left, 2, 1), 0).astype(np.uint8)


__all__ = ["LungConfig", "LungInfo", "close_slices_mm", "lung_info", "lung_mask", "lung_sides"]

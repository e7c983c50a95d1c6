"""What a radiologist measures on a lesion: segmentation, long/short axis, volume, HU, type, location.

CT (:func:`measure_lesion`), per lesion, in a region around its centre resampled in-plane to
``fine_mm`` pixels (linear interpolation, so the boundary falls between voxels):

1. the local lung HU (``bg``: median of lung-like voxels around the lesion) and the lesion's
   outer material HU (``level``): ground glass when most voxels 1–2 mm inside the lesion's faint
   outline are sub-solid (ground-glass and part-solid nodules), else the centre's median (solid);
2. threshold at the midpoint ``(bg + level) / 2`` — the 50 % partial-volume iso-surface, which
   keeps the true boundary under blur — fill holes, and keep the component at the centre:
   inside an ellipsoid of ``growth_factor`` × the detector's box / slice extent; inside a local
   per-slice closing of the lung (a juxtapleural nodule stops at the pleura); after an opening
   of ``open_fraction`` × the expected radius (thinner attached vessels are cut off); and what
   still runs on to the growth limit (a thick vessel) is split off at the narrowest neck by a
   watershed of the distance map;
3. volume: voxel count on the fine grid (``partial_volume`` instead counts boundary voxels by
   their HU fraction; on phantoms the count measured better); effective diameter from it;
   long axis: the longest in-plane chord on the axial slice of largest area; short axis: the
   longest chord perpendicular to it (perpendicular in mm); type: solid when ≥ ``solid_fraction``
   of the volume is above ``solid_hu``, part-solid when a compact solid core near the centre
   remains (vessels crossing ground glass are tubular and do not count), else ground-glass.

Projection images (:func:`measure_box_2d`) are measured from the box in mm.
Conventions: :mod:`lesionlens.pipeline.types` (pixel centre = (c + 0.5, r + 0.5); LPS mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError, UnsupportedInputError
from lesionlens.pipeline.lung import LungInfo, close_slices_mm
from lesionlens.pipeline.morphology import axes, component_at, elongation, open_mm, split_at_neck
from lesionlens.pipeline.types import (
    AxisLine,
    Lesion,
    LesionMask,
    Location,
    Measurements,
    NoduleType,
)


@dataclass(frozen=True)
class MeasureConfig:
    """Lesion-measurement settings (HU thresholds, mm distances).

    threshold_hu: None = adaptive midpoint between local lung and lesion HU; a number = fixed.
    growth_factor: the segmentation stays inside the ellipsoid of this × the expected semi-axes
      (half the box's sides, half the slice span) plus one voxel, around the centre.
    open_fraction: opening radius as a fraction of the expected radius (cuts thinner vessels).
    wall_close_factor: per-slice closing of the local lung, radius = this × expected radius;
      it closes the lung over a juxtapleural nodule so the segmentation stops at the pleura.
    smooth_mm: Gaussian sigma before thresholding (at most 0.15 × the expected radius).
    air_hu: below is lung/air.
    lung_hu: lung HU when the surroundings give none. min_contrast_hu: the centre must exceed
      the lung by this much, else the box is measured instead (no segmentation).
    outline_contrast_hu / outer_depth_mm: the lesion's outer material (whose midpoint with the
      lung is the threshold) is ground glass when most voxels ``outer_depth_mm`` inside its faint
      outline (``bg + outline_contrast_hu``) are below ``solid_hu`` (their median is its HU);
      else it is solid and the centre's median HU is used.
    solid_hu: voxels above are solid. solid_fraction / ggo_fraction: solid when at least this
      volume fraction is solid; ground-glass below ``ggo_fraction``; part-solid between.
    partial_volume: count boundary voxels by HU fraction (else count voxels above threshold).
    fine_mm: the region is resampled in-plane to at most this pixel size (linear interpolation).
    core_max_elongation: solid parts more elongated than this are vessels, not a solid core.
    max_radius_mm: cap on the expected semi-axes (a huge box is measured within 1.3 × this).
    """

    threshold_hu: float | None = None
    growth_factor: float = 1.3
    open_fraction: float = 0.5
    wall_close_factor: float = 2.0
    smooth_mm: float = 0.5
    air_hu: float = -500.0
    lung_hu: float = -850.0
    min_contrast_hu: float = 60.0
    outline_contrast_hu: float = 100.0
    outer_depth_mm: tuple[float, float] = (1.0, 2.0)
    solid_hu: float = -300.0
    solid_fraction: float = 0.7
    ggo_fraction: float = 0.04
    partial_volume: bool = False
    fine_mm: float = 0.8
    core_max_elongation: float = 2.5
    max_radius_mm: float = 25.0

    def __post_init__(self) -> None:
        if self.growth_factor < 1.0 or self.wall_close_factor < 0 or not 0 <= self.open_fraction < 1:
            raise ConfigError("measure: growth_factor must be >= 1, wall_close_factor >= 0, open_fraction in [0, 1)")
        if not 0.0 <= self.ggo_fraction <= self.solid_fraction <= 1.0:
            raise ConfigError("measure: need 0 <= ggo_fraction <= solid_fraction <= 1, got "
                              f"{self.ggo_fraction}, {self.solid_fraction}")
        if self.smooth_mm < 0 or self.min_contrast_hu <= 0:
            raise ConfigError("measure: smooth_mm must be >= 0 and min_contrast_hu > 0")


def _centre_index(volume: Volume, lesion: Lesion) -> np.ndarray:
    """(3,) fractional (k, r, c) of the lesion centre."""
    if lesion.center_mm is not None:
        idx = volume.lps_to_index(np.asarray(lesion.center_mm, np.float64))
        if np.all(np.isfinite(idx)):
            return idx
    b = np.asarray(lesion.bbox_px, np.float64)
    return np.array([lesion.key_k, (b[1] + b[3]) / 2 - 0.5, (b[0] + b[2]) / 2 - 0.5])


def _extent(lesion: Lesion, sp: np.ndarray, cap_mm: float) -> np.ndarray:
    """(3,) expected semi-axes (k, r, c) in mm: half the box's sides, half the slice span
    (at least 0.6 × the larger in-plane semi-axis), never under 1.5 in-plane pixels nor over
    ``cap_mm``."""
    b = np.asarray(lesion.bbox_px, np.float64)
    a_c, a_r = 0.5 * (b[2] - b[0]) * sp[2], 0.5 * (b[3] - b[1]) * sp[1]
    floor = 1.5 * float(max(sp[1], sp[2]))
    a_c, a_r = max(a_c, floor), max(a_r, floor)
    a_k = 0.5 * (lesion.slices[1] - lesion.slices[0] + 1) * sp[0]
    a_k = float(np.clip(a_k, 0.6 * max(a_c, a_r), 1.5 * max(a_c, a_r)))
    return np.minimum(np.array([a_k, a_r, a_c]), cap_mm)


def _fine_axes(mask: np.ndarray, roi: _Roi) -> tuple[AxisLine, AxisLine]:
    """Axes of a fine (k, r, c) mask on its slice of largest area (ties: the middle one), with
    end points in volume pixels."""
    areas = mask.sum(axis=(1, 2))
    best = np.flatnonzero(areas == areas.max())
    kk = int(best[len(best) // 2])
    la, sa = axes(mask[kk], int(roi.lo[0]) + kk, float(roi.sp[1]), float(roi.sp[2]))
    f, r0, c0 = roi.f, float(roi.lo[1]), float(roi.lo[2])

    def back(a: AxisLine) -> AxisLine:
        return AxisLine(a.k, (a.start[0] / f + c0, a.start[1] / f + r0), (a.end[0] / f + c0, a.end[1] / f + r0),
                        a.length_mm)

    return back(la), back(sa)


# ------------------------------------------------------------------------------ CT
@dataclass
class _Roi:
    """A region around the lesion, resampled ``f``× finer in-plane (linear interpolation), so
    thresholds place the boundary between voxels and morphology has room to work.

    lo: (3,) volume index of the region's first voxel; hu: raw HU on the volume grid;
    sp: (3,) fine spacing mm; sm / dist / allowed: fine smoothed HU, mm from the lesion centre,
    ``norm`` the position in the growth-limit ellipsoid (1 on its surface), and where the lesion
    may grow (``allowed``: inside that ellipsoid and the local lung)."""

    lo: np.ndarray
    f: int
    hu: np.ndarray
    sp: np.ndarray
    sm: np.ndarray
    dist: np.ndarray
    norm: np.ndarray
    allowed: np.ndarray

    def coarse(self, fine: np.ndarray) -> np.ndarray:
        """A fine bool mask → the volume grid (voxels at least half covered)."""
        if self.f == 1:
            return fine
        k, r, c = self.hu.shape
        return fine.reshape(k, r, self.f, c, self.f).mean(axis=(2, 4)) >= 0.5  # type: ignore[no-any-return]


def _box(centre: np.ndarray, half: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.clip(np.floor(centre - half).astype(int), 0, shape - 1)
    return lo, np.clip(np.ceil(centre + half).astype(int) + 1, lo + 1, shape)


def _roi(volume: Volume, centre: np.ndarray, ext: np.ndarray, lung: np.ndarray | None,
         cfg: MeasureConfig) -> tuple[_Roi, float]:
    """The fine region inside the growth limit, and the local lung HU (median of lung-like
    voxels beyond 1.2 × the expected radius in the wider region the lung closing needs)."""
    sp = volume.spacing_mm
    shape = np.array(volume.pixels.shape)
    lim = cfg.growth_factor * ext + sp  # semi-axes of the growth limit, mm
    close = cfg.wall_close_factor * float(ext.max())
    blo, bhi = _box(centre, (lim + np.array([0.0, close, close])) / sp, shape)
    big = np.asarray(volume.pixels[blo[0] : bhi[0], blo[1] : bhi[1], blo[2] : bhi[2]], np.float32)
    smooth = min(cfg.smooth_mm, 0.15 * float(ext[1:].max()))  # a tiny lesion is not smoothed away
    sig = [smooth / s if smooth / s >= 0.3 else 0.0 for s in sp]
    sm_big = ndi.gaussian_filter(big, sig, mode="nearest") if any(sig) else big
    air = sm_big < cfg.air_hu
    if lung is not None:
        air |= lung[blo[0] : bhi[0], blo[1] : bhi[1], blo[2] : bhi[2]]
    lung_big = close_slices_mm(air, close, float(sp[1]), float(sp[2]))
    g = np.ogrid[blo[0] : bhi[0], blo[1] : bhi[1], blo[2] : bhi[2]]
    far = sum(((gi - ci) * si) ** 2 for gi, ci, si in zip(g, centre, sp, strict=True)) > (1.2 * float(ext[1:].max())) ** 2
    ref = sm_big[far & lung_big & (sm_big < cfg.air_hu - 100.0)]
    bg = float(np.median(ref)) if ref.size >= 10 else cfg.lung_hu
    lo, hi = _box(centre, lim / sp, shape)
    crop = tuple(slice(a - b, c - b) for a, c, b in zip(lo, hi, blo, strict=True))
    hu, sm, local_lung = big[crop], sm_big[crop], lung_big[crop]
    f = max(1, int(np.ceil(float(min(sp[1], sp[2])) / cfg.fine_mm - 1e-6)))
    if f > 1:
        sm = ndi.zoom(sm, (1, f, f), order=1, mode="nearest", grid_mode=True)
        local_lung = np.repeat(np.repeat(local_lung, f, axis=1), f, axis=2)
    fsp = np.array([sp[0], sp[1] / f, sp[2] / f])
    k, r, c = sm.shape
    pos = [lo[0] + np.arange(k, dtype=float), lo[1] + (np.arange(r) + 0.5) / f - 0.5,
           lo[2] + (np.arange(c) + 0.5) / f - 0.5]
    d = [(p - ci) * si for p, ci, si in zip(pos, centre, sp, strict=True)]
    dist = np.sqrt(d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2)
    q = [(di / li) ** 2 for di, li in zip(d, lim, strict=True)]
    norm = np.sqrt(q[0][:, None, None] + q[1][None, :, None] + q[2][None, None, :])
    return _Roi(lo, f, hu, fsp, sm, dist, norm, (norm <= 1.0) & local_lung), bg


def _segment(roi: _Roi, thr: float, opening_mm: float, near_mm: float, split: bool = True) -> np.ndarray:
    """The lesion component at ``thr`` (fine grid): threshold, fill holes, opening (cuts thinner
    vessels), the component at the centre, back the boundary layer the opening shaved; then
    what reaches the growth limit (a vessel running on) is split off along the narrowest neck."""
    m = ndi.binary_fill_holes((roi.sm > thr) & roi.allowed)
    if opening_mm >= float(min(roi.sp[1], roi.sp[2])):
        comp = component_at(open_mm(m, opening_mm, roi.sp), roi.dist, near_mm)
        if comp.any():
            m = m & ndi.binary_dilation(comp)
    m = component_at(m, roi.dist, near_mm)
    far = m & (roi.norm >= 0.95)
    if not split or not far.any():
        return m
    return split_at_neck(m, far, roi.dist, roi.sp, near_mm)


def _core(solid: np.ndarray, roi: _Roi, r_exp: float, max_elong: float) -> np.ndarray:
    """The solid core: solid voxels opened at a quarter of the lesion radius (thin vessels go),
    the compact components near the centre (vessels crossing ground glass are tubular)."""
    rho = 0.25 * r_exp
    if rho >= float(min(roi.sp[1], roi.sp[2])):
        solid = open_mm(solid, rho, roi.sp)
    lab, n = ndi.label(solid)
    out = np.zeros_like(solid)
    for i, box in enumerate(ndi.find_objects(lab), 1):
        if box is None:
            continue
        part = lab[box] == i
        if roi.dist[box][part].min() <= 0.5 * r_exp and elongation(part, roi.sp) <= max_elong:
            out[box] |= part
    return out


def _pv_volume(roi: _Roi, mask: np.ndarray, bg: float, level: float) -> float:
    """Partial-volume corrected volume (fine grid): interior voxels count 1; the inner boundary
    layer and the outer layer below the threshold count their HU fraction between ``bg`` and
    ``level`` (clipped to [0, 1])."""
    inner = ndi.binary_erosion(mask)
    band = (ndi.binary_dilation(mask) & roi.allowed & ~inner)
    frac = np.clip((roi.sm[band] - bg) / max(level - bg, 1.0), 0.0, 1.0)
    return float(inner.sum() + frac.sum()) * float(np.prod(roi.sp))


def _box_measurements(volume: Volume, k: int, bbox: np.ndarray, dy: float, dx: float,
                      hu: bool) -> Measurements:
    """Axes from the box (axis-aligned), an inscribed-ellipse mask; no volume or type."""
    R, C = volume.pixels.shape[1:3]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    c0, r0 = int(np.clip(np.floor(x1), 0, C - 1)), int(np.clip(np.floor(y1), 0, R - 1))
    c1, r1 = int(np.clip(np.ceil(x2), c0 + 1, C)), int(np.clip(np.ceil(y2), r0 + 1, R))
    w_mm, h_mm = (x2 - x1) * dx, (y2 - y1) * dy
    xc, yc = (x1 + x2) / 2, (y1 + y2) / 2
    horiz = AxisLine(k, (x1, yc), (x2, yc), w_mm)
    vert = AxisLine(k, (xc, y1), (xc, y2), h_mm)
    la, sa = (horiz, vert) if w_mm >= h_mm else (vert, horiz)
    yy, xx = np.ogrid[r0:r1, c0:c1]
    ax, ay = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
    ell = ((xx + 0.5 - xc) / ax) ** 2 + ((yy + 0.5 - yc) / ay) ** 2 <= 1.0
    if not ell.any():
        ell[int(np.clip(int(yc) - r0, 0, r1 - r0 - 1)), int(np.clip(int(xc) - c0, 0, c1 - c0 - 1))] = True
    mean_hu = max_hu = None
    if hu:
        vals = np.asarray(volume.pixels[k, r0:r1, c0:c1], np.float64)[ell]
        mean_hu, max_hu = float(vals.mean()), float(vals.max())
    mean_d = (la.length_mm + sa.length_mm) / 2
    return Measurements(la, sa, mean_d, float(np.sqrt(max(w_mm, 0.0) * max(h_mm, 0.0))), None, mean_hu, max_hu,
                        None, 0.0, LesionMask(ell[None], (k, r0, c0)))


def measure_lesion(volume: Volume, lesion: Lesion, config: MeasureConfig | None = None,
                   lung: np.ndarray | None = None) -> Measurements:
    """Segment and measure one CT lesion around ``lesion.center_mm`` / ``bbox_px`` on ``key_k``.

    volume.pixels: (K, R, C) float32 HU. lung: (K, R, C) bool lung mask (optional; it helps to
    stop juxtapleural nodules at the pleura). When the centre is well outside the lung or no
    lesion stands out from the lung there, the box is measured instead (``volume_mm3`` and
    ``nodule_type`` None, an ellipse in the box as mask).
    """
    cfg = config or MeasureConfig()
    if volume.pixels.ndim != 3:
        raise UnsupportedInputError(f"measure_lesion needs a (K, R, C) HU volume, got {volume.pixels.shape}")
    sp = volume.spacing_mm
    centre = _centre_index(volume, lesion)
    k_key = int(np.clip(lesion.key_k, 0, volume.pixels.shape[0] - 1))
    fallback = _box_measurements(volume, k_key, np.asarray(lesion.bbox_px), float(sp[1]), float(sp[2]), True)
    if np.any(centre < -0.5) or np.any(centre > np.array(volume.pixels.shape) - 0.5):
        return fallback
    ext = _extent(lesion, sp, cfg.max_radius_mm)
    r_exp = float(ext[1:].max())
    roi, bg = _roi(volume, centre, ext, lung, cfg)
    if not roi.allowed[roi.dist <= max(0.5 * float(ext[1:].max()), float(sp.max()))].any():
        return fallback  # centred well outside the lung (chest wall, mediastinum): nothing to segment
    core = roi.dist <= max(0.5 * r_exp, 0.6 * float(max(sp[1], sp[2])))
    if not core.any():
        core = roi.dist <= roi.dist.min()
    peak = float(np.median(roi.sm[core]))
    if peak - bg < cfg.min_contrast_hu and cfg.threshold_hu is None:
        return fallback
    ball = cfg.open_fraction * r_exp
    near = max(0.75 * r_exp, float(sp.max()))
    if cfg.threshold_hu is not None:
        level = peak
        mask = _segment(roi, float(cfg.threshold_hu), ball, near)
    else:
        # the lesion's outer material: what lies 1–2 mm inside its faint outline — ground glass
        # (a ground-glass or part-solid nodule) or else solid (then its centre HU is the level)
        low = _segment(roi, bg + cfg.outline_contrast_hu, ball, near, split=False)
        depth = ndi.distance_transform_edt(low, sampling=(1e6, roi.sp[1], roi.sp[2]))  # in-plane
        px = float(max(sp[1], sp[2]))  # coarse pixels blur the outline over about one pixel
        d0 = max(cfg.outer_depth_mm[0], 0.75 * px)
        d1 = d0 + max(cfg.outer_depth_mm[1] - cfg.outer_depth_mm[0], 0.75 * px)
        zoff = np.abs(roi.lo[0] + np.arange(roi.sm.shape[0]) - centre[0]) * sp[0]
        mid = (zoff <= max(0.5 * ext[0], float(sp[0])))[:, None, None]  # not the blurred caps
        vals = roi.sm[low & (depth >= d0) & (depth <= d1) & (roi.dist <= r_exp) & mid]
        sub = vals[vals < cfg.solid_hu]
        level = peak
        if len(vals) >= 8 and len(sub) >= 0.5 * len(vals) and np.median(sub) - bg >= cfg.min_contrast_hu:
            level = float(np.median(sub))
        mask = _segment(roi, (bg + level) / 2, ball, near)
    if not mask.any():
        return fallback
    fine_vox = float(np.prod(roi.sp))
    vol = _pv_volume(roi, mask, bg, level) if cfg.partial_volume else float(mask.sum()) * fine_vox
    la, sa = _fine_axes(mask, roi)
    mean_d = (la.length_mm + sa.length_mm) / 2
    solid = mask & (roi.sm > cfg.solid_hu)
    if float(solid.sum()) >= cfg.solid_fraction * float(mask.sum()):
        ntype: NoduleType = "solid"
        solid_mm = mean_d
    else:
        part = _core(solid, roi, r_exp, cfg.core_max_elongation)
        if float(part.sum()) < cfg.ggo_fraction * float(mask.sum()):
            ntype, solid_mm = "ground-glass", 0.0
        else:
            sla, ssa = _fine_axes(part, roi)
            ntype, solid_mm = "part-solid", (sla.length_mm + ssa.length_mm) / 2
    cmask = roi.coarse(mask)
    if not cmask.any():  # smaller than half a voxel everywhere: keep its best-covered voxel
        cov = mask.reshape(cmask.shape[0], cmask.shape[1], roi.f, cmask.shape[2], roi.f).mean(axis=(2, 4))
        cmask = cov == cov.max()
    vals = roi.hu[cmask]
    ks, rs, cs = (np.flatnonzero(cmask.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    crop = cmask[ks[0] : ks[-1] + 1, rs[0] : rs[-1] + 1, cs[0] : cs[-1] + 1]
    off = (int(roi.lo[0] + ks[0]), int(roi.lo[1] + rs[0]), int(roi.lo[2] + cs[0]))
    return Measurements(la, sa, mean_d, float((6.0 * vol / np.pi) ** (1 / 3)), vol, float(vals.mean()),
                        float(vals.max()), ntype, float(solid_mm), LesionMask(crop.copy(), off))


# ------------------------------------------------------------------------------ 2D
def measure_box_2d(volume: Volume, k: int, bbox_px: np.ndarray) -> Measurements:
    """Measure a box on a projection image (radiograph, mammogram): bbox_px (4,) xyxy pixels on
    image ``k``. Sizes in mm from ``metadata["pixel_spacing"]`` (row, col mm) when present, else
    the volume's spacing. Long/short axes are the box's sides; effective diameter sqrt(w × h)
    (the disc with the area of the inscribed ellipse); mask: that ellipse, (1, h, w)."""
    ps = volume.metadata.get("pixel_spacing") if isinstance(volume.metadata, dict) else None
    if isinstance(ps, (list, tuple)) and len(ps) == 2 and all(float(v) > 0 for v in ps):
        dy, dx = float(ps[0]), float(ps[1])
    else:
        dy, dx = float(volume.spacing_mm[1]), float(volume.spacing_mm[2])
    kk = int(np.clip(k, 0, volume.pixels.shape[0] - 1))
    return _box_measurements(volume, kk, np.asarray(bbox_px, np.float64), dy, dx, False)


# ------------------------------------------------------------------------------ location
def locate(volume: Volume, lesion: Lesion, lung_info: LungInfo | None) -> Location:
    """Side (LPS +x is the patient's left), zone (thirds of the lungs' cranio-caudal extent;
    +z is head), depth (central: inner third from the mediastinum to the lateral lung edge on
    the key slice), 1-based slice number, SOP Instance UID and frame of the key slice."""
    k = int(lesion.key_k)
    uid = volume.sop_instance_uids[k] if 0 <= k < len(volume.sop_instance_uids) else ""
    frame = int(volume.frame_numbers[k]) if 0 <= k < len(volume.frame_numbers) else 1
    loc = Location(None, None, None, k + 1, uid, frame)
    if not volume.has_patient_geometry and lesion.center_mm is None:
        return loc
    if lesion.center_mm is not None:
        c = np.asarray(lesion.center_mm, np.float64)
    else:
        b = np.asarray(lesion.bbox_px, np.float64)
        c = volume.index_to_lps(np.array([k, (b[1] + b[3]) / 2 - 0.5, (b[0] + b[2]) / 2 - 0.5]))
    if lung_info is None or lung_info.empty:
        C = volume.pixels.shape[2]
        mid = float(volume.index_to_lps(np.array([k, volume.pixels.shape[1] / 2 - 0.5, C / 2 - 0.5]))[0])
        loc.side = "left" if c[0] > mid else "right"
        return loc
    info = lung_info
    d = float(c[0] - info.midline_x_mm)
    loc.side = "left" if d > 0 else "right"
    top, bottom = info.z_top_mm, info.z_bottom_mm
    assert top is not None and bottom is not None
    t = (top - float(c[2])) / max(top - bottom, 1e-6)
    loc.zone = "upper" if t < 1 / 3 else "lower" if t > 2 / 3 else "middle"
    side = 1 if d > 0 else 0
    if 0 <= k < len(info.medial_mm):
        med, lat = info.medial_mm[k, side], info.lateral_mm[k, side]
        if np.isfinite(med) and np.isfinite(lat) and lat > med:
            loc.depth = "central" if (abs(d) - med) / (lat - med) < 1 / 3 else "peripheral"
    return loc


__all__ = ["MeasureConfig", "elongation", "locate", "measure_box_2d", "measure_lesion"]

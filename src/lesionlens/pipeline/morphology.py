"""Mask geometry used by the lesion measurements (:mod:`lesionlens.pipeline.measure`) and the
false-positive filters: long/short axes of a 2D mask, an exact Euclidean opening, the component
at a point, a watershed split at the narrowest neck, and elongation.

Conventions: masks are ``(k, r, c)`` bool arrays on a grid of spacing ``sp`` (mm); ``dist_mm`` is
each voxel's distance from the lesion centre in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from lesionlens.pipeline.types import AxisLine


# ------------------------------------------------------------------------------ axes (2D)
def axes(mask2d: np.ndarray, k: int, dy: float, dx: float, r0: int = 0, c0: int = 0) -> tuple[AxisLine, AxisLine]:
    """Long axis (longest chord) and short axis (longest chord perpendicular to it, in mm) of a
    (h, w) bool mask whose pixel (0, 0) is image pixel (r0, c0); end points in image pixels."""
    rr, cc = np.nonzero(mask2d)
    pts = np.stack([(cc + c0 + 0.5) * dx, (rr + r0 + 0.5) * dy], axis=1)  # (N, 2) mm (x, y)
    cand = pts
    if len(pts) >= 4:
        try:
            cand = pts[ConvexHull(pts).vertices]
        except QhullError:  # collinear pixels
            cand = pts
    d2 = ((cand[:, None, :] - cand[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    a, b = cand[i], cand[j]
    if d2[i, j] == 0:
        u = np.array([1.0, 0.0])
    else:
        u = (b - a) / np.sqrt(d2[i, j])
        if u[0] < 0 or (u[0] == 0 and u[1] < 0):
            a, b, u = b, a, -u
    v = np.array([-u[1], u[0]])

    def half(w: np.ndarray) -> float:  # half the projected width of one pixel along w
        return 0.5 * (abs(w[0]) * dx + abs(w[1]) * dy)

    hu_, hv = half(u), half(v)
    a, b = a - hu_ * u, b + hu_ * u
    s, t = pts @ u, pts @ v
    bins = np.rint(s / min(dx, dy)).astype(np.int64)
    order = np.argsort(bins, kind="stable")
    bs, ts, ss = bins[order], t[order], s[order]
    starts = np.flatnonzero(np.r_[True, bs[1:] != bs[:-1]])
    tmin, tmax = np.minimum.reduceat(ts, starts), np.maximum.reduceat(ts, starts)
    smean = np.add.reduceat(ss, starts) / np.diff(np.r_[starts, len(ss)])
    m = int(np.argmax(tmax - tmin))
    p = smean[m] * u
    sa, sb = p + (tmin[m] - hv) * v, p + (tmax[m] + hv) * v

    def line(p1: np.ndarray, p2: np.ndarray) -> AxisLine:
        return AxisLine(k, (float(p1[0] / dx), float(p1[1] / dy)), (float(p2[0] / dx), float(p2[1] / dy)),
                        float(np.linalg.norm(p2 - p1)))

    return line(a, b), line(sa, sb)


# ------------------------------------------------------------------------------ masks
def open_mm(mask: np.ndarray, radius_mm: float, sp: np.ndarray) -> np.ndarray:
    """Opening of a (k, r, c) bool mask with a Euclidean ball of ``radius_mm`` on a grid of
    spacing ``sp`` (exact, via distance transforms; the array border does not erode)."""
    core = ndi.distance_transform_edt(mask, sampling=sp) > radius_mm
    if not core.any():
        return core
    return (ndi.distance_transform_edt(~core, sampling=sp) <= radius_mm) & mask  # type: ignore[no-any-return]


def component_at(mask: np.ndarray, dist: np.ndarray, near_mm: float) -> np.ndarray:
    """The connected component of ``mask`` at the centre (the one with the voxel nearest the
    centre within ``near_mm``); all False when none."""
    lab, n = ndi.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    d = np.where(lab > 0, dist, np.inf)
    i = int(np.argmin(d))
    if d.flat[i] > near_mm:
        return np.zeros_like(mask)
    return lab == lab.flat[i]  # type: ignore[no-any-return]


def split_at_neck(m: np.ndarray, far: np.ndarray, dist_mm: np.ndarray, sp: np.ndarray, near_mm: float,
                  levels: int = 8) -> np.ndarray:
    """Watershed of the mask's distance map (flooding by levels from the deepest) between two
    seeds — the lesion's centre and what reaches the growth limit (a vessel or the wall running
    on) — so they part where the shape is narrowest. At each level, newly flooded voxels join
    the nearest seed region of their connected part. Without a neck (the cut as wide as the
    centre part: a tube) the mask is returned whole."""
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(m))
    mb, dist = m[box], dist_mm[box]
    edt = ndi.distance_transform_edt(mb, sampling=sp)
    centre = mb & (dist <= max(0.3 * near_mm, float(sp.max())))
    if not centre.any():
        return m
    centre &= edt >= 0.5 * float(edt[centre].max())
    lab = np.zeros(mb.shape, np.int8)
    lab[far[box]] = 2
    lab[centre] = 1
    for t in np.linspace(float(edt.max()), 0.0, levels + 1)[1:]:
        flooded = mb & (edt >= t) if t > 0 else mb
        new = flooded & (lab == 0)
        if not new.any():
            continue
        comp, n = ndi.label(flooded)
        seeded = np.zeros(n + 1, bool)
        seeded[comp[lab > 0]] = True
        seeded[0] = False
        new &= seeded[comp]
        if new.any():
            idx = ndi.distance_transform_edt(lab == 0, sampling=sp, return_distances=False, return_indices=True)
            lab[new] = lab[tuple(i[new] for i in idx)]
    part = lab == 1
    cut = part & ndi.binary_dilation(lab == 2)
    if cut.any() and float(edt[cut].max()) > 0.85 * float(edt[part].max()):
        return m  # no neck: a tube (a vessel itself) is not cut into pieces
    out = np.zeros_like(m)
    out[box] = part
    return component_at(out, dist_mm, near_mm)


def elongation(mask: np.ndarray, spacing_mm: np.ndarray) -> float:
    """Ratio of the longest to the shortest principal axis (sqrt of the second-moment
    eigenvalues, each voxel counted as a uniform box) of a (k, r, c) bool mask, in mm.
    1 for a sphere, the axis ratio for an ellipsoid, ≈ 0.58 × length / radius for a tube."""
    idx = np.argwhere(mask).astype(np.float64) * np.asarray(spacing_mm, np.float64)
    if len(idx) == 0:
        return 1.0
    cov = np.cov(idx, rowvar=False, bias=True) if len(idx) > 1 else np.zeros((3, 3))
    cov = cov + np.diag(np.asarray(spacing_mm, np.float64) ** 2 / 12.0)
    ev = np.linalg.eigvalsh(cov)
    return float(np.sqrt(ev[-1] / max(ev[0], 1e-12)))


__all__ = ["axes", "component_at", "elongation", "open_mm", "split_at_neck"]

"""Pulmonary vessel trees: grown as tapered cylinders from each hilum, drawn in local boxes.

A vessel cut across looks like a small nodule on one slice, so the trees are dense: radius about
5 mm at the hilum, splitting by Murray's law (``r0³ = r1³ + r2³``) down to under 1 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionlens.synth.anatomy import LUNG, VESSEL, Anatomy, ScanGeometry


@dataclass
class VesselTree:
    """Segments of all trees as arrays (LPS mm).

    start, end: (N, 3) float64 LPS mm; r_start, r_end: (N,) float64 radii in mm;
    parent: (N,) int64 index of the parent segment (-1 for a root); tree: (N,) int64 tree id.
    """

    start: np.ndarray
    end: np.ndarray
    r_start: np.ndarray
    r_end: np.ndarray
    parent: np.ndarray
    tree: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def _unit(v: np.ndarray) -> np.ndarray:
    """Normalise the last axis."""
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def _rotate_away(d: np.ndarray, angle: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors at ``angle`` (n,) from unit rows ``d`` (n, 3), rolled by ``roll`` (n,)."""
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    e1 = _unit(np.cross(d, helper))
    e2 = np.cross(d, e1)
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return _unit(ca * d + sa * (np.cos(roll)[:, None] * e1 + np.sin(roll)[:, None] * e2))


def grow_trees(rng: np.random.Generator, anat: Anatomy, *, root_radius: float = 5.0,
               min_radius: float = 0.4, max_segments: int = 10000) -> VesselTree:
    """Grow two trees (arterial and venous) per lung from the hila, one generation at a time.

    Branches split by Murray's law (``r³ = r1³ + r2³``, Murray's optimal angles) with random
    asymmetry, lean away from the hilum, and turn back into the lung when they reach its wall
    (or stop when no turn helps). Segments thinner than ``min_radius`` are not split further;
    growth stops at ``max_segments`` (a random subset of the last generation is kept).
    """
    p0, d0, r0, t0 = [], [], [], []
    tree_id = 0
    for side in (-1, 1):
        hil = anat.hilum(side)
        for kind in range(2):
            p = hil + np.array([0.0, (-6.0 if kind == 0 else 8.0), (4.0 if kind == 0 else -8.0)])
            for d in ([0.5 * side, -0.5, 0.9], [0.5 * side, 0.6, 0.9], [0.5 * side, -0.6, -0.8],
                      [0.5 * side, 0.7, -0.8], [side, -0.8, 0.0], [side, 0.8, 0.0], [0.3 * side, 0.0, -1.0]):
                p0.append(p)
                d0.append(np.array(d, float) + rng.normal(0, 0.15, 3))
                r0.append(root_radius * rng.uniform(0.85, 1.0))
                t0.append(tree_id)
            tree_id += 1
    P, D, R = np.array(p0), _unit(np.array(d0)), np.array(r0)
    par, tre = np.full(len(P), -1, np.int64), np.array(t0, np.int64)
    hila = np.array([anat.hilum(-1), anat.hilum(1)])

    def inside(pts: np.ndarray) -> np.ndarray:
        return anat.lung_inside(pts[:, 0], pts[:, 1], pts[:, 2])

    out_s, out_e, out_r0, out_r1, out_p, out_t = [], [], [], [], [], []
    total = 0
    while len(P) and total < max_segments:
        n = len(P)
        length = R * rng.uniform(4.0, 8.0, n) + 2.0
        Q = P + length[:, None] * D
        ok = inside(Q) | (par < 0)
        for _ in range(6):  # steer branches that left the lung
            bad = np.flatnonzero(~ok)
            if len(bad) == 0:
                break
            d2 = _rotate_away(D[bad], rng.uniform(0.4, 1.2, len(bad)), rng.uniform(0, 2 * np.pi, len(bad)))
            q2 = P[bad] + 0.7 * length[bad, None] * d2
            good = inside(q2)
            D[bad[good]], Q[bad[good]] = d2[good], q2[good]
            ok[bad[good]] = True
        keep = np.flatnonzero(ok)
        if total + len(keep) > max_segments:
            keep = np.sort(rng.choice(keep, max_segments - total, replace=False))
        P, D, Q, R, par, tre = P[keep], D[keep], Q[keep], R[keep], par[keep], tre[keep]
        r_end = R * 0.96
        idx = total + np.arange(len(P))
        out_s.append(P)
        out_e.append(Q)
        out_r0.append(R)
        out_r1.append(r_end)
        out_p.append(par)
        out_t.append(tre)
        total += len(P)
        split = r_end >= min_radius
        if not split.any():
            break
        Q, D, r_end, idx, tre = Q[split], D[split], r_end[split], idx[split], tre[split]
        m = len(Q)
        alpha = rng.uniform(0.45, 1.0, m)
        ra = r_end / (1.0 + alpha**3) ** (1.0 / 3.0)
        rb = alpha * ra
        ca = np.clip((r_end**4 + ra**4 - rb**4) / (2 * r_end**2 * ra**2), -1, 1)
        cb = np.clip((r_end**4 + rb**4 - ra**4) / (2 * r_end**2 * rb**2), -1, 1)
        roll = rng.uniform(0, 2 * np.pi, m)
        side = (Q[:, 0] > anat.center[0]).astype(int)
        outward = _unit(Q - hila[side])
        da = _unit(_rotate_away(D, np.arccos(ca), roll) + 0.25 * outward)
        db = _unit(_rotate_away(D, np.arccos(cb), roll + np.pi) + 0.25 * outward)
        R = np.concatenate([ra, rb])
        keep_c = R >= 0.75 * min_radius
        P = np.concatenate([Q, Q])[keep_c]
        D = np.concatenate([da, db])[keep_c]
        R = R[keep_c]
        par = np.concatenate([idx, idx])[keep_c]
        tre = np.concatenate([tre, tre])[keep_c]
    cat = (lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape))
    return VesselTree(cat(out_s, (0, 3)), cat(out_e, (0, 3)), cat(out_r0, (0,)), cat(out_r1, (0,)),
                      cat(out_p, (0,)).astype(np.int64), cat(out_t, (0,)).astype(np.int64))


def segment_box(geom: ScanGeometry, a: np.ndarray, b: np.ndarray, pad_mm: float) -> tuple[slice, ...] | None:
    """Index box (k, r, c slices) of the voxels within ``pad_mm`` of segment a–b, or None."""
    lo = np.minimum(a, b) - pad_mm
    hi = np.maximum(a, b) + pad_mm
    corners = geom.lps_to_index(np.array([lo, hi]))
    i0 = np.floor(corners.min(axis=0)).astype(int)
    i1 = np.ceil(corners.max(axis=0)).astype(int) + 1
    i0 = np.maximum(i0, 0)
    i1 = np.minimum(i1, geom.shape)
    if np.any(i1 <= i0):
        return None
    return tuple(slice(int(s), int(e)) for s, e in zip(i0, i1))


def box_coords(geom: ScanGeometry, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS mm of the voxel centres in ``box`` as broadcastable (k,1,1), (1,r,1), (1,1,c) arrays."""
    zs, ys, xs = geom.axis_coords()
    return (zs[box[0]][:, None, None].astype(np.float32), ys[box[1]][None, :, None].astype(np.float32),
            xs[box[2]][None, None, :].astype(np.float32))


def capsule_occupancy(geom: ScanGeometry, box: tuple[slice, ...], a: np.ndarray, b: np.ndarray,
                      ra: float, rb: float, edge_mm: float) -> np.ndarray:
    """Fraction (0…1, float32, shape of the box) of a tapered cylinder a–b covering each voxel."""
    z, y, x = box_coords(geom, box)
    ab = (b - a).astype(np.float32)
    ll = float(ab @ ab) + 1e-9
    px, py, pz = x - np.float32(a[0]), y - np.float32(a[1]), z - np.float32(a[2])
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / ll, 0.0, 1.0)
    d = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)
    r = ra + t * (rb - ra)
    return np.clip((r - d) / edge_mm + 0.5, 0.0, 1.0)


def render_vessels(trees: VesselTree, geom: ScanGeometry, hu: np.ndarray, tissue: np.ndarray,
                   vessel_hu: float) -> int:
    """Paint the trees into ``hu`` (K, R, C) float32 and ``tissue`` (K, R, C) uint8, in place.

    Only lung voxels change (vessels meet the mediastinum at the hilum). Partial volume: a voxel
    becomes ``hu + occupancy * (vessel_hu - hu)``; it is labelled VESSEL at occupancy ≥ 0.5.
    Returns the number of segments that touched the scan grid.
    """
    edge = float(min(geom.spacing_mm[1:]))
    drawn = 0
    for i in range(len(trees)):
        a, b = trees.start[i], trees.end[i]
        ra, rb = float(trees.r_start[i]), float(trees.r_end[i])
        box = segment_box(geom, a, b, max(ra, rb) + edge)
        if box is None:
            continue
        occ = capsule_occupancy(geom, box, a, b, ra, rb, edge)
        tb = tissue[box]
        hb = hu[box]
        m = (occ > 0.0) & ((tb == LUNG) | (tb == VESSEL))
        if not m.any():
            continue
        drawn += 1
        o = occ[m]
        hb[m] = hb[m] + o * (np.float32(vessel_hu) - hb[m])
        tb[m & (occ >= 0.5)] = VESSEL
    return drawn


__all__ = ["VesselTree", "capsule_occupancy", "grow_trees", "render_vessels", "segment_box"]

"""Lung nodules: solid, ground-glass and part-solid; ellipsoidal or lobulated; placed free in the
lung, against the chest wall (juxtapleural) or against a vessel (juxtavascular).

A nodule surface is ``ρ(u) = r_ell(u) · f(u)`` for unit directions ``u`` from its centre:
``r_ell`` is an ellipsoid's radius (semi-axes ``axes_mm/2`` along ``directions``) and ``f`` a
lobulation factor (1 for smooth nodules). The equivalent-sphere diameter is exact up to the
numeric integration over a 4,000-direction Fibonacci sphere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionlens.synth.anatomy import LUNG, NODULE, VESSEL, Anatomy, ScanGeometry
from lesionlens.synth.vessels import VesselTree, box_coords

NODULE_TYPES = ("solid", "part_solid", "ground_glass")


def fibonacci_sphere(n: int = 4000) -> np.ndarray:
    """(n, 3) float64 unit vectors spread evenly over the sphere."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], -1)


_DIRS = fibonacci_sphere()


@dataclass
class Nodule:
    """One rendered nodule (truth). center_mm: (3,) LPS; directions: (3, 3) rows = unit axes."""

    id: int
    type: str
    center_mm: np.ndarray
    diameter_mm: float  # equivalent-sphere diameter
    axes_mm: np.ndarray  # (3,) full lengths of the ellipsoid axes before lobulation
    directions: np.ndarray  # (3, 3) LPS unit vectors of those axes (rows)
    lobes: np.ndarray  # (L, 3) unit lobe directions; empty when not lobulated
    lobe_amp: float
    hu: float  # solid HU (solid and part-solid core) or ground-glass HU
    core_hu: float | None  # part-solid: HU of the solid core
    core_fraction: float  # part-solid: core size relative to the nodule (0 otherwise)
    juxtapleural: bool
    juxtavascular: bool
    extent_mm: np.ndarray  # (3,) extent along LPS x, y, z

    @property
    def lobulated(self) -> bool:
        return len(self.lobes) > 0

    def radius(self, u: np.ndarray) -> np.ndarray:
        """Surface distance (mm) along unit directions u: (..., 3) → (...)."""
        proj = u @ self.directions.T  # (..., 3)
        with np.errstate(divide="ignore"):
            r_ell = 1.0 / np.sqrt(np.sum((proj / (self.axes_mm / 2.0)) ** 2, axis=-1))
        if not self.lobulated:
            return r_ell
        lob = np.clip(u @ self.lobes.T, 0.0, None) ** 6
        return r_ell * (1.0 + self.lobe_amp * lob.sum(axis=-1))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def make_shape(rng: np.random.Generator, diameter: float, lobulated: bool) -> Nodule:
    """A nodule shape (centre at the origin) whose equivalent diameter is ``diameter`` mm."""
    ratios = np.array([1.0, rng.uniform(0.78, 1.0), rng.uniform(0.65, 1.0)])
    directions = _random_rotation(rng)
    lobes = _random_rotation(rng) if lobulated else np.zeros((0, 3))
    if lobulated:
        lobes = np.concatenate([lobes, -lobes[:1]])[: rng.integers(3, 5)]
    n = Nodule(0, "solid", np.zeros(3), diameter, ratios, directions, lobes,
               float(rng.uniform(0.25, 0.45)) if lobulated else 0.0, 0.0, None, 0.0, False, False,
               np.zeros(3))
    # Scale so the enclosed volume (mean of ρ³/3 over the sphere × 4π) matches the diameter.
    vol = 4.0 * np.pi * np.mean(n.radius(_DIRS) ** 3) / 3.0
    target = np.pi * diameter**3 / 6.0
    n.axes_mm = ratios * (target / vol) ** (1.0 / 3.0)
    pts = _DIRS * n.radius(_DIRS)[:, None]
    n.extent_mm = pts.max(axis=0) - pts.min(axis=0)
    return n


def sample_diameter(rng: np.random.Generator, small_fraction: float, lo: float, hi: float) -> float:
    """Log-uniform in 3–10 mm with probability ``small_fraction``, else 10–30 mm (clipped)."""
    split = min(max(10.0, lo), hi)
    if rng.random() < small_fraction or split >= hi:
        a, b = lo, split
    else:
        a, b = split, hi
    return float(np.exp(rng.uniform(np.log(a), np.log(b))))


class Placer:
    """Finds centres for nodules inside the scanned lung (free, juxtapleural, juxtavascular)."""

    def __init__(self, rng: np.random.Generator, anat: Anatomy, geom: ScanGeometry,
                 tissue: np.ndarray, trees: VesselTree):
        self.rng, self.anat, self.geom, self.trees = rng, anat, geom, trees
        self.lung_idx = np.argwhere(tissue[:, ::4, ::4] == LUNG) * np.array([1, 4, 4])
        self.placed: list[Nodule] = []
        zs, _, _ = geom.axis_coords()
        self.z_lo, self.z_hi = float(zs.min()), float(zs.max())

    def _inside(self, pts: np.ndarray) -> np.ndarray:
        return self.anat.lung_inside(pts[..., 0], pts[..., 1], pts[..., 2])

    def _fits(self, n: Nodule, c: np.ndarray, need_inside: float) -> bool:
        surf = c + _DIRS[::40] * n.radius(_DIRS[::40])[:, None]
        half_z = n.extent_mm[2] / 2.0 + self.geom.spacing_mm[0]
        if c[2] - half_z < self.z_lo or c[2] + half_z > self.z_hi:
            return False
        for o in self.placed:
            if np.linalg.norm(o.center_mm - c) < (o.diameter_mm + n.diameter_mm) * 0.75 + 3.0:
                return False
        return bool(self._inside(surf).mean() >= need_inside)

    def random_lung_point(self) -> np.ndarray:
        i = self.lung_idx[self.rng.integers(len(self.lung_idx))]
        return self.geom.index_to_lps(i.astype(float))

    def free(self, n: Nodule) -> np.ndarray | None:
        for _ in range(200):
            c = self.random_lung_point()
            shrink = Nodule(**n.__dict__)
            shrink.axes_mm = n.axes_mm + 4.0  # keep 2 mm off the wall
            if self._fits(shrink, c, 1.0) and self._fits(n, c, 1.0):
                return c
        return None

    def juxtapleural(self, n: Nodule) -> np.ndarray | None:
        for _ in range(200):
            p = self.random_lung_point()
            ang = self.rng.uniform(0, 2 * np.pi)
            d = np.array([np.cos(ang), np.sin(ang), 0.0])
            steps = p + np.arange(1, 400)[:, None] * 0.5 * d
            ins = self._inside(steps)
            if ins.all():
                continue
            wall = steps[int(np.argmin(ins))]
            # Surface normal estimate: average of the outward march directions that exit nearby.
            c = wall - d * (n.radius(d[None])[0] - 1.0)
            if not self._inside(c[None])[0]:
                continue
            if self._fits(n, c, 0.6):
                return c
        return None

    def juxtavascular(self, n: Nodule) -> np.ndarray | None:
        t = self.trees
        idx = self.geom.lps_to_index(0.5 * (t.start + t.end))
        ok = ((t.r_end > 0.8) & (t.r_end < 3.5) & (idx[:, 0] > 2) & (idx[:, 0] < self.geom.shape[0] - 3))
        cand = np.flatnonzero(ok)
        if len(cand) == 0:
            return None
        for _ in range(200):
            i = cand[self.rng.integers(len(cand))]
            a, b = t.start[i], t.end[i]
            p = a + self.rng.uniform(0.3, 0.7) * (b - a)
            axis = (b - a) / (np.linalg.norm(b - a) + 1e-9)
            v = np.cross(axis, self.rng.normal(size=3))
            v /= np.linalg.norm(v) + 1e-9
            r_v = t.r_start[i] + 0.5 * (t.r_end[i] - t.r_start[i])
            c = p + v * (r_v + 0.85 * n.radius(-v[None])[0])
            if self._fits(n, c, 1.0):
                return c
        return None


def render_nodule(n: Nodule, geom: ScanGeometry, hu: np.ndarray, tissue: np.ndarray,
                  labels: np.ndarray, rng: np.random.Generator) -> None:
    """Paint one nodule in place. hu: (K,R,C) float32; tissue, labels: (K,R,C) uint8.

    Solid material replaces lung and vessel voxels (partial volume at the edge); ground glass
    only raises voxels below its HU, so vessels stay visible through it. Voxels whose centre is
    inside the surface and that were lung/vessel/nodule get ``labels = n.id`` and NODULE tissue.
    """
    half = n.extent_mm / 2.0 + float(max(geom.spacing_mm)) + 1.0
    lo, hi = n.center_mm - half, n.center_mm + half
    corners = geom.lps_to_index(np.array([lo, hi]))
    i0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    i1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, geom.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))
    z, y, x = box_coords(geom, box)
    v = np.stack(np.broadcast_arrays(x - np.float32(n.center_mm[0]), y - np.float32(n.center_mm[1]),
                                     z - np.float32(n.center_mm[2])), axis=-1).astype(np.float64)
    rho = np.linalg.norm(v, axis=-1)
    u = v / np.maximum(rho, 1e-9)[..., None]
    surf = n.radius(u)
    edge = float(min(geom.spacing_mm[1:]))
    occ = np.clip((surf - rho) / edge + 0.5, 0.0, 1.0).astype(np.float32)
    tb, hb, lb = tissue[box], hu[box], labels[box]
    lungish = (tb == LUNG) | (tb == VESSEL) | (tb == NODULE)
    grain = rng.normal(0.0, 1.0, occ.shape).astype(np.float32)
    if n.type == "solid":
        target = np.float32(n.hu) + 6.0 * grain
        new = hb + occ * (target - hb)
        hb[lungish] = new[lungish]
    else:
        target = np.float32(n.hu) + 25.0 * grain
        new = hb + occ * (target - hb)
        hb[lungish] = np.maximum(hb, new)[lungish]
        if n.type == "part_solid" and n.core_hu is not None:
            core_occ = np.clip((surf * n.core_fraction - rho) / edge + 0.5, 0.0, 1.0).astype(np.float32)
            ctarget = np.float32(n.core_hu) + 6.0 * grain
            cnew = hb + core_occ * (ctarget - hb)
            hb[lungish] = cnew[lungish]
    inside = (rho < surf) & lungish
    lb[inside] = n.id
    tb[inside] = NODULE


__all__ = ["NODULE_TYPES", "Nodule", "Placer", "make_shape", "render_nodule", "sample_diameter"]

"""Chest anatomy of the CT phantom: body, fat, muscle, lungs, heart, mediastinum, spine, ribs.

Shapes are analytic functions of DICOM patient coordinates (LPS mm), so the same anatomy can be
sampled on any scan grid and queried at arbitrary points (the vessel growth uses
:meth:`Anatomy.lung_inside`). Rendering returns a tissue map and a float32 HU volume, both
``(K, R, C)`` on the scan grid of :class:`ScanGeometry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Tissue codes of the tissue map ``(K, R, C) uint8``.
AIR, LUNG, FAT, SOFT, BLOOD, VESSEL, CORTICAL, MARROW, NODULE, AIRWAY = range(10)
TISSUE_NAMES = {
    AIR: "air", LUNG: "lung", FAT: "fat", SOFT: "soft_tissue", BLOOD: "blood",
    VESSEL: "vessel", CORTICAL: "cortical_bone", MARROW: "marrow", NODULE: "nodule",
    AIRWAY: "airway",
}
#: Published CT ranges (HU) every rendered tissue stays within (before blur and noise).
TISSUE_RANGES: dict[int, tuple[float, float]] = {
    AIR: (-1000, -1000), LUNG: (-900, -750), FAT: (-120, -80), SOFT: (20, 60), BLOOD: (30, 60),
    VESSEL: (30, 60), CORTICAL: (300, 1000), MARROW: (150, 300), AIRWAY: (-1000, -1000),
}


@dataclass(frozen=True)
class ScanGeometry:
    """The scan grid. Axial slices, rows toward posterior, columns toward the patient's left.

    shape: (K, R, C). spacing_mm: (3,) (slice spacing, row spacing, column spacing).
    origin: (3,) LPS mm of voxel (0, 0, 0). Slice ``k`` lies at ``z = origin[2] + k * dz``
    (slices sorted from feet to head, as the DICOM reader sorts them along the slice normal).
    ``affine`` maps (k, r, c, 1) → LPS mm.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float]
    slice_thickness_mm: float

    @property
    def affine(self) -> np.ndarray:
        dz, dy, dx = self.spacing_mm
        a = np.eye(4)
        a[:3, 0] = (0.0, 0.0, dz)
        a[:3, 1] = (0.0, dy, 0.0)
        a[:3, 2] = (dx, 0.0, 0.0)
        a[:3, 3] = self.origin
        return a

    def axis_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(z (K,), y (R,), x (C,)) LPS mm of the voxel centres along each axis (float64)."""
        k, r, c = self.shape
        dz, dy, dx = self.spacing_mm
        o = self.origin
        return o[2] + dz * np.arange(k), o[1] + dy * np.arange(r), o[0] + dx * np.arange(c)

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """lps: (..., 3) LPS mm → (..., 3) fractional (k, r, c) indices."""
        lps = np.asarray(lps, dtype=np.float64)
        dz, dy, dx = self.spacing_mm
        o = self.origin
        return np.stack([(lps[..., 2] - o[2]) / dz, (lps[..., 1] - o[1]) / dy,
                         (lps[..., 0] - o[0]) / dx], axis=-1)

    def index_to_lps(self, idx: np.ndarray) -> np.ndarray:
        """idx: (..., 3) (k, r, c) → (..., 3) LPS mm."""
        idx = np.asarray(idx, dtype=np.float64)
        a = self.affine
        return idx @ a[:3, :3].T + a[:3, 3]


@dataclass
class Anatomy:
    """Random but plausible chest of one synthetic patient (all lengths mm).

    ``center``: (3,) LPS mm — body axis (x, y) and z of the lowest lung point (costophrenic
    recess). Relative coordinates ``(x, y, z) - center`` are used by every shape function.
    """

    center: np.ndarray
    body_ax: float
    body_ay: float
    fat_mm: float
    muscle_mm: float
    lung_height: float
    dome_mm: tuple[float, float]  # (right, left) diaphragm dome height above the recess
    heart_center: np.ndarray  # (3,) relative mm
    heart_axes: np.ndarray  # (3,) semi-axes mm
    heart_angle: float  # rotation about z, radians
    rib_phase: float
    hu: dict[int, float] = field(default_factory=dict)

    # --- derived sizes --------------------------------------------------------------------
    @property
    def cavity(self) -> tuple[float, float]:
        m = self.fat_mm + self.muscle_mm
        return self.body_ax - m, self.body_ay - m

    @property
    def spine_y(self) -> float:
        """y (relative) of the vertebral body centre."""
        return self.cavity[1] - 22.0

    @property
    def z_carina(self) -> float:
        return 0.62 * self.lung_height

    @property
    def mediastinum_half_width(self) -> float:
        return 0.24 * self.cavity[0]

    def hilum(self, side: int) -> np.ndarray:
        """(3,) LPS mm of the right (side=-1) or left (side=+1) hilum."""
        rel = np.array([side * (self.mediastinum_half_width + 12.0), 2.0,
                        self.z_carina - (22.0 if side < 0 else 14.0)])
        return rel + self.center

    # --- shape functions (broadcasting arrays of relative mm) -------------------------------
    def _lung_params(self, z: np.ndarray | np.floating, side: int) -> tuple[np.ndarray, ...]:
        cax, cay = self.cavity
        t = z / self.lung_height
        s = np.where(t < 0.55, 1.0, np.sqrt(np.clip(1.0 - ((t - 0.55) / 0.45) ** 2, 0.0, 1.0)))
        s = np.where((t < 0) | (t > 1), 0.0, s)
        cx = side * (0.52 * cax) * (1.0 - 0.2 * (1.0 - s))
        cy = 0.05 * cay + 0.25 * cay * (1.0 - s)
        return cx, cy, 0.55 * cax * s + 1e-6, 0.98 * cay * s + 1e-6

    def lung_inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | np.floating) -> np.ndarray:
        """Boolean lung mask at LPS mm points (arrays broadcast against each other)."""
        x = x - self.center[0]
        y = y - self.center[1]
        z = z - self.center[2]
        cax, cay = self.cavity
        in_cavity = (x / (cax - 1.5)) ** 2 + (y / (cay - 1.5)) ** 2 < 1.0
        spine = (x / 34.0) ** 2 + ((y - self.spine_y - 8.0) / 34.0) ** 2 < 1.0
        hw = self.mediastinum_half_width
        medial = (x / hw) ** 2 + ((y + 0.1 * cay) / (0.95 * cay)) ** 2 < 1.0
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=bool)
        for side, dome in ((-1, self.dome_mm[0]), (1, self.dome_mm[1])):
            cx, cy, ax, ay = self._lung_params(z, side)
            q = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
            cxb, cyb, axb, ayb = self._lung_params(np.zeros(1), side)
            dq = ((x - cxb) / axb) ** 2 + ((y - cyb) / ayb) ** 2
            above = z > dome * np.clip(1.0 - dq, 0.0, 1.0)
            out |= (q < 1.0) & above & ((x * side) > 0)
        out &= in_cavity & ~spine & ~medial
        hz, ha = self.heart_center[2], self.heart_axes[2] + 4.0
        if np.any(np.abs(np.asarray(z) - hz) < ha):
            out &= ~(self.heart_q(x, y, z, margin=4.0) < 1.0)
        return out

    def heart_q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | np.floating, margin: float = 0.0) -> np.ndarray:
        """Ellipsoid quadratic form of the heart (< 1 inside) at relative coordinates."""
        c, a = self.heart_center, self.heart_axes + margin
        ca, sa = np.cos(self.heart_angle), np.sin(self.heart_angle)
        dx, dy = x - c[0], y - c[1]
        u = ca * dx + sa * dy
        v = -sa * dx + ca * dy
        return (u / a[0]) ** 2 + (v / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2


def random_anatomy(rng: np.random.Generator, z_offset: float) -> Anatomy:
    """Draw one patient's chest. ``z_offset``: LPS z (mm) of the lowest lung point."""
    size = rng.uniform(0.88, 1.12)
    bx = 165.0 * size * rng.uniform(0.95, 1.05)
    by = 118.0 * size * rng.uniform(0.93, 1.07)
    fat = rng.uniform(8.0, 24.0)
    muscle = rng.uniform(10.0, 15.0)
    height = rng.uniform(230.0, 270.0) * size
    cay = by - fat - muscle
    heart_c = np.array([0.18 * bx, -0.30 * cay, rng.uniform(55.0, 70.0)])
    heart_a = np.array([58.0, 44.0, 52.0]) * size * rng.uniform(0.92, 1.08, 3)
    hu = {
        AIR: -1000.0, AIRWAY: -1000.0, LUNG: rng.uniform(-860.0, -830.0),
        FAT: rng.uniform(-110.0, -90.0), SOFT: rng.uniform(38.0, 52.0),
        BLOOD: rng.uniform(38.0, 48.0), VESSEL: rng.uniform(38.0, 48.0),
        CORTICAL: rng.uniform(500.0, 900.0), MARROW: rng.uniform(180.0, 260.0),
    }
    center = np.array([rng.uniform(-12, 12), rng.uniform(-10, 10), z_offset])
    return Anatomy(center, bx, by, fat, muscle, height,
                   (rng.uniform(55.0, 65.0), rng.uniform(42.0, 52.0)), heart_c, heart_a,
                   np.deg2rad(rng.uniform(20.0, 40.0)), rng.uniform(0, 30.0), hu)


def _disk(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1.0


def _seg2d(x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance (mm) from points to the 2D segment a–b."""
    ab = np.array(b, float) - np.array(a, float)
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    return np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1])


def render_anatomy(anat: Anatomy, geom: ScanGeometry, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Render the chest on the scan grid.

    texture: (K, R, C) float32 low-frequency lung texture in HU (added to lung voxels only).
    Returns ``hu`` (K, R, C) float32 (noise- and blur-free) and ``tissue`` (K, R, C) uint8 codes.
    """
    zs, ys, xs = geom.axis_coords()
    x = (xs - anat.center[0])[None, :].astype(np.float32)
    y = (ys - anat.center[1])[:, None].astype(np.float32)
    cax, cay = anat.cavity
    f = anat.fat_mm
    # 2D (R, C) shells: body, fat, muscle, cavity; spine; sternum; rib ring.
    body = ((x / anat.body_ax) ** 2 + (np.abs(y) / anat.body_ay) ** np.where(y > 0, 2.6, 2.0)) < 1.0
    skin = ((x / (anat.body_ax - 2.0)) ** 2 + (y / (anat.body_ay - 2.0)) ** 2) >= 1.0
    muscle = (x / (anat.body_ax - f)) ** 2 + (y / (anat.body_ay - f * 0.8)) ** 2 < 1.0
    cavity = (x / cax) ** 2 + (y / cay) ** 2 < 1.0
    sy = anat.spine_y
    vb = _disk(x, y, 0.0, sy, 17.0, 15.0)
    vb_in = _disk(x, y, 0.0, sy, 15.0, 13.0)
    canal = _disk(x, y, 0.0, sy + 24.0, 8.0, 7.0)
    arch = _disk(x, y, 0.0, sy + 26.0, 15.0, 13.0) & ~canal
    spinous = _disk(x, y, 0.0, sy + 45.0, 4.5, 16.0)
    trans = (_seg2d(x, y, (-26.0, sy + 22.0), (26.0, sy + 22.0)) < 4.5)
    post = arch | spinous | trans
    paraspinal = _disk(x, y, 0.0, sy + 30.0, 55.0, 35.0)
    sternum = _disk(x, y, 0.0, -cay - 3.0, 16.0, 6.0)
    sternum_in = _disk(x, y, 0.0, -cay - 3.0, 14.0, 4.5)
    rho = np.sqrt((x / (cax + 5.0)) ** 2 + (y / (cay + 5.0)) ** 2)
    ring = np.abs(rho - 1.0) * 0.5 * (cax + cay)
    phi = np.arctan2(np.abs(x), y)  # 0 at the back, pi at the front
    rib_zone = (ring < 6.0) & (phi > 0.22 * np.pi) & (phi < 0.78 * np.pi)
    rib_core = (ring < 4.0) & rib_zone

    hu_lut = np.zeros(16, np.float32)
    for code, v in anat.hu.items():
        hu_lut[code] = v
    k_all, r_all, c_all = geom.shape
    tissue = np.zeros(geom.shape, np.uint8)
    hu = np.empty(geom.shape, np.float32)
    base2d = np.full((r_all, c_all), AIR, np.uint8)
    base2d[body] = SOFT
    base2d[body & muscle & ~skin] = SOFT
    base2d[body & ~muscle & ~skin] = FAT
    hw = anat.mediastinum_half_width
    for k in range(k_all):
        zabs = zs[k]
        z = zabs - anat.center[2]
        t = z / anat.lung_height
        sl = base2d.copy()
        in_chest = -20.0 < t < 1.15
        # Abdomen below the lungs; cavity content above.
        sl[cavity] = SOFT if t < 0.1 else FAT
        if in_chest:
            sl[paraspinal & cavity & ~vb] = SOFT
            # Ribs: oblique bands, lower at the front.
            u = (z + 85.0 * phi / np.pi - anat.rib_phase) / 27.0
            band = np.abs(u - np.round(u)) * 27.0
            if 0.02 < t < 1.05:
                sl[rib_zone & (band < 5.0)] = CORTICAL
                sl[rib_core & (band < 3.5)] = MARROW
            if 0.35 < t < 0.95:
                sl[sternum] = CORTICAL
                sl[sternum_in] = MARROW
        # Spine with discs every ~28 mm.
        disc = abs(((z - anat.rib_phase) / 28.0) - round((z - anat.rib_phase) / 28.0)) * 28.0 < 3.0
        sl[vb] = SOFT if disc else CORTICAL
        if not disc:
            sl[vb_in] = MARROW
        sl[post] = CORTICAL
        sl[canal] = SOFT
        # Heart, pericardial fat and great vessels.
        if abs(z - anat.heart_center[2]) < anat.heart_axes[2]:
            sl[(anat.heart_q(x, y, np.float32(z)) < 1.0) & cavity] = BLOOD
        if in_chest:
            top_h = anat.heart_center[2] + anat.heart_axes[2]
            z_arch = anat.z_carina + 28.0
            if 5.0 < z < z_arch:
                sl[_disk(x, y, 0.16 * cax, sy - 30.0, 12.0, 12.0)] = BLOOD  # descending aorta
            if top_h - 25.0 < z < z_arch:
                sl[_disk(x, y, -0.08 * cax, -0.3 * cay, 15.0, 15.0)] = BLOOD  # ascending aorta
                sl[_disk(x, y, -0.2 * cax, -0.1 * cay, 10.0, 10.0)] = BLOOD  # SVC
            if top_h - 15.0 < z < anat.z_carina - 10.0:
                sl[_disk(x, y, 0.07 * cax, -0.38 * cay, 13.0, 13.0)] = BLOOD  # pulmonary trunk
            if abs(z - z_arch) < 12.0:
                sl[_seg2d(x, y, (-0.08 * cax, -0.3 * cay), (0.16 * cax, sy - 30.0)) < 12.0] = BLOOD
            if anat.z_carina - 26.0 < z < anat.z_carina - 8.0:
                for side in (-1, 1):
                    sl[_seg2d(x, y, (0.07 * cax, -0.38 * cay), (side * (hw + 10.0), 2.0)) < 9.0] = BLOOD
            if z > anat.z_carina:  # trachea
                tr = _disk(x, y, 0.0, sy - 48.0, 11.0, 10.0)
                sl[tr] = SOFT
                sl[_disk(x, y, 0.0, sy - 48.0, 9.0, 8.0)] = AIRWAY
        # Lungs.
        lung = anat.lung_inside(x + anat.center[0], y + anat.center[1], np.float32(zabs))
        sl[lung] = LUNG
        tissue[k] = sl
        hu[k] = hu_lut[sl]
        if lung.any():
            hu[k][lung] += texture[k][lung]
    lo, hi = TISSUE_RANGES[LUNG]
    lungm = tissue == LUNG
    np.clip(hu, lo + 3.0, None, out=hu, where=lungm)
    np.clip(hu, None, hi - 3.0, out=hu, where=lungm)
    return hu, tissue


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 linear interpolation weights stretching n_in samples over n_out."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    w = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - w
    if n_in > 1:
        m[np.arange(n_out), lo + 1] += w
    return m


def lung_texture(rng: np.random.Generator, anat: Anatomy, geom: ScanGeometry,
                 amplitude_hu: float = 35.0, cell_mm: float = 7.0) -> np.ndarray:
    """Low-frequency lung parenchyma texture, (K, R, C) float32 HU.

    A coarse Gaussian field (one sample per ``cell_mm``, smoothed) is stretched onto the scan
    grid with separable linear interpolation (three small matrix products), plus a gravity
    gradient (posterior lung denser, as in a supine patient).
    """
    from scipy.ndimage import gaussian_filter

    k, r, c = geom.shape
    dz, dy, dx = geom.spacing_mm
    nk = max(2, int(np.ceil(k * dz / cell_mm)) + 1)
    nr = max(2, int(np.ceil(r * dy / cell_mm)) + 1)
    nc = max(2, int(np.ceil(c * dx / cell_mm)) + 1)
    coarse = gaussian_filter(rng.standard_normal((nk, nr, nc)), 1.0, mode="wrap")
    coarse = (coarse / (coarse.std() + 1e-9) * amplitude_hu).astype(np.float32)
    mk, mr, mc = _interp_matrix(k, nk), _interp_matrix(r, nr), _interp_matrix(c, nc)
    t = coarse @ mc.T  # (nk, nr, C)
    t = np.einsum("rj,kjc->krc", mr, t, optimize=True)  # (nk, R, C)
    out = (mk @ t.reshape(nk, -1)).reshape(k, r, c)
    _, ys, _ = geom.axis_coords()
    grad = (25.0 * (ys - anat.center[1]) / anat.cavity[1]).astype(np.float32)
    out += grad[None, :, None]
    return out

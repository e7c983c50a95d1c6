"""Synthetic mammograms (MG, For Presentation) with masses and micro-calcification clusters.

Anatomy, rendered in display brightness (1 = most attenuating, bright on MONOCHROME2):

* breast outline — a half-ellipse against the chest wall, with the compressed-thickness
  fall-off towards the skin and a thin brighter skin line;
* fibroglandular tissue — low-frequency noise concentrated behind the nipple;
* pectoral muscle — a bright triangle in the upper chest-wall corner on MLO views;
* masses — 5–30 mm, round / lobulated / spiculated, projected-sphere profile;
* micro-calcification clusters — 5–30 bright specks of 0.1–0.5 mm within a ~1 cm region.

The chest wall is at the left edge (column 0) for a left breast and at the right edge for a right
breast (the usual hanging). Anatomy, lesions and detector noise draw from independent random
streams of the seed, so the same seed without lesions gives the identical background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionlens.errors import ConfigError
from lesionlens.synth.dicom2d import (
    BOX_THRESHOLD,
    CLASS_NAMES_2D,
    Phantom2D,
    Photometric,
    check_common,
    mask_box,
    smooth_noise,
    sphere_profile,
    to_stored,
    window_for,
)

CALC, MASS = CLASS_NAMES_2D.index("calcification_cluster"), CLASS_NAMES_2D.index("mass")


@dataclass(frozen=True)
class MammoConfig:
    """Mammogram phantom settings.

    rows/cols: image size in pixels (full field ~4000×3000; tests use e.g. 400×300).
    field_mm: detector field (rows, cols) in mm; pixel spacing is ``max(field/size)``, isotropic.
    laterality: "L" | "R", or None to draw it from the seed.
    """

    rows: int = 4000
    cols: int = 3000
    field_mm: tuple[float, float] = (300.0, 225.0)
    view: str = "MLO"
    laterality: str | None = None
    masses: int = 1
    calcification_clusters: int = 1
    mass_diameter_mm: tuple[float, float] = (5.0, 30.0)
    bits_stored: int = 14
    photometric: Photometric = "MONOCHROME2"
    noise: float = 0.006  # detector noise, std in brightness units

    def __post_init__(self) -> None:
        check_common(self.rows, self.cols, self.bits_stored, self.photometric)
        if self.view not in ("CC", "MLO"):
            raise ConfigError(f"mammo.view must be CC or MLO, got {self.view!r}")
        if self.laterality not in (None, "L", "R"):
            raise ConfigError(f"mammo.laterality must be L, R or None, got {self.laterality!r}")
        if not (0 <= self.masses <= 6 and 0 <= self.calcification_clusters <= 6):
            raise ConfigError("mammo.masses and mammo.calcification_clusters must be 0..6")
        lo, hi = self.mass_diameter_mm
        if not 1.0 <= lo <= hi <= 60.0:
            raise ConfigError(f"mammo.mass_diameter_mm must satisfy 1 <= low <= high <= 60, got {self.mass_diameter_mm}")


@dataclass
class _Breast:
    rc: float  # outline centre row (px); the centre column is the chest wall (0)
    a_r: float  # semi-axis along rows (px)
    a_c: float  # semi-axis along columns (px)
    pec_w: float  # pectoral triangle width along row 0 (px), 0 for CC
    pec_h: float  # pectoral triangle height along column 0 (px)

    def inside(self, r: float, c: float, margin: float) -> bool:
        """True when (r, c) is inside the breast, ``margin`` (fraction of the radius) from the
        skin, and clear of the pectoral muscle."""
        rho = np.hypot((r - self.rc) / self.a_r, c / self.a_c)
        in_pec = self.pec_w > 0 and (c / self.pec_w + r / self.pec_h) < 1.25
        return bool(rho < 1.0 - margin and c > 0.08 * self.a_c and not in_pec)


def _anatomy(rng: np.random.Generator, cfg: MammoConfig, spacing: float) -> tuple[np.ndarray, _Breast]:
    """Background brightness ``(R, C) float32`` with the chest wall at column 0."""
    R, C = cfg.rows, cfg.cols
    mlo = cfg.view == "MLO"
    breast = _Breast(
        rc=R * (0.52 if mlo else 0.5) + rng.uniform(-0.03, 0.03) * R,
        a_r=R * (0.47 if mlo else 0.42) * rng.uniform(0.9, 1.0),
        a_c=C * rng.uniform(0.72, 0.9),
        pec_w=C * rng.uniform(0.22, 0.32) if mlo else 0.0,
        pec_h=R * rng.uniform(0.4, 0.55) if mlo else 1.0,
    )
    rr = np.arange(R, dtype=np.float32)[:, None]
    cc = np.arange(C, dtype=np.float32)[None, :]
    rho = np.sqrt(((rr - breast.rc) / breast.a_r) ** 2 + (cc / breast.a_c) ** 2)
    edge_w = 25.0 / (spacing * breast.a_c)  # thickness falls off over the outer ~25 mm
    thick = np.sqrt(np.clip((1.0 - rho) / edge_w, 0.0, 1.0))
    # fibroglandular density: low-frequency noise, weighted towards the central retro-areolar area
    dense_w = np.exp(-(((rr - breast.rc) / breast.a_r) ** 2) * 3.0 - ((cc / breast.a_c - 0.35) ** 2) * 5.0)
    gland_noise = smooth_noise(rng, (R, C), scale_px=14.0 / spacing, octaves=4)
    gland = 1.0 / (1.0 + np.exp(-(1.6 * gland_noise + 3.0 * dense_w - 1.6)))
    fine = smooth_noise(rng, (R, C), scale_px=max(2.5 / spacing, 2.0), octaves=2)
    img = 0.04 + thick * (0.30 + 0.30 * gland * thick + 0.015 * fine)
    # skin line: ~1.5 mm brighter band just inside the outline
    skin_w = 1.5 / (spacing * breast.a_c)
    img += np.where((rho <= 1.0) & (rho > 1.0 - skin_w), 0.12, 0.0).astype(np.float32)
    if mlo:
        pec = np.clip(1.0 - (cc / breast.pec_w + rr / breast.pec_h), 0.0, 1.0)
        soft = np.clip(pec / 0.03, 0.0, 1.0) * (rho <= 1.0)
        pec_shade = 0.56 + 0.1 * pec + 0.02 * fine  # thicker towards the axilla
        img = img * (1.0 - soft) + soft * pec_shade
    return img.astype(np.float32), breast


def _place(
    rng: np.random.Generator, breast: _Breast, cfg: MammoConfig, radius_px: float, taken: list[tuple[float, float, float]]
) -> tuple[float, float]:
    """A lesion centre (row, col) inside the breast, clear of lesions already placed."""
    for _ in range(500):
        r = rng.uniform(0.05 * cfg.rows, 0.95 * cfg.rows)
        c = rng.uniform(0.05 * cfg.cols, 0.95 * cfg.cols)
        if not breast.inside(r, c, margin=0.18):
            continue
        if all(np.hypot(r - tr, c - tc) > radius_px + trad + 4 for tr, tc, trad in taken):
            return r, c
    raise ConfigError("could not place every lesion in the breast; use fewer or smaller lesions")


def _render_mass(
    img: np.ndarray, rng: np.random.Generator, r: float, c: float, diameter_mm: float, spacing: float
) -> tuple[tuple[float, float, float, float], dict[str, object]]:
    """Add one mass to ``img`` in place; returns its xyxy box and details."""
    shape = str(rng.choice(["round", "lobulated", "spiculated"]))
    r0 = max(diameter_mm / 2.0 / spacing, 1.5)
    amp = float(rng.uniform(0.12, 0.2))
    n_spic = int(rng.integers(8, 15)) if shape == "spiculated" else 0
    spic_len = r0 * rng.uniform(0.6, 1.0, n_spic)
    half = int(np.ceil(r0 * (1.4 + (spic_len.max() / r0 if n_spic else 0.0)))) + 2
    R, C = img.shape
    ra, rb = max(int(r) - half, 0), min(int(r) + half + 1, R)
    ca, cb = max(int(c) - half, 0), min(int(c) + half + 1, C)
    dr = np.arange(ra, rb, dtype=np.float32)[:, None] + 0.5 - r
    dc = np.arange(ca, cb, dtype=np.float32)[None, :] + 0.5 - c
    dist = np.hypot(dr, dc)
    theta = np.arctan2(dr, dc)
    wobble = 0.03 if shape == "round" else 0.12
    mod = np.ones_like(dist)
    for k in (2, 3, 5):
        mod += wobble * rng.uniform(0.4, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    contrib = amp * sphere_profile(dist / mod, r0)
    if n_spic:
        angles = rng.uniform(0, 2 * np.pi, n_spic)
        width = max(0.35 / spacing, 0.6)
        for ang, length in zip(angles, spic_len):
            ux, uy = np.cos(ang), np.sin(ang)
            t = dc * ux + dr * uy  # along the spicule
            d_perp = np.abs(-dc * uy + dr * ux)
            along = (t > 0.7 * r0) & (t < r0 + length)
            taper = np.clip(1.0 - (t - r0) / length, 0.0, 1.0)
            line = np.where(along & (d_perp < width * (0.5 + taper)), 0.6 * amp * np.maximum(taper, 0.3), 0.0)
            contrib = np.maximum(contrib, line.astype(np.float32))
    img[ra:rb, ca:cb] += contrib
    box = mask_box(contrib >= BOX_THRESHOLD, ra, ca)
    return box, {"shape": shape, "center_px": [float(c), float(r)], "contrast": amp}


def _render_cluster(
    img: np.ndarray, rng: np.random.Generator, r: float, c: float, spacing: float
) -> tuple[tuple[float, float, float, float], float, dict[str, object]]:
    """Add one micro-calcification cluster; returns box, extent in mm and details."""
    n = int(rng.integers(5, 31))
    radius_mm = rng.uniform(2.5, 5.0)
    R, C = img.shape
    specks: list[list[float]] = []
    mask_boxes = []
    for _ in range(n):
        ang, rad = rng.uniform(0, 2 * np.pi), radius_mm * np.sqrt(rng.uniform(0, 1))
        sr, sc = r + rad * np.sin(ang) / spacing, c + rad * np.cos(ang) / spacing
        d_mm = rng.uniform(0.1, 0.5)
        sigma = max(d_mm / 2.0 / spacing, 0.45)  # at least about a pixel wide, to stay visible
        amp = float(rng.uniform(0.3, 0.5))
        h = int(np.ceil(3 * sigma)) + 1
        ra, rb = max(int(sr) - h, 0), min(int(sr) + h + 1, R)
        ca, cb = max(int(sc) - h, 0), min(int(sc) + h + 1, C)
        dr = np.arange(ra, rb, dtype=np.float32)[:, None] + 0.5 - sr
        dc = np.arange(ca, cb, dtype=np.float32)[None, :] + 0.5 - sc
        blob = amp * np.exp(-(dr**2 + dc**2) / (2 * sigma**2))
        img[ra:rb, ca:cb] += blob
        mask_boxes.append(mask_box(blob >= BOX_THRESHOLD, ra, ca))
        specks.append([float(sc), float(sr), float(d_mm)])
    b = np.array(mask_boxes, dtype=np.float32)
    box = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
    extent = max(box[2] - box[0], box[3] - box[1]) * spacing
    return box, float(extent), {"specks_px": [[x, y] for x, y, _ in specks], "speck_diameters_mm": [d for *_, d in specks]}


def generate_mammogram(seed: int, config: MammoConfig | None = None) -> Phantom2D:
    """Render a mammogram phantom; deterministic for a given ``seed`` and ``config``.

    Returns a :class:`Phantom2D` with ``image: (rows, cols) uint16`` stored values, boxes
    ``(N, 4) float32`` xyxy px (masses first, then calcification clusters) and labels into
    ``CLASS_NAMES_2D``. ``sizes_mm`` are the nominal mass diameters / cluster extents.
    """
    cfg = config or MammoConfig()
    ss = np.random.SeedSequence([int(seed), 0x4D47])
    rng_anat, rng_les, rng_noise, rng_meta = (np.random.default_rng(s) for s in ss.spawn(4))
    spacing = max(cfg.field_mm[0] / cfg.rows, cfg.field_mm[1] / cfg.cols)
    laterality = cfg.laterality or str(rng_meta.choice(["L", "R"]))
    img, breast = _anatomy(rng_anat, cfg, spacing)

    boxes: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    sizes: list[float] = []
    details: list[dict[str, object]] = []
    taken: list[tuple[float, float, float]] = []

    def _add(box: tuple[float, float, float, float], label: int, size: float, info: dict[str, object]) -> None:
        boxes.append(box)
        labels.append(label)
        sizes.append(size)
        details.append(info)

    for _ in range(cfg.masses):
        d_mm = float(rng_les.uniform(*cfg.mass_diameter_mm))
        rad_px = d_mm / spacing  # room for lobulation and spicules
        r, c = _place(rng_les, breast, cfg, rad_px, taken)
        box, info = _render_mass(img, rng_les, r, c, d_mm, spacing)
        taken.append((r, c, rad_px))
        _add(box, MASS, d_mm, info)
    for _ in range(cfg.calcification_clusters):
        rad_px = 6.0 / spacing
        r, c = _place(rng_les, breast, cfg, rad_px, taken)
        box, extent, info = _render_cluster(img, rng_les, r, c, spacing)
        taken.append((r, c, rad_px))
        _add(box, CALC, extent, info)

    img += rng_noise.standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise)
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    if laterality == "R":  # chest wall on the right: mirror the picture and the truth
        img = img[:, ::-1]
        b[:, [0, 2]] = cfg.cols - b[:, [2, 0]]
        for info in details:
            for key in ("specks_px", "center_px"):
                pts = np.asarray(info.get(key, []), dtype=np.float64).reshape(-1, 2)
                if key in info:
                    pts[:, 0] = cfg.cols - pts[:, 0]
                    info[key] = pts.tolist() if key == "specks_px" else pts[0].tolist()
    return Phantom2D(
        image=to_stored(img, cfg.bits_stored, cfg.photometric),
        pixel_spacing_mm=(spacing, spacing),
        boxes=b,
        labels=np.array(labels, dtype=np.int64),
        sizes_mm=np.array(sizes, dtype=np.float32),
        photometric=cfg.photometric,
        bits_stored=cfg.bits_stored,
        modality="MG",
        view=cfg.view,
        laterality=laterality,
        seed=int(seed),
        lesions=details,
        window=window_for(0.05, 0.85, cfg.bits_stored, cfg.photometric),
    )

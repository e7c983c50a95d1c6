"""Synthetic PA chest radiographs (DX, For Presentation) with lung nodules.

Anatomy, rendered in display brightness (1 = most attenuating, bright on MONOCHROME2): the body
outline against air, two lung fields (dark) with domed bases, the mediastinum and heart (bright),
the spine, clavicles and posterior ribs as curved bright bands, a little vessel-like texture in
the lungs, and nodules of 5–30 mm as projected spheres inside the lung fields. The patient's
left is on the image right (PA view). Anatomy, nodules and detector noise draw from independent
random streams of the seed.
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

NODULE = CLASS_NAMES_2D.index("nodule")


@dataclass(frozen=True)
class ChestXrayConfig:
    """Chest radiograph phantom settings.

    rows/cols: image size in pixels (full size ~2500×2500; tests use e.g. 256×256).
    field_mm: detector field (rows, cols) in mm; pixel spacing is ``max(field/size)``, isotropic.
    """

    rows: int = 2500
    cols: int = 2500
    field_mm: tuple[float, float] = (430.0, 430.0)
    nodules: int = 1
    nodule_diameter_mm: tuple[float, float] = (5.0, 30.0)
    bits_stored: int = 12
    photometric: Photometric = "MONOCHROME2"
    noise: float = 0.006

    def __post_init__(self) -> None:
        check_common(self.rows, self.cols, self.bits_stored, self.photometric)
        if not 0 <= self.nodules <= 6:
            raise ConfigError(f"xray.nodules must be 0..6, got {self.nodules}")
        lo, hi = self.nodule_diameter_mm
        if not 1.0 <= lo <= hi <= 60.0:
            raise ConfigError(f"xray.nodule_diameter_mm must satisfy 1 <= low <= high <= 60, got {self.nodule_diameter_mm}")


def _ellipse_profile(rr: np.ndarray, cc: np.ndarray, r0: float, c0: float, ar: float, ac: float) -> np.ndarray:
    """Projected thickness (in [0, 1]) of an ellipsoid with semi-axes ar (rows), ac (cols) px."""
    rho2 = ((rr - r0) / ar) ** 2 + ((cc - c0) / ac) ** 2
    return np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0)).astype(np.float32)


def _bands(
    img: np.ndarray, centre_row: np.ndarray, c_from: int, c_to: int, half_width: float, amp: np.ndarray
) -> None:
    """Add a curved bright band (a rib or clavicle) in place.

    centre_row, amp: ``(c_to - c_from,)`` row of the band centre and its brightness for each
    column in ``[c_from, c_to)``.
    """
    R = img.shape[0]
    lo = int(max(np.floor(centre_row.min() - half_width - 1), 0))
    hi = int(min(np.ceil(centre_row.max() + half_width + 2), R))
    if hi <= lo or c_to <= c_from:
        return
    rows = np.arange(lo, hi, dtype=np.float32)[:, None]
    d = np.abs(rows - centre_row[None, :]) / half_width
    # cortical bone: brighter edges than the middle of the band
    prof = np.where(d < 1.0, 0.7 + 0.3 * d**2, 0.0).astype(np.float32)
    img[lo:hi, c_from:c_to] += amp[None, :].astype(np.float32) * prof


def _anatomy(rng: np.random.Generator, cfg: ChestXrayConfig, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """(brightness, lung weight) both ``(R, C) float32``; lung weight is 1 deep in the lungs."""
    R, C = cfg.rows, cfg.cols
    rr = np.arange(R, dtype=np.float32)[:, None]
    cc = np.arange(C, dtype=np.float32)[None, :]
    j = lambda s: 1.0 + rng.uniform(-s, s)
    body = _ellipse_profile(rr, cc, 0.62 * R, 0.5 * C, 0.75 * R, 0.47 * C * j(0.03))
    lung_r = _ellipse_profile(rr, cc, 0.45 * R, 0.31 * C, 0.3 * R * j(0.05), 0.15 * C * j(0.05))
    lung_l = _ellipse_profile(rr, cc, 0.44 * R, 0.69 * C, 0.29 * R * j(0.05), 0.14 * C * j(0.05))
    heart = _ellipse_profile(rr, cc, 0.64 * R, 0.56 * C * j(0.02), 0.15 * R * j(0.05), 0.15 * C * j(0.05))
    medi = np.exp(-(((cc - 0.5 * C) / (0.06 * C)) ** 2)) * (rr > 0.1 * R)
    lungs = np.clip((lung_r + lung_l) * 1.6, 0.0, 1.0) * (1.0 - np.clip(heart * 2.5, 0.0, 1.0))
    img = 0.05 + 0.55 * body
    img -= 0.33 * lungs
    # below the diaphragm (liver, abdomen): as dense as the heart, so the two merge
    abdomen = 1.0 / (1.0 + np.exp(-(rr - 0.74 * R) / (0.012 * R)))
    img += 0.1 * np.clip(heart * 1.5, 0.0, 1.0) ** 0.7 * (1.0 - abdomen) + 0.12 * medi
    img += 0.14 * abdomen * (body > 0) * (1.0 - lungs)
    # spine: a central band with vertebral bodies every ~30 mm
    spine = np.exp(-(((cc - 0.5 * C) / (0.035 * C)) ** 4)) * (0.8 + 0.2 * np.cos(2 * np.pi * rr * spacing / 30.0))
    img += 0.1 * spine * (body > 0)
    # posterior ribs: bands falling laterally, every ~24 mm, on both sides of the spine
    half_w = 5.0 / spacing
    for side in (-1, 1):
        c_from, c_to = (int(0.07 * C), int(0.48 * C)) if side < 0 else (int(0.52 * C), int(0.93 * C))
        cols = np.arange(c_from, c_to, dtype=np.float32)
        dx = np.abs(cols - 0.5 * C) / (0.42 * C)
        ends = np.minimum(cols - c_from, c_to - 1 - cols) * spacing / 20.0  # fade over 20 mm
        amp = np.clip(ends, 0.0, 1.0)
        for i in range(10):
            y0 = 0.14 * R + i * 24.0 / spacing * j(0.04)
            centre = y0 + (30.0 / spacing) * np.sin(np.pi * np.clip(dx, 0, 1) * 0.8) + (20.0 / spacing) * dx**2
            _bands(img, centre.astype(np.float32), c_from, c_to, half_w, 0.06 * amp)
        # clavicle: a nearly horizontal band rising laterally
        centre = 0.13 * R - (18.0 / spacing) * np.clip(dx, 0, 1) ** 1.5
        _bands(img, centre.astype(np.float32), c_from, c_to, 6.0 / spacing, 0.08 * amp)
    vessels = smooth_noise(rng, (R, C), scale_px=6.0 / spacing, octaves=3)
    img += 0.025 * vessels * lungs
    return img.astype(np.float32), lungs.astype(np.float32)


def generate_chest_xray(seed: int, config: ChestXrayConfig | None = None) -> Phantom2D:
    """Render a PA chest radiograph phantom; deterministic for ``seed`` and ``config``.

    Returns a :class:`Phantom2D` with ``image: (rows, cols) uint16`` stored values, boxes
    ``(N, 4) float32`` xyxy px of the nodules (label ``nodule``) and ``sizes_mm`` = diameters.
    """
    cfg = config or ChestXrayConfig()
    ss = np.random.SeedSequence([int(seed), 0x4458])
    rng_anat, rng_les, rng_noise = (np.random.default_rng(s) for s in ss.spawn(3))
    spacing = max(cfg.field_mm[0] / cfg.rows, cfg.field_mm[1] / cfg.cols)
    img, lungs = _anatomy(rng_anat, cfg, spacing)
    R, C = img.shape
    boxes, sizes, details = [], [], []
    taken: list[tuple[float, float, float]] = []
    for _ in range(cfg.nodules):
        d_mm = float(rng_les.uniform(*cfg.nodule_diameter_mm))
        rad = max(d_mm / 2.0 / spacing, 1.5)
        for _attempt in range(500):
            r, c = rng_les.uniform(0.15 * R, 0.8 * R), rng_les.uniform(0.1 * C, 0.9 * C)
            ok = lungs[int(r), int(c)] > 0.85 and all(np.hypot(r - a, c - b) > rad + t + 4 for a, b, t in taken)
            # the whole nodule should lie in the lung, so check its rim as well
            if ok and all(
                lungs[int(np.clip(r + dy, 0, R - 1)), int(np.clip(c + dx, 0, C - 1))] > 0.5
                for dy, dx in ((rad, 0), (-rad, 0), (0, rad), (0, -rad))
            ):
                break
        else:
            raise ConfigError("could not place every nodule in the lungs; use fewer or smaller nodules")
        amp = float(rng_les.uniform(0.1, 0.18))
        h = int(np.ceil(rad)) + 3
        ra, rb, ca, cb = max(int(r) - h, 0), min(int(r) + h + 1, R), max(int(c) - h, 0), min(int(c) + h + 1, C)
        dr = np.arange(ra, rb, dtype=np.float32)[:, None] + 0.5 - r
        dc = np.arange(ca, cb, dtype=np.float32)[None, :] + 0.5 - c
        contrib = amp * sphere_profile(np.hypot(dr, dc), rad)
        img[ra:rb, ca:cb] += contrib
        boxes.append(mask_box(contrib >= BOX_THRESHOLD, ra, ca))
        sizes.append(d_mm)
        details.append({"shape": "round", "center_px": [float(c), float(r)], "contrast": amp})
        taken.append((r, c, rad))
    img += rng_noise.standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise)
    return Phantom2D(
        image=to_stored(img, cfg.bits_stored, cfg.photometric),
        pixel_spacing_mm=(spacing, spacing),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.full(len(boxes), NODULE, dtype=np.int64),
        sizes_mm=np.array(sizes, dtype=np.float32),
        photometric=cfg.photometric,
        bits_stored=cfg.bits_stored,
        modality="DX",
        view="PA",
        laterality="",
        seed=int(seed),
        lesions=details,
        window=window_for(0.0, 0.85, cfg.bits_stored, cfg.photometric),
    )

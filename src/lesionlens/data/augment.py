"""Medical-safe augmentation of detection samples, in physical units.

A sample is ``image: (C, H, W) float32`` (HU for CT stacks, or raw intensity for 2D) and
``boxes: (N, 4) float32 xyxy pixels`` with ``labels: (N,) int64``. Every transform keeps the
physics plausible: geometric changes are flips, small rotations and scalings; intensity changes
happen in HU space (small offsets, contrast about a tissue level, gamma inside the lung window,
blur and noise at scanner-like levels). Nothing here produces intensities a scanner could not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lesionlens.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; ``enabled=False`` turns every transform off (validation)."""

    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.0  # CT anatomy has a strong up/down prior; off by default
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.85, 1.2)
    affine_p: float = 0.5
    hu_offset: float = 30.0  # ± HU
    contrast: tuple[float, float] = (0.9, 1.1)  # multiplies (HU - level)
    contrast_level: float = -500.0
    gamma_p: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.25)
    gamma_window: tuple[float, float] = (-1350.0, 150.0)
    noise_sigma: tuple[float, float] = (0.0, 20.0)  # HU
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)  # pixels
    min_box_px: float = 2.0  # boxes smaller than this after a transform are dropped

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "affine_p", "gamma_p", "blur_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {v}")
        if not (0 < self.scale[0] <= self.scale[1]):
            raise ConfigError(f"augment.scale must be 0 < low <= high, got {self.scale}")


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right. image (C,H,W); boxes (N,4) xyxy px."""
    w = image.shape[-1]
    out = boxes.copy()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return image[..., ::-1].copy(), out


def vflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror top-bottom. image (C,H,W); boxes (N,4) xyxy px."""
    h = image.shape[-2]
    out = boxes.copy()
    out[:, 1], out[:, 3] = h - boxes[:, 3], h - boxes[:, 1]
    return image[..., ::-1, :].copy(), out


def rotate_scale(
    image: np.ndarray, boxes: np.ndarray, angle_deg: float, scale: float, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle_deg`` and scale by ``scale`` about the image centre (same output size).

    Boxes are transformed as the axis-aligned hull of their rotated inscribed ellipse, which
    stays tight for round lesions (a rotated corner hull would grow every box by up to 41 %).
    Pixels from outside the image take ``fill`` (air for CT).
    """
    _, h, w = image.shape
    theta = np.deg2rad(angle_deg)
    c, s = np.cos(theta), np.sin(theta)
    # forward map (x, y) -> centre + scale * R @ ((x, y) - centre)
    fwd = scale * np.array([[c, -s], [s, c]])
    inv = np.linalg.inv(fwd)
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    # ndimage works in (row, col) = (y, x)
    inv_rc = inv[::-1, ::-1]
    centre_rc = centre[::-1]
    offset = centre_rc - inv_rc @ centre_rc
    out = np.empty_like(image)
    for ch in range(image.shape[0]):
        out[ch] = ndimage.affine_transform(image[ch], inv_rc, offset=offset, order=1, mode="constant", cval=fill)
    if len(boxes) == 0:
        return out, boxes.copy()
    cxy = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    half = (boxes[:, 2:] - boxes[:, :2]) / 2.0
    new_c = (cxy - centre) @ fwd.T + centre
    # half extents of a rotated, scaled axis-aligned ellipse with semi-axes (a, b)
    a, b = half[:, 0], half[:, 1]
    hx = scale * np.sqrt((a * c) ** 2 + (b * s) ** 2)
    hy = scale * np.sqrt((a * s) ** 2 + (b * c) ** 2)
    new = np.stack([new_c[:, 0] - hx, new_c[:, 1] - hy, new_c[:, 0] + hx, new_c[:, 1] + hy], axis=1)
    return out, new.astype(np.float32)


def clip_boxes(
    boxes: np.ndarray, labels: np.ndarray, height: int, width: int, min_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image and drop those narrower/shorter than ``min_size`` px."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32), labels.reshape(0)
    b = boxes.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    keep = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    return b[keep].astype(np.float32), labels[keep]


class Augmenter:
    """Callable applying :class:`AugmentConfig` with a seeded generator.

    ``fill`` is the intensity used outside the image after geometric transforms (−1000 HU).
    """

    def __init__(self, config: AugmentConfig | None = None, *, fill: float = -1000.0, seed: int | None = None):
        self.config = config or AugmentConfig()
        self.fill = fill
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """image (C,H,W) float32; boxes (N,4) xyxy px; labels (N,) → the same, augmented."""
        cfg, rng = self.config, self.rng
        image = np.asarray(image, dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not cfg.enabled:
            return image, boxes, labels
        if rng.random() < cfg.hflip:
            image, boxes = hflip(image, boxes)
        if rng.random() < cfg.vflip:
            image, boxes = vflip(image, boxes)
        if rng.random() < cfg.affine_p:
            angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
            scale = float(np.exp(rng.uniform(np.log(cfg.scale[0]), np.log(cfg.scale[1]))))
            image, boxes = rotate_scale(image, boxes, angle, scale, self.fill)
        h, w = image.shape[-2:]
        boxes, labels = clip_boxes(boxes, labels, h, w, cfg.min_box_px)
        # intensity, in HU
        factor = rng.uniform(*cfg.contrast)
        image = (image - cfg.contrast_level) * factor + cfg.contrast_level + rng.uniform(-cfg.hu_offset, cfg.hu_offset)
        if rng.random() < cfg.gamma_p:
            lo, hi = cfg.gamma_window
            g = rng.uniform(*cfg.gamma)
            inside = (image > lo) & (image < hi)
            t = ((image - lo) / (hi - lo)).clip(0, 1)
            image = np.where(inside, lo + (hi - lo) * t**g, image)
        if rng.random() < cfg.blur_p:
            sigma = rng.uniform(*cfg.blur_sigma)
            image = ndimage.gaussian_filter(image, sigma=(0, sigma, sigma))
        sigma_n = rng.uniform(*cfg.noise_sigma)
        if sigma_n > 0:
            image = image + rng.normal(0.0, sigma_n, size=image.shape).astype(np.float32)
        return image.astype(np.float32), boxes, labels

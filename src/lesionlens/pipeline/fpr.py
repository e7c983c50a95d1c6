"""False-positive reduction: filters that keep or reject CT lesion candidates, with reasons.

Every filter's verdict is appended to ``lesion.decisions`` as a
:class:`~lesionlens.pipeline.types.FilterDecision` — a rejected candidate is never silently
dropped: ``lesion.kept`` is False and ``lesion.rejected_by`` says why. Filters (each can be
switched off; a switched-off filter records nothing):

- ``lung``: the candidate lies in the lung — its centre is in the lung mask, or its
  segmentation covers its centre and at least ``lung_min_fraction`` of it is in the lung mask
  (a juxtapleural nodule is inside: the lung mask is closed over it);
- ``size``: its size — ``measurements.mean_diameter_mm`` when measured, else the detector's
  ``diameter_mm`` — is within ``size_range_mm``;
- ``vessel``: it is not tubular — the ratio of the longest to the shortest principal axis of its
  segmentation (3D second moments, mm) is under ``max_elongation`` — and its track across slices
  (``lesion.extra["z_extent_mm"]``, ``["drift_mm"]`` from :class:`~lesionlens.pipeline.aggregate.Candidate3D`)
  does not run on (extent along z ≥ ``max_z_ratio`` × its in-plane size) or drift (centre moving
  ≥ ``max_drift_ratio`` × its size): a nodule starts and ends, a vessel continues and drifts.

Arrays follow :mod:`lesionlens.dicom.types`: masks (K, R, C) bool on the volume grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError
from lesionlens.pipeline.morphology import elongation
from lesionlens.pipeline.types import FilterDecision, Lesion

FILTERS = ("lung", "size", "vessel", "track")


@dataclass(frozen=True)
class FPRConfig:
    """Which filters run and their limits (mm, ratios). ``lung_filter`` is on for the lung model.

    The vessel limits come from phantom measurements (truth-built nodules of 4–24 mm, free, on
    the pleura and on vessels: elongation ≤ 2.04, z extent ≤ 1.08 × size, drift ≤ 0.28 × size;
    single vessel segments of 12–25 mm taken as candidates: most exceed one of the limits).
    """

    lung_filter: bool = True
    lung_min_fraction: float = 0.5
    size_filter: bool = True
    size_range_mm: tuple[float, float] = (3.0, 30.0)
    vessel_filter: bool = True
    max_elongation: float = 2.5
    max_z_ratio: float = 2.0
    max_drift_ratio: float = 0.6
    track_filter: bool = True
    min_z_ratio: float = 0.3

    def __post_init__(self) -> None:
        lo, hi = self.size_range_mm
        if not 0.0 <= lo < hi:
            raise ConfigError(f"fpr.size_range_mm must be (min, max) with 0 <= min < max, got {self.size_range_mm}")
        if not 0.0 < self.lung_min_fraction <= 1.0:
            raise ConfigError(f"fpr.lung_min_fraction must be in (0, 1], got {self.lung_min_fraction}")
        if not 0.0 <= self.min_z_ratio < self.max_z_ratio:
            raise ConfigError(f"fpr.min_z_ratio must be in [0, max_z_ratio), got {self.min_z_ratio}")
        if self.max_elongation <= 1.0 or self.max_z_ratio <= 0 or self.max_drift_ratio <= 0:
            raise ConfigError("fpr.max_elongation must be > 1 and max_z_ratio, max_drift_ratio > 0")


def _centre_voxel(volume: Volume, lesion: Lesion) -> tuple[int, int, int]:
    if lesion.center_mm is not None:
        idx = np.rint(volume.lps_to_index(np.asarray(lesion.center_mm, np.float64))).astype(int)
    else:
        b = np.asarray(lesion.bbox_px, np.float64)
        idx = np.rint([lesion.key_k, (b[1] + b[3]) / 2 - 0.5, (b[0] + b[2]) / 2 - 0.5]).astype(int)
    k, r, c = (int(v) for v in np.clip(idx, 0, np.array(volume.pixels.shape[:3]) - 1))
    return k, r, c


def lung_decision(volume: Volume, lesion: Lesion, lung_mask: np.ndarray | None, config: FPRConfig) -> FilterDecision:
    """The ``lung`` filter's verdict; value: the fraction of the lesion's segmentation inside the
    lung mask (when the segmentation covers the centre; else 1 or 0 for the centre)."""
    if lung_mask is None:
        return FilterDecision("lung", True, "no lung mask: not checked")
    centre = _centre_voxel(volume, lesion)
    centre_in = bool(lung_mask[centre])
    mask = lesion.measurements.mask if lesion.measurements is not None else None
    frac, covers = None, False
    if mask is not None and mask.mask.any():
        k0, r0, c0 = mask.offset
        dk, dr, dc = mask.mask.shape
        inside = lung_mask[k0 : k0 + dk, r0 : r0 + dr, c0 : c0 + dc][mask.mask]
        frac = float(inside.mean())
        rel = np.array(centre) - np.array(mask.offset)
        covers = bool(np.all(rel >= 0) and np.all(rel < mask.mask.shape) and mask.mask[tuple(rel)])
    if centre_in:
        return FilterDecision("lung", True, "centre inside the lung mask", frac if covers else 1.0)
    if covers and frac is not None and frac >= config.lung_min_fraction:
        return FilterDecision("lung", True, f"{frac:.0%} of the lesion inside the lung mask", frac)
    if covers and frac is not None:
        return FilterDecision("lung", False, f"outside the lung mask (centre outside, {frac:.0%} of the lesion inside)",
                              frac)
    return FilterDecision("lung", False, "outside the lung mask (centre outside it)", 0.0)


def size_decision(lesion: Lesion, config: FPRConfig) -> FilterDecision:
    """The ``size`` filter's verdict on the measured mean diameter (else the detector's)."""
    lo, hi = config.size_range_mm
    if lesion.measurements is not None:
        d, what = float(lesion.measurements.mean_diameter_mm), "mean diameter"
    elif lesion.diameter_mm is not None:
        d, what = float(lesion.diameter_mm), "detector diameter"
    else:
        return FilterDecision("size", True, "no size: not checked")
    if d < lo:
        return FilterDecision("size", False, f"{what} {d:.1f} mm below the {lo:.1f} mm minimum", d)
    if d > hi:
        return FilterDecision("size", False, f"{what} {d:.1f} mm above the {hi:.1f} mm maximum", d)
    return FilterDecision("size", True, f"{what} {d:.1f} mm within {lo:.1f}–{hi:.1f} mm", d)


def vessel_decision(volume: Volume, lesion: Lesion, config: FPRConfig) -> FilterDecision:
    """The ``vessel`` filter's verdict: shape (elongation of the segmentation) and track
    (z extent and drift relative to the in-plane size). value: the elongation (or the failing
    track ratio)."""
    m = lesion.measurements
    notes = []
    elong = None
    if m is not None and m.mask is not None and m.volume_mm3 is not None and m.mask.mask.any():
        elong = elongation(m.mask.mask, volume.spacing_mm)
        if elong >= config.max_elongation:
            return FilterDecision("vessel", False, f"tubular (elongation {elong:.1f} ≥ {config.max_elongation:.1f}): "
                                  "vessel-like", elong)
        notes.append(f"elongation {elong:.1f} < {config.max_elongation:.1f}")
    size = max(m.long_axis.length_mm if m is not None else 0.0, lesion.diameter_mm or 0.0)
    z_ext, drift = lesion.extra.get("z_extent_mm"), lesion.extra.get("drift_mm")
    if size > 0 and z_ext is not None:
        ratio = float(z_ext) / size
        if ratio >= config.max_z_ratio:
            return FilterDecision("vessel", False, f"runs on across slices (z extent {float(z_ext):.1f} mm = "
                                  f"{ratio:.1f} × its {size:.1f} mm size ≥ {config.max_z_ratio:.1f}): vessel-like", ratio)
        notes.append(f"z extent {ratio:.1f} × size")
    if size > 0 and drift is not None:
        ratio = float(drift) / size
        if ratio >= config.max_drift_ratio:
            return FilterDecision("vessel", False, f"drifts across slices (centre moves {float(drift):.1f} mm = "
                                  f"{ratio:.1f} × its {size:.1f} mm size ≥ {config.max_drift_ratio:.1f}): vessel-like",
                                  ratio)
        notes.append(f"drift {ratio:.1f} × size")
    if not notes:
        return FilterDecision("vessel", True, "no segmentation or track: not checked")
    return FilterDecision("vessel", True, "not vessel-like (" + ", ".join(notes) + ")", elong)


def track_decision(lesion: Lesion, config: FPRConfig) -> FilterDecision:
    """The ``track`` filter's verdict: a nodule is about as deep as it is wide, so it shows on
    neighbouring slices; a candidate seen on too few slices for its in-plane size (noise, a
    vessel crossing the slice, an edge) is dropped. Slices thicker than the expected depth
    cannot tell, so one slice is enough there. value: z extent / size."""
    z_ext = lesion.extra.get("z_extent_mm")
    m = lesion.measurements
    size = float(m.mean_diameter_mm) if m is not None else float(lesion.diameter_mm or 0.0)
    if z_ext is None or size <= 0:
        return FilterDecision("track", True, "no track: not checked")
    ratio = float(z_ext) / size
    if ratio < config.min_z_ratio:
        return FilterDecision("track", False, f"too thin across slices (seen over {float(z_ext):.1f} mm for a "
                              f"{size:.1f} mm lesion: {ratio:.2f} < {config.min_z_ratio:.2f} × size)", ratio)
    return FilterDecision("track", True, f"seen over {float(z_ext):.1f} mm ({ratio:.2f} × size)", ratio)


def apply_filters(volume: Volume, lesions: list[Lesion], lung_mask: np.ndarray | None,
                  config: FPRConfig | None = None) -> None:
    """Run the enabled filters on every lesion, appending their decisions (earlier decisions of
    the same filters are replaced, so running twice does not duplicate them).

    volume: the CT the lesions were found in; lung_mask: (K, R, C) bool or None (the lung filter
    then records that it could not check). Lesions are changed in place; none is removed.
    """
    cfg = config or FPRConfig()
    for les in lesions:
        found = []
        if cfg.lung_filter:
            found.append(lung_decision(volume, les, lung_mask, cfg))
        if cfg.size_filter:
            found.append(size_decision(les, cfg))
        if cfg.vessel_filter:
            found.append(vessel_decision(volume, les, cfg))
        if cfg.track_filter:
            found.append(track_decision(les, cfg))
        les.decisions = [d for d in les.decisions if d.filter not in FILTERS] + found


__all__ = ["FILTERS", "FPRConfig", "apply_filters", "lung_decision", "size_decision", "track_decision", "vessel_decision"]

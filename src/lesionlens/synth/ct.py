"""Synthetic chest CT with exact ground truth: :func:`generate_ct` and :func:`write_ct_study`.

Same seed → identical pixels, UIDs and truth. Arrays follow :mod:`lesionlens.dicom.types`:
``(K, R, C)`` with ``affine`` mapping ``(k, r, c, 1)`` → DICOM LPS mm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.ndimage import gaussian_filter1d

from lesionlens.data.annotations import StudyTruth
from lesionlens.dicom.write import uid_from_seed
from lesionlens.errors import ConfigError
from lesionlens.synth import anatomy as A
from lesionlens.synth.nodules import (
    NODULE_TYPES,
    Nodule,
    Placer,
    make_shape,
    render_nodule,
    sample_diameter,
)
from lesionlens.synth.truth import SCHEMA, nodule_record, study_truth_from_dict, write_truth
from lesionlens.synth.vessels import VesselTree, grow_trees, render_vessels

PixelRepresentation = Literal["random", "unsigned", "signed", "signed_offset"]
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class CTPhantomConfig:
    """What a synthetic chest CT may look like; per-study values are drawn from these by seed.

    Ranges are ``(low, high)``. ``n_slices=None`` covers the whole chest (``coverage_mm``).
    pixel_representation: ``unsigned`` (stored = HU + 1024, intercept −1024), ``signed``
    (stored = HU, intercept 0), ``signed_offset`` (int16 stored = HU + 1024, intercept −1024)
    or ``random`` (one of them by seed).
    """

    matrix: tuple[int, int] = (512, 512)
    n_slices: int | None = None
    coverage_mm: tuple[float, float] = (290.0, 340.0)
    pixel_spacing_mm: tuple[float, float] = (0.5, 0.9)
    slice_spacings_mm: tuple[float, ...] = (0.625, 1.0, 1.25, 2.0, 2.5)
    noise_hu: tuple[float, float] = (10.0, 40.0)
    psf_fwhm_mm: tuple[float, float] = (0.6, 1.1)
    n_nodules: tuple[int, int] = (1, 6)
    p_no_nodules: float = 0.2
    nodule_diameter_mm: tuple[float, float] = (3.0, 30.0)
    small_nodule_fraction: float = 0.75
    type_weights: dict[str, float] = field(
        default_factory=lambda: {"solid": 0.6, "part_solid": 0.2, "ground_glass": 0.2})
    p_lobulated: float = 0.3
    p_juxtapleural: float = 0.25
    p_juxtavascular: float = 0.25
    pixel_representation: PixelRepresentation = "random"
    max_vessel_segments: int = 10000
    min_vessel_radius_mm: float = 0.4

    def __post_init__(self) -> None:
        def rng_ok(name: str, lo_min: float, hi_max: float) -> None:
            v = getattr(self, name)
            if len(v) != 2 or not (lo_min <= v[0] <= v[1] <= hi_max):
                raise ConfigError(f"{name} must be (low, high) within [{lo_min}, {hi_max}], got {v!r}")

        if len(self.matrix) != 2 or min(self.matrix) < 32 or max(self.matrix) > 2048:
            raise ConfigError(f"matrix must be (rows, columns) in 32…2048, got {self.matrix!r}")
        if self.n_slices is not None and not 1 <= self.n_slices <= 4000:
            raise ConfigError(f"n_slices must be 1…4000 or None, got {self.n_slices!r}")
        rng_ok("coverage_mm", 10.0, 2000.0)
        rng_ok("pixel_spacing_mm", 0.1, 10.0)
        rng_ok("noise_hu", 0.0, 200.0)
        rng_ok("psf_fwhm_mm", 0.0, 5.0)
        rng_ok("n_nodules", 0, 20)
        rng_ok("nodule_diameter_mm", 1.0, 60.0)
        if not self.slice_spacings_mm or min(self.slice_spacings_mm) <= 0:
            raise ConfigError("slice_spacings_mm must list positive spacings")
        for name in ("p_no_nodules", "small_nodule_fraction", "p_lobulated", "p_juxtapleural",
                     "p_juxtavascular"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if self.p_juxtapleural + self.p_juxtavascular > 1.0:
            raise ConfigError("p_juxtapleural + p_juxtavascular must not exceed 1")
        bad = set(self.type_weights) - set(NODULE_TYPES)
        if bad or not self.type_weights or min(self.type_weights.values()) < 0 or sum(self.type_weights.values()) <= 0:
            raise ConfigError(f"type_weights must weigh {NODULE_TYPES}, got {self.type_weights!r}")
        if self.pixel_representation not in ("random", "unsigned", "signed", "signed_offset"):
            raise ConfigError(f"pixel_representation {self.pixel_representation!r} is not one of "
                              "random, unsigned, signed, signed_offset")
        if self.max_vessel_segments < 0 or self.min_vessel_radius_mm <= 0:
            raise ConfigError("max_vessel_segments must be ≥ 0 and min_vessel_radius_mm > 0")


@dataclass
class CTPhantom:
    """One generated study.

    hu: (K, R, C) int16 HU after blur and noise, clipped to −1024…3071.
    affine: (4, 4) float64, ``lps_mm = affine @ [k, r, c, 1]``.
    labels: (K, R, C) uint8 nodule id per voxel (0 = none; ids match ``truth`` order, 1-based).
    tissue: (K, R, C) uint8 tissue codes of :mod:`lesionlens.synth.anatomy` (before blur).
    """

    seed: int
    hu: np.ndarray
    affine: np.ndarray
    geometry: A.ScanGeometry
    labels: np.ndarray
    tissue: np.ndarray
    nodules: list[Nodule]
    vessels: VesselTree
    scanner: dict[str, Any]
    uids: dict[str, str]
    patient: dict[str, str]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def truth(self) -> StudyTruth:
        return study_truth_from_dict(self.truth_document())

    def truth_document(self) -> dict[str, Any]:
        """The ``lesionlens.truth/1`` JSON document of this study."""
        g = self.geometry
        return {
            "schema": SCHEMA,
            "generator": "lesionlens.synth.ct",
            "seed": self.seed,
            "patient_id": self.patient["id"],
            "patient_name": self.patient["name"],
            "study_instance_uid": self.uids["study"],
            "series_instance_uid": self.uids["series"],
            "frame_of_reference_uid": self.uids["frame_of_reference"],
            "geometry": {
                "shape_krc": list(g.shape),
                "spacing_krc_mm": [round(s, 6) for s in g.spacing_mm],
                "origin_lps_mm": [round(o, 4) for o in g.origin],
                "image_orientation_patient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                "slice_direction_lps": [0.0, 0.0, 1.0],
                "slice_thickness_mm": g.slice_thickness_mm,
                "affine": np.round(self.affine, 6).tolist(),
            },
            "scanner": {k: v for k, v in self.scanner.items()},
            "vessels": {
                "segments": len(self.vessels),
                "radius_max_mm": round(float(self.vessels.r_start.max()), 3) if len(self.vessels) else 0.0,
                "radius_min_mm": round(float(self.vessels.r_end.min()), 3) if len(self.vessels) else 0.0,
            },
            "nodules": [nodule_record(n, g.lps_to_index(n.center_mm)) for n in self.nodules],
        }


def _streams(seed: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x43545048])
    return [np.random.default_rng(s) for s in ss.spawn(7)]


def _choose_scanner(rng: np.random.Generator, cfg: CTPhantomConfig, anat: A.Anatomy) -> tuple[A.ScanGeometry, dict[str, Any]]:
    rows, cols = cfg.matrix
    lo, hi = cfg.pixel_spacing_mm
    need = (2 * anat.body_ax + 30.0) / cols
    dx = float(np.clip(max(rng.uniform(lo, hi), need), lo, hi))
    dz = float(rng.choice(np.asarray(cfg.slice_spacings_mm)))
    thick = float(dz * rng.choice([1.0, 1.0, 1.0, 1.25]))
    k = cfg.n_slices or int(np.ceil(rng.uniform(*cfg.coverage_mm) / dz))
    apex = anat.center[2] + anat.lung_height
    length = k * dz
    if length >= anat.lung_height + 20.0:
        z_top = apex + rng.uniform(10.0, 25.0)
    else:  # a slab inside the lungs
        z_top = rng.uniform(anat.center[2] + 20.0 + length, apex - 5.0) if length < anat.lung_height - 25 else apex
    x0 = -(cols - 1) / 2 * dx
    y0 = -(rows - 1) / 2 * dx + rng.uniform(-15.0, 15.0)
    z0 = round(float(z_top - (k - 1) * dz), 3)
    geom = A.ScanGeometry((k, rows, cols), (dz, dx, dx), (x0, y0, z0), thick)
    rep: str = cfg.pixel_representation
    if rep == "random":
        rep = str(rng.choice(["unsigned", "signed", "signed_offset"]))
    scanner = {
        "pixel_representation": rep,
        "rescale_intercept": 0.0 if rep == "signed" else -1024.0,
        "noise_hu": round(float(rng.uniform(*cfg.noise_hu)), 2),
        "psf_fwhm_mm": round(float(rng.uniform(*cfg.psf_fwhm_mm)), 3),
        "kvp": float(rng.choice([100.0, 120.0, 120.0, 140.0])),
        "tube_current_ma": int(rng.integers(80, 350)),
        "kernel": str(rng.choice(["LUNG", "B60f", "YC", "STANDARD", "B45f"])),
        "manufacturer_model": str(rng.choice(["Phantom CT 64", "Phantom CT 128", "Phantom CT 256"])),
    }
    return geom, scanner


def _pick_type(rng: np.random.Generator, cfg: CTPhantomConfig, diameter: float) -> str:
    names = list(cfg.type_weights)
    w = np.array([cfg.type_weights[n] for n in names], float)
    if diameter < 8.0 and "part_solid" in names and len(names) > 1:  # a core needs room
        w[names.index("part_solid")] = 0.0
    if w.sum() <= 0:
        return "solid" if "solid" in names else names[0]
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _place_nodules(rng: np.random.Generator, cfg: CTPhantomConfig, placer: Placer) -> list[Nodule]:
    if rng.random() < cfg.p_no_nodules:
        return []
    count = int(rng.integers(cfg.n_nodules[0], cfg.n_nodules[1] + 1))
    out: list[Nodule] = []
    for _ in range(count * 3):
        if len(out) == count:
            break
        d = sample_diameter(rng, cfg.small_nodule_fraction, *cfg.nodule_diameter_mm)
        kind = _pick_type(rng, cfg, d)
        n = make_shape(rng, d, rng.random() < cfg.p_lobulated + (0.2 if d > 15 else 0.0))
        u = rng.random()
        if u < cfg.p_juxtapleural:
            c, n.juxtapleural = placer.juxtapleural(n), True
        elif u < cfg.p_juxtapleural + cfg.p_juxtavascular:
            c, n.juxtavascular = placer.juxtavascular(n), True
        else:
            c = placer.free(n)
        if c is None:
            continue
        n.center_mm, n.type, n.id = c, kind, len(out) + 1
        if kind == "solid":
            n.hu = float(rng.uniform(-40.0, 70.0))
        else:
            n.hu = float(rng.uniform(-680.0, -380.0))
        if kind == "part_solid":
            n.core_hu, n.core_fraction = float(rng.uniform(-20.0, 60.0)), float(rng.uniform(0.45, 0.65))
        out.append(n)
        placer.placed.append(n)
    return out


def _blur_and_noise(hu: np.ndarray, geom: A.ScanGeometry, scanner: dict[str, Any],
                    rng: np.random.Generator) -> np.ndarray:
    """PSF blur (Gaussian, FWHM in-plane; slice profile FWHM = thickness) + correlated noise.

    A PSF FWHM of 0 stands for an ideal scanner: no blur in-plane nor along z.
    """
    dz, dy, dx = geom.spacing_mm
    fwhm = scanner["psf_fwhm_mm"]
    if fwhm > 0:
        for ax, sp in ((1, dy), (2, dx)):
            gaussian_filter1d(hu, fwhm / 2.3548 / sp, axis=ax, output=hu, truncate=3.0)
    if fwhm > 0 and hu.shape[0] > 1 and geom.slice_thickness_mm > 0:
        gaussian_filter1d(hu, geom.slice_thickness_mm / 2.3548 / dz, axis=0, output=hu, truncate=3.0)
    sigma = float(scanner["noise_hu"])
    if sigma > 0:
        grain = 0.8  # noise correlation length, pixels
        delta = np.zeros(31, np.float32)
        delta[15] = 1.0
        gain = float(np.sqrt(np.sum(gaussian_filter1d(delta, grain, truncate=3.0) ** 2)))
        for k0 in range(0, hu.shape[0], 32):  # chunks keep the temporary small
            n = rng.standard_normal((min(32, hu.shape[0] - k0),) + hu.shape[1:], dtype=np.float32)
            gaussian_filter1d(n, grain, axis=1, output=n, truncate=3.0)
            gaussian_filter1d(n, grain, axis=2, output=n, truncate=3.0)
            n *= np.float32(sigma / gain**2)
            hu[k0:k0 + len(n)] += n
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    out = np.empty(hu.shape, np.int16)
    np.rint(hu, out=hu)
    out[...] = hu
    return out


def generate_ct(seed: int, config: CTPhantomConfig | None = None) -> CTPhantom:
    """Generate one synthetic chest CT study (deterministic by ``seed``).

    Returns a :class:`CTPhantom`: ``hu`` (K, R, C) int16, ``affine`` (4, 4) LPS, per-voxel
    nodule ``labels``, ``tissue`` codes, nodule and vessel truth, scanner settings and UIDs.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    cfg = config or CTPhantomConfig()
    r_scan, r_anat, r_tex, r_ves, r_nod, r_noise, r_grain = _streams(int(seed))
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    anat = A.random_anatomy(r_anat, z_offset=float(r_anat.uniform(-520.0, -180.0)))
    geom, scanner = _choose_scanner(r_scan, cfg, anat)
    texture = A.lung_texture(r_tex, anat, geom)
    hu, tissue = A.render_anatomy(anat, geom, texture)
    del texture
    times["anatomy"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    trees = grow_trees(r_ves, anat, min_radius=cfg.min_vessel_radius_mm, max_segments=cfg.max_vessel_segments)
    render_vessels(trees, geom, hu, tissue, anat.hu[A.VESSEL])
    times["vessels"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    labels = np.zeros(geom.shape, np.uint8)
    nodules = _place_nodules(r_nod, cfg, Placer(r_nod, anat, geom, tissue, trees))
    for n in nodules:
        render_nodule(n, geom, hu, tissue, labels, r_grain)
    times["nodules"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    hu16 = _blur_and_noise(hu, geom, scanner, r_noise)
    del hu
    times["scanner"] = time.perf_counter() - t1
    times["total"] = time.perf_counter() - t0
    uids = {role: str(uid_from_seed("lesionlens.synth.ct", int(seed), role))
            for role in ("study", "series", "frame_of_reference", "localizer_series", "key_object_series")}
    patient = {"id": f"CT{int(seed):06d}", "name": f"PHANTOM^CT{int(seed):04d}",
               "sex": str(r_scan.choice(["M", "F"])), "age": f"{int(r_scan.integers(35, 85)):03d}Y"}
    return CTPhantom(int(seed), hu16, geom.affine, geom, labels, tissue, nodules, trees, scanner,
                     uids, patient, times)


def write_ct_study(phantom: CTPhantom, out_dir: str | Path, *, transfer_syntax: str | None = None,
                   with_localizer: bool = False, with_non_image: bool = False,
                   random_names: bool = False, scramble_instance_numbers: bool = False,
                   with_label_map: bool = False) -> Path:
    """Write the phantom as a DICOM CT series (one file per slice) plus ``truth.json``.

    with_label_map: also write ``labels.npz`` (the exact (K, R, C) nodule label map and the
    volume's affine), so training sets built from the folder get per-slice mask boxes instead of
    boxes from the truth's ellipsoids (:func:`lesionlens.data.trainset.discover_ct_cases`).

    Everything goes into ``out_dir`` (created): slices ``CT_0001.dcm``…, the localizer
    ``LOC_0001.dcm`` (its own series), the Key Object Selection document ``KO_0001.dcm`` —
    or, with ``random_names``, seed-derived hex names without extension.
    transfer_syntax: a UID (e.g. RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless) applied to
    the image objects; None writes Explicit VR Little Endian. Returns ``out_dir``.
    """
    from lesionlens.synth import ct_dicom

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ct_dicom.write_study_files(phantom, out, transfer_syntax=transfer_syntax,
                               with_localizer=with_localizer, with_non_image=with_non_image,
                               random_names=random_names, scramble=scramble_instance_numbers)
    write_truth(phantom.truth_document(), out)
    if with_label_map:
        np.savez_compressed(out / LABEL_MAP_FILE, labels=phantom.labels, affine=phantom.affine)
    return out


#: the label map beside ``truth.json`` (``write_ct_study(with_label_map=True)``)
LABEL_MAP_FILE = "labels.npz"


__all__ = ["LABEL_MAP_FILE", "CTPhantom", "CTPhantomConfig", "generate_ct", "write_ct_study"]

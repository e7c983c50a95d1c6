"""Lung mask against the phantom's tissue truth: overlap, juxtapleural nodules inside, extents."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline.measure_fixtures import small_config, volume_of

from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError, UnsupportedInputError
from lesionlens.pipeline.lung import LungConfig, lung_info, lung_mask, lung_sides
from lesionlens.synth import anatomy as A
from lesionlens.synth.ct import CTPhantom, CTPhantomConfig, generate_ct


def _truth(ph: CTPhantom) -> np.ndarray:
    """The lung region of the phantom: parenchyma plus the vessels and nodules painted in it."""
    return np.isin(ph.tissue, (A.LUNG, A.VESSEL, A.NODULE))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def juxtapleural() -> CTPhantom:
    """~2 mm pixels, 2.5 mm slices, 8–24 mm nodules of which most sit on the pleura."""
    return generate_ct(3, small_config(n_nodules=(4, 5), p_juxtapleural=0.8, p_juxtavascular=0.1))


def test_mask_matches_the_lungs_and_holds_juxtapleural_nodules(juxtapleural: CTPhantom) -> None:
    ph = juxtapleural
    mask = lung_mask(volume_of(ph))
    assert mask.shape == ph.hu.shape and mask.dtype == bool
    truth = _truth(ph)
    assert _dice(mask, truth) >= 0.97
    # the air outside the body and the trachea are not lung
    assert not mask[ph.tissue == A.AIR].any()
    if (ph.tissue == A.AIRWAY).any():
        assert mask[ph.tissue == A.AIRWAY].mean() < 0.05
    jp = [n for n in ph.nodules if n.juxtapleural]
    assert len(jp) >= 3
    for n in jp:
        k, r, c = np.rint(ph.geometry.lps_to_index(n.center_mm)).astype(int)
        assert mask[k, r, c], f"juxtapleural nodule {n.id} ({n.diameter_mm:.1f} mm) centre outside the mask"
        assert mask[ph.labels == n.id].mean() >= 0.75  # the closing seals most of the contact


@pytest.mark.parametrize("seed", [1, 7])
def test_mask_overlap_on_other_chests(seed: int) -> None:
    ph = generate_ct(seed, small_config(matrix=(128, 128), n_slices=32, n_nodules=(1, 2)))
    assert _dice(lung_mask(volume_of(ph)), _truth(ph)) >= 0.97


def test_realistic_resolution_uses_a_coarse_grid_and_still_overlaps() -> None:
    """0.7 mm pixels: the mask is made on a ~2.8 mm grid and brought back (a 24-slice slab)."""
    ph = generate_ct(11, CTPhantomConfig(matrix=(512, 512), pixel_spacing_mm=(0.65, 0.75), slice_spacings_mm=(2.0,),
                                         n_slices=24, n_nodules=(1, 2), p_no_nodules=0.0))
    vol = volume_of(ph)
    assert vol.spacing_mm[1] < 0.8
    mask = lung_mask(vol)
    assert _dice(mask, _truth(ph)) >= 0.96


def test_lung_info_extent_midline_and_sides(juxtapleural: CTPhantom) -> None:
    ph = juxtapleural
    vol = volume_of(ph)
    mask = lung_mask(vol)
    info = lung_info(mask, vol)
    assert info is not None and not info.empty
    truth = _truth(ph)
    ks = np.flatnonzero(truth.any(axis=(1, 2)))
    zs = vol.index_to_lps(np.array([[k, 0, 0] for k in (ks[0], ks[-1])], float))[:, 2]
    assert info.z_bottom_mm == pytest.approx(zs.min(), abs=vol.spacing_mm[0] + 1e-6)
    assert info.z_top_mm == pytest.approx(zs.max(), abs=vol.spacing_mm[0] + 1e-6)
    # the gap between the lungs: no lung voxel of the truth lies within 5 mm of the midline
    xs = vol.index_to_lps(np.stack([np.zeros(vol.shape[2]), np.zeros(vol.shape[2]), np.arange(vol.shape[2])], 1))[:, 0]
    near_mid = np.abs(xs - info.midline_x_mm) < 5.0
    assert truth[:, :, near_mid].mean() < 0.01
    sides = lung_sides(mask, info, vol)
    assert set(np.unique(sides)) == {0, 1, 2}
    # right lung (label 1) is at smaller LPS x than the left lung (label 2)
    cx = [xs[np.nonzero(sides == s)[2]].mean() for s in (1, 2)]
    assert cx[0] < info.midline_x_mm < cx[1]
    k = int(ks[len(ks) // 2])
    med, lat = info.medial_mm[k], info.lateral_mm[k]
    assert np.all(np.isfinite(med)) and np.all(lat > med + 30.0)


def test_a_volume_without_lungs_gives_an_empty_mask() -> None:
    px = np.full((6, 64, 64), -1000.0, np.float32)
    yy, xx = np.mgrid[:64, :64]
    px[:, (yy - 32) ** 2 + (xx - 32) ** 2 < 28**2] = 40.0  # a body of soft tissue
    vol = Volume(pixels=px, affine=np.diag([2.5, 1.5, 1.5, 1.0]))
    mask = lung_mask(vol)
    assert not mask.any()
    info = lung_info(mask, vol)
    assert info is not None and info.empty and lung_info(None, vol) is None


def test_bad_input_and_config() -> None:
    with pytest.raises(UnsupportedInputError):
        lung_mask(Volume(pixels=np.zeros((1, 8, 8, 3), np.uint8), affine=np.eye(4)))
    with pytest.raises(ConfigError):
        LungConfig(air_hu=50.0)
    with pytest.raises(ConfigError):
        LungConfig(min_fraction=1.5)

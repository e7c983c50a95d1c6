"""2.5D stacks with offsets in mm on thin vs thick slices, and resampling that keeps LPS positions."""

from __future__ import annotations

import numpy as np
import pytest

from lesionlens.dicom.stack import neighbour_stack, neighbour_stacks, neighbour_stacks_at, resample
from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError, UnsupportedInputError


def ramp_volume(n_slices: int, spacing: float, rows: int = 3, cols: int = 4) -> Volume:
    """Each slice holds its z position in mm (k · spacing): a field linear along the slice axis."""
    z = np.arange(n_slices, dtype=np.float32) * spacing
    pixels = np.broadcast_to(z[:, None, None], (n_slices, rows, cols)).copy()
    affine = np.diag([spacing, 0.7, 0.7, 1.0])
    return Volume(pixels=pixels, affine=affine, is_volumetric=True, has_patient_geometry=True)


def test_thin_and_thick_slices_give_the_same_context_in_mm() -> None:
    thin = ramp_volume(21, 0.5)  # 0 .. 10 mm
    thick = ramp_volume(5, 2.5)  # 0 .. 10 mm
    offsets = (-5.0, 0.0, 5.0)
    a = neighbour_stack(thin, 10, offsets)  # slice at 5 mm
    b = neighbour_stack(thick, 2, offsets)  # slice at 5 mm
    assert a.shape == b.shape == (3, 3, 4) and a.dtype == np.float32
    np.testing.assert_allclose(a[:, 0, 0], [0.0, 5.0, 10.0])
    np.testing.assert_allclose(b[:, 0, 0], [0.0, 5.0, 10.0])


def test_between_slice_offsets_are_interpolated() -> None:
    thick = ramp_volume(5, 2.5)
    out = neighbour_stack(thick, 2, (-1.25, 0.0, 1.0))
    np.testing.assert_allclose(out[:, 1, 1], [3.75, 5.0, 6.0])


def test_ends_are_clamped() -> None:
    vol = ramp_volume(5, 2.5)
    first = neighbour_stack(vol, 0, (-5.0, 0.0, 2.5))
    last = neighbour_stack(vol, 4, (-2.5, 0.0, 7.5))
    np.testing.assert_allclose(first[:, 0, 0], [0.0, 0.0, 2.5])
    np.testing.assert_allclose(last[:, 0, 0], [7.5, 10.0, 10.0])


def test_default_is_whole_neighbour_slices() -> None:
    vol = ramp_volume(5, 3.0)
    np.testing.assert_allclose(neighbour_stack(vol, 1)[:, 0, 0], [0.0, 3.0, 6.0])
    np.testing.assert_allclose(neighbour_stack(vol, 2, n_neighbours=2)[:, 0, 0], [0, 3, 6, 9, 12])


def test_batched_equals_per_slice() -> None:
    vol = ramp_volume(6, 1.5)
    vol.pixels += np.random.default_rng(0).normal(size=vol.pixels.shape).astype(np.float32)
    offsets = (-2.0, 0.0, 2.0, 4.0)
    allk = neighbour_stacks(vol, offsets)
    assert allk.shape == (6, 4, 3, 4)
    for k in range(6):
        np.testing.assert_allclose(allk[k], neighbour_stack(vol, k, offsets), rtol=1e-6)


@pytest.mark.parametrize("spacing", [0.7, 1.0, 1.25, 2.5])
def test_stacks_at_are_the_per_slice_stacks_bit_for_bit(spacing: float) -> None:
    """The predictor's batches (one array, in-place interpolation) are, bit for bit, the
    interpolation a + t * (b - a) in float32 between the two nearest slices, clamped at the ends,
    equal the per-slice stacks, and normalise to the same inputs."""
    from lesionlens.engine.preprocess import InputSpec, normalize, normalize_inplace

    vol = ramp_volume(9, spacing, rows=5, cols=6)
    vol.pixels[:] = np.random.default_rng(1).normal(-500, 700, vol.pixels.shape).astype(np.float32)
    offsets = (-2.5, 0.0, 2.5)
    ks = [0, 1, 4, 7, 8]
    got = neighbour_stacks_at(vol, ks, offsets)
    pos = np.clip(np.array(ks, np.float64)[:, None] + np.array(offsets)[None, :] / spacing, 0, 8)
    lo = np.floor(pos).astype(int)
    t = (pos - lo).astype(np.float32)[..., None, None]
    a, b = vol.pixels[lo], vol.pixels[np.minimum(lo + 1, 8)]
    ref = a + t * (b - a)  # written out here, independent of the implementation
    assert got.dtype == np.float32 and got.shape == (5, 3, 5, 6)
    assert np.array_equal(got, ref)
    assert np.array_equal(got, np.stack([neighbour_stack(vol, k, offsets) for k in ks]))
    spec = InputSpec()
    assert np.array_equal(normalize_inplace(got, spec), normalize(ref, spec))
    assert got.min() >= 0.0 and got.max() <= 1.0  # overwritten in place
    with pytest.raises(ConfigError, match="outside"):
        neighbour_stacks_at(vol, [3, 9], offsets)


def test_stack_errors() -> None:
    vol = ramp_volume(3, 1.0)
    with pytest.raises(ConfigError):
        neighbour_stack(vol, 3)
    rgb = Volume(pixels=np.zeros((2, 2, 2, 3), np.uint8), affine=np.eye(4))
    with pytest.raises(UnsupportedInputError):
        neighbour_stack(rgb, 0)


def _oblique_volume() -> Volume:
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([5.0, 0.8, 0.8])
    affine[:3, 3] = [-100.0, 20.0, 300.0]
    k, r, c = np.meshgrid(np.arange(6), np.arange(10), np.arange(12), indexing="ij")
    idx = np.stack([k, r, c], -1).astype(np.float64)
    vol = Volume(pixels=np.zeros((6, 10, 12), np.float32), affine=affine)
    lps = vol.index_to_lps(idx)
    vol.pixels[:] = (lps @ np.array([0.3, -0.2, 0.5]) + 7.0).astype(np.float32)  # linear in LPS
    return vol


def _corners(vol: Volume) -> np.ndarray:
    k, r, c = vol.pixels.shape[:3]
    idx = np.array([[a, b, d] for a in (-0.5, k - 0.5) for b in (-0.5, r - 0.5) for d in (-0.5, c - 0.5)])
    return vol.index_to_lps(idx)


def test_resample_keeps_the_physical_corners_and_values() -> None:
    vol = _oblique_volume()
    out = resample(vol, (1.25, 1.6, None))
    assert out.shape == (24, 5, 12) and out.pixels.dtype == np.float32
    np.testing.assert_allclose(out.spacing_mm, [1.25, 1.6, 0.8])
    np.testing.assert_allclose(_corners(out), _corners(vol), atol=1e-9)
    # linear interpolation reproduces a field linear in LPS wherever it does not extrapolate
    k, r, c = np.meshgrid(np.arange(24), np.arange(5), np.arange(12), indexing="ij")
    idx = np.stack([k, r, c], -1).reshape(-1, 3).astype(np.float64)
    old_idx = vol.lps_to_index(out.index_to_lps(idx))
    inside = np.all((old_idx >= 0) & (old_idx <= np.array(vol.shape) - 1), axis=1)
    expected = out.index_to_lps(idx) @ np.array([0.3, -0.2, 0.5]) + 7.0
    assert inside.sum() > 100
    np.testing.assert_allclose(out.pixels.reshape(-1)[inside], expected[inside], atol=1e-3)
    assert out.sop_instance_uids == [] and out.metadata["resampled_from_spacing_mm"] == pytest.approx([5, 0.8, 0.8])


def test_resample_rounds_counts_and_keeps_extent() -> None:
    vol = _oblique_volume()  # extent along k: 6 × 5 mm = 30 mm
    out = resample(vol, (4.0, None, None))  # 30/4 = 7.5 → 8 slices of 3.75 mm
    assert out.shape[0] == 8
    np.testing.assert_allclose(out.spacing_mm[0], 3.75)
    np.testing.assert_allclose(_corners(out), _corners(vol), atol=1e-9)


def test_resample_rejects_bad_spacing() -> None:
    with pytest.raises(ConfigError):
        resample(_oblique_volume(), (0.0, 1.0, 1.0))
    with pytest.raises(ConfigError):
        resample(_oblique_volume(), (1.0, 1.0))

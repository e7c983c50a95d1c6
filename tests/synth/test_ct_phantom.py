"""The synthetic chest CT: truth matches pixels, tissues stay in CT ranges, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from lesionlens.errors import ConfigError, DataFormatError
from lesionlens.synth import anatomy as A
from lesionlens.synth.ct import CTPhantom, CTPhantomConfig, generate_ct
from lesionlens.synth.truth import SCHEMA, load_truth, write_truth

# Small but anatomically true grid: 192×192 at ~1.9 mm, 40 slices of 2.5 mm (a 100 mm slab).
SMALL = dict(matrix=(192, 192), n_slices=40, pixel_spacing_mm=(1.8, 2.0), slice_spacings_mm=(2.5,),
             max_vessel_segments=4000)
TINY = dict(matrix=(64, 64), n_slices=8, pixel_spacing_mm=(6.0, 6.0), slice_spacings_mm=(5.0,),
            max_vessel_segments=50, nodule_diameter_mm=(4.0, 6.0))


@pytest.fixture(scope="module")
def clean() -> CTPhantom:
    """Noise- and blur-free phantom with several large-enough nodules of every type."""
    cfg = CTPhantomConfig(**SMALL, noise_hu=(0, 0), psf_fwhm_mm=(0, 0), n_nodules=(5, 6),
                          p_no_nodules=0.0, nodule_diameter_mm=(8.0, 20.0), small_nodule_fraction=0.5,
                          type_weights={"solid": 1, "part_solid": 1, "ground_glass": 1})
    return generate_ct(11, cfg)


@pytest.fixture(scope="module")
def noisy() -> CTPhantom:
    return generate_ct(12, CTPhantomConfig(**SMALL, p_no_nodules=0.0))


def _extent_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    idx = np.argwhere(mask)
    krc = (idx.max(0) - idx.min(0) + 1) * np.asarray(spacing)
    return np.array([krc[2], krc[1], krc[0]])  # → LPS x (columns), y (rows), z (slices)


def test_truth_centres_carry_the_nodule_hu(clean: CTPhantom) -> None:
    assert len(clean.nodules) >= 4
    kinds = set()
    for n in clean.nodules:
        k, r, c = np.rint(clean.geometry.lps_to_index(n.center_mm)).astype(int)
        assert clean.labels[k, r, c] == n.id
        v = float(np.median(clean.hu[k, r - 1:r + 2, c - 1:c + 2]))
        if n.type == "part_solid":  # the core may be only a few voxels wide
            v = float(clean.hu[k, r, c])
        kinds.add(n.type)
        if n.type == "ground_glass":  # vessels stay visible through ground glass
            med = float(np.median(clean.hu[clean.labels == n.id]))
            assert -750 <= med <= -300 and v >= -750, (n.id, v, med)
        else:  # solid and the solid core of part-solid nodules
            assert -100 <= v <= 100, (n.id, n.type, v)
    assert len(kinds) >= 2


def test_part_solid_has_ground_glass_rim(clean: CTPhantom) -> None:
    ps = [n for n in clean.nodules if n.type == "part_solid"]
    if not ps:
        pytest.skip("no part-solid nodule drawn for this seed")
    n = ps[0]
    rim = (clean.labels == n.id) & (clean.hu < -300)
    assert rim.sum() > 10  # ground glass around the solid core


def test_nodule_extent_matches_diameter_within_one_voxel(clean: CTPhantom) -> None:
    sp = clean.geometry.spacing_mm
    vox = np.array([sp[2], sp[1], sp[0]])
    checked = 0
    for n in clean.nodules:
        if n.juxtapleural:  # clipped where it meets the chest wall
            continue
        got = _extent_mm(clean.labels == n.id, sp)
        assert np.all(np.abs(got - n.extent_mm) <= vox + 1e-6), (n.id, got, n.extent_mm)
        if not n.lobulated:  # an ellipsoid's extent lies between its shortest and longest axis
            assert n.axes_mm.min() - vox.max() <= got.min() and got.max() <= n.axes_mm.max() + vox.max()
        vol = (clean.labels == n.id).sum() * float(np.prod(sp))
        assert abs(vol - np.pi * n.diameter_mm**3 / 6) / (np.pi * n.diameter_mm**3 / 6) < 0.35
        checked += 1
    assert checked >= 2


def test_tissues_stay_in_published_ranges(clean: CTPhantom) -> None:
    lung_core = ndimage.binary_erosion(clean.tissue == A.LUNG)
    lung_vals = clean.hu[lung_core]  # sub-voxel vessels add partial volume to some lung voxels
    assert lung_vals.min() >= -900 and np.mean((lung_vals >= -900) & (lung_vals <= -750)) > 0.97
    for code in (A.FAT, A.SOFT, A.BLOOD, A.CORTICAL, A.MARROW):
        vals = clean.hu[clean.tissue == code]
        lo, hi = A.TISSUE_RANGES[code]
        assert vals.size > 100, A.TISSUE_NAMES[code]
        assert lo <= vals.min() and vals.max() <= hi, (A.TISSUE_NAMES[code], vals.min(), vals.max())
    assert np.all(clean.hu[clean.tissue == A.AIR] == -1000)
    # Vessel cores carry blood HU (their rims are partial volume with lung).
    ves = clean.hu[clean.tissue == A.VESSEL]
    assert 30 <= ves.max() <= 60
    lung = clean.hu[clean.tissue == A.LUNG]
    assert lung.std() > 8  # textured, not flat


def test_noisy_tissue_medians_in_range(noisy: CTPhantom) -> None:
    for code in (A.LUNG, A.FAT, A.SOFT, A.MARROW):
        mask = ndimage.binary_erosion(noisy.tissue == code, iterations=2)
        med = float(np.median(noisy.hu[mask]))
        lo, hi = A.TISSUE_RANGES[code]
        assert lo <= med <= hi, (A.TISSUE_NAMES[code], med)
    air = noisy.hu[:, :4, :4].astype(float)
    sigma = noisy.scanner["noise_hu"]
    assert abs(np.std(air[air > -1024]) - sigma) < 0.5 * sigma


def test_vessel_trees_are_many_and_taper(clean: CTPhantom) -> None:
    v = clean.vessels
    assert len(v) > 1000
    assert v.r_start.max() >= 4.0 and v.r_end.min() < 1.0
    assert (v.r_end < 1.0).sum() > 100
    k = clean.hu.shape[0] // 2
    n_comp = ndimage.label(clean.tissue[k] == A.VESSEL)[1]
    assert n_comp >= 15  # many vessel cross-sections look like small round blobs on one slice


def test_same_seed_same_study_and_different_seeds_differ() -> None:
    cfg = CTPhantomConfig(**TINY)
    a, b, c = generate_ct(3, cfg), generate_ct(3, cfg), generate_ct(4, cfg)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    assert a.uids == b.uids and a.truth_document() == b.truth_document()
    assert not np.array_equal(a.hu, c.hu)
    assert a.uids["series"] != c.uids["series"] and a.patient["id"] != c.patient["id"]
    assert a.patient["name"].startswith("PHANTOM^CT")


def test_no_nodule_probability() -> None:
    counts = [len(generate_ct(s, CTPhantomConfig(**TINY, p_no_nodules=0.5)).nodules) for s in range(24)]
    zeros = sum(c == 0 for c in counts)
    assert 4 <= zeros <= 20  # Binomial(24, 0.5): outside this with probability < 0.2 %
    assert all(len(generate_ct(s, CTPhantomConfig(**TINY, p_no_nodules=1.0)).nodules) == 0 for s in range(3))


def test_juxtapleural_nodules_touch_the_chest_wall() -> None:
    ph = generate_ct(21, CTPhantomConfig(**SMALL, p_no_nodules=0.0, n_nodules=(3, 3), p_juxtapleural=1.0,
                                         p_juxtavascular=0.0, nodule_diameter_mm=(6.0, 15.0)))
    assert ph.nodules and all(n.juxtapleural for n in ph.nodules)
    wall = np.isin(ph.tissue, [A.SOFT, A.FAT, A.CORTICAL, A.MARROW])
    for n in ph.nodules:
        ring = ndimage.binary_dilation(ph.labels == n.id, iterations=1)
        assert (ring & wall).any(), n.id


def test_juxtavascular_nodules_touch_a_vessel() -> None:
    ph = generate_ct(22, CTPhantomConfig(**SMALL, p_no_nodules=0.0, n_nodules=(3, 3), p_juxtapleural=0.0,
                                         p_juxtavascular=1.0, nodule_diameter_mm=(5.0, 10.0)))
    assert ph.nodules and all(n.juxtavascular for n in ph.nodules)
    for n in ph.nodules:
        ring = ndimage.binary_dilation(ph.labels == n.id, iterations=1)
        assert (ring & (ph.tissue == A.VESSEL)).any(), n.id


@pytest.mark.parametrize("field,value", [("matrix", (10, 10)), ("noise_hu", (40, 10)),
                                         ("p_no_nodules", 1.5), ("pixel_representation", "float")])
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        CTPhantomConfig(**{field: value})


def test_truth_file_round_trip(tmp_path, clean: CTPhantom) -> None:
    path = write_truth(clean.truth_document(), tmp_path)
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["seed"] == 11
    assert doc["geometry"]["shape_krc"] == list(clean.hu.shape)
    assert np.allclose(doc["geometry"]["affine"], clean.affine)
    st = load_truth(tmp_path)
    assert st.series_instance_uid == clean.uids["series"] and st.patient_id == clean.patient["id"]
    assert [les.kind for les in st.lesions] == [n.type for n in clean.nodules]
    for les, n in zip(st.lesions, clean.nodules):
        assert np.allclose(les.center_mm, n.center_mm, atol=1e-3)
        assert les.extra["juxtapleural"] == n.juxtapleural and "lobulated" in les.extra
    doc["schema"] = "other/1"
    (tmp_path / "truth.json").write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match="schema"):
        load_truth(tmp_path / "truth.json")

"""False-positive filters: vessels, candidates outside the lung and tiny ones are rejected with
their reason; real nodules (free, on the pleura, on a vessel) pass every filter."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline.measure_fixtures import Case, make_case, small_config

from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError
from lesionlens.pipeline.fpr import FPRConfig, apply_filters
from lesionlens.pipeline.lung import lung_mask
from lesionlens.pipeline.measure import elongation, measure_lesion
from lesionlens.pipeline.types import FilterDecision, Lesion
from lesionlens.synth import anatomy as A


@pytest.fixture(scope="module")
def case() -> Case:
    """~2 mm pixels, 2 mm slices, 5–24 mm nodules of all types, a third on the pleura, a third
    on a vessel."""
    return make_case(8, small_config(matrix=(192, 192), slice_spacings_mm=(2.0,), n_slices=48, n_nodules=(4, 5),
                                     nodule_diameter_mm=(5.0, 24.0), p_juxtapleural=0.3, p_juxtavascular=0.3))


@pytest.fixture(scope="module")
def lung(case: Case) -> np.ndarray:
    return lung_mask(case.volume)


def _track(case: Case, les: Lesion) -> None:
    """The track facts a detector's 3D candidate carries (from the label: extent and drift)."""
    lab = case.phantom.labels == int(les.extra["truth_id"])
    ks = np.flatnonzero(lab.any(axis=(1, 2)))
    c0, c1 = (np.argwhere(lab[k]).mean(axis=0) for k in (ks[0], ks[-1]))
    sp = case.volume.spacing_mm
    les.extra["z_extent_mm"] = float(len(ks) * sp[0])
    les.extra["drift_mm"] = float(np.hypot((c1 - c0)[0] * sp[1], (c1 - c0)[1] * sp[2]))


def _candidate(vol: Volume, k0: int, k1: int, centres_rc: np.ndarray, radius_px: float, centre_mm: np.ndarray) -> Lesion:
    """A candidate as aggregation makes it: the box on the middle slice, the slice span, track facts."""
    k = (k0 + k1) // 2
    r, c = centres_rc[k - k0]
    box = np.array([c + 0.5 - radius_px, r + 0.5 - radius_px, c + 0.5 + radius_px, r + 0.5 + radius_px], np.float32)
    sp = vol.spacing_mm
    d = centres_rc[-1] - centres_rc[0]
    return Lesion("C1", "", "nodule", 0.5, k, box, (k0, k1), center_mm=centre_mm, diameter_mm=2 * radius_px * sp[1],
                  extra={"z_extent_mm": float((k1 - k0 + 1) * sp[0]), "drift_mm": float(np.hypot(d[0] * sp[1], d[1] * sp[2]))})


def test_real_nodules_pass_every_filter(case: Case, lung: np.ndarray) -> None:
    lesions = []
    for _, les in case.pairs:
        les.measurements = measure_lesion(case.volume, les, lung=lung)
        _track(case, les)
        lesions.append(les)
    assert any(n.juxtapleural for n, _ in case.pairs) and any(n.juxtavascular for n, _ in case.pairs)
    apply_filters(case.volume, lesions, lung, FPRConfig())
    for (n, les) in case.pairs:
        assert [d.filter for d in les.decisions] == ["lung", "size", "vessel", "track"]
        assert les.kept, f"nodule {n.id} ({n.diameter_mm:.1f} mm) rejected: {les.rejected_by}"
        assert "inside the lung mask" in les.decisions[0].reason
        assert "within 3.0–30.0 mm" in les.decisions[1].reason
        assert les.decisions[2].reason.startswith("not vessel-like")
        assert les.decisions[2].value is not None and les.decisions[2].value < 2.5
    # running again replaces the decisions instead of adding more
    apply_filters(case.volume, lesions, lung)
    assert all(len(les.decisions) == 4 for les in lesions)


def test_a_vessel_of_the_phantom_is_rejected_as_vessel_like(case: Case, lung: np.ndarray) -> None:
    """A vessel segment running mostly head–foot, far from the nodules, taken as a detector would
    see it: a round box on each slice it crosses, drifting with the vessel."""
    ph, vol = case.phantom, case.volume
    t = ph.vessels
    d = t.end - t.start
    length = np.linalg.norm(d, axis=1)
    along_z = np.abs(d[:, 2]) / np.maximum(length, 1e-9)
    zs = ph.geometry.axis_coords()[0]
    mid = (t.start + t.end) / 2
    clear = np.array([min(np.linalg.norm(m - n.center_mm) for n in ph.nodules) for m in mid])
    ok = ((t.r_end > 1.2) & (t.r_start < 3.0) & (length > 14.0) & (along_z > 0.8) & (clear > 20.0)
          & (np.minimum(t.start[:, 2], t.end[:, 2]) > zs[2]) & (np.maximum(t.start[:, 2], t.end[:, 2]) < zs[-3]))
    i = int(np.flatnonzero(ok)[0])
    a, b = (t.start[i], t.end[i]) if t.start[i, 2] < t.end[i, 2] else (t.end[i], t.start[i])
    k0, k1 = (int(np.ceil(ph.geometry.lps_to_index(p)[0])) for p in (a, b))
    k1 -= 1
    pts = [a + (zs[k] - a[2]) / (b[2] - a[2]) * (b - a) for k in range(k0, k1 + 1)]
    rc = np.array([ph.geometry.lps_to_index(p)[1:] for p in pts])
    les = _candidate(vol, k0, k1, rc, radius_px=float(t.r_start[i] / vol.spacing_mm[1]), centre_mm=(a + b) / 2)
    les.measurements = measure_lesion(vol, les, lung=lung)
    apply_filters(vol, [les], lung)
    assert not les.kept
    bad = les.rejected_by
    assert bad is not None and bad.filter == "vessel" and "vessel-like" in bad.reason
    assert les.decisions[0].passed  # it is in the lung
    assert bad.value is not None and bad.value >= 2.5


def test_a_synthetic_tube_is_rejected_by_its_shape() -> None:
    """A 4 mm tube lying obliquely in the axial plane, boxed on three slices (no track facts)."""
    K, R, C = 15, 80, 80
    sp = (1.25, 0.7, 0.7)
    z = (np.arange(K) - 7)[:, None, None] * sp[0]
    y = (np.arange(R) - 40)[None, :, None] * sp[1]
    x = (np.arange(C) - 40)[None, None, :] * sp[2]
    u = np.array([np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))])
    along = x * u[0] + y * u[1]
    dist = np.sqrt(z**2 + (x - along * u[0]) ** 2 + (y - along * u[1]) ** 2)
    px = np.where(dist <= 2.0, 40.0, -850.0).astype(np.float32)
    aff = np.array([[0, 0, 0.7, -28.0], [0, 0.7, 0, -28.0], [1.25, 0, 0, -8.75], [0, 0, 0, 1.0]])
    vol = Volume(pixels=px, affine=aff, is_volumetric=True, has_patient_geometry=True)
    box = np.array([40.5 - 9, 40.5 - 6, 40.5 + 9, 40.5 + 6], np.float32)  # 12.6 × 8.4 mm around a piece of it
    les = Lesion("C1", "", "nodule", 0.5, 7, box, (6, 8), center_mm=vol.index_to_lps(np.array([7.0, 40.0, 40.0])))
    les.measurements = measure_lesion(vol, les)
    assert les.measurements.mask is not None
    e = elongation(les.measurements.mask.mask, vol.spacing_mm)
    apply_filters(vol, [les], np.ones(px.shape, bool))
    bad = les.rejected_by
    assert bad is not None and bad.filter == "vessel"
    assert bad.reason == f"tubular (elongation {e:.1f} ≥ 2.5): vessel-like" and bad.value == pytest.approx(e)


def test_a_candidate_in_the_chest_wall_is_rejected(case: Case, lung: np.ndarray) -> None:
    ph, vol = case.phantom, case.volume
    k = ph.hu.shape[0] // 2
    wall = (ph.tissue[k] == A.SOFT) & ~lung[k]
    wall[:, : ph.hu.shape[2] // 2] = False  # the patient's right body wall... or left: any side will do
    rr, cc = np.nonzero(wall)
    j = int(np.argmin(np.abs(cc - cc.mean()) + np.abs(rr - rr.mean())))
    r, c = int(rr[j]), int(cc[j])
    les = _candidate(vol, k - 1, k + 1, np.array([[r, c]] * 3, float), 3.0, vol.index_to_lps(np.array([k, r, c], float)))
    les.measurements = measure_lesion(vol, les, lung=lung)
    apply_filters(vol, [les], lung)
    bad = les.rejected_by
    assert bad is not None and bad.filter == "lung" and bad.reason.startswith("outside the lung mask (centre outside")
    assert bad.value is not None and bad.value < 0.5


def test_a_2mm_candidate_is_rejected_by_size() -> None:
    K, R, C = 12, 48, 48
    sp = np.array([0.6, 0.5, 0.5])
    g = np.ogrid[:K, :R, :C]
    r2 = sum(((gi - ci) * si) ** 2 for gi, ci, si in zip(g, (5.5, 23.5, 23.5), sp, strict=True))
    px = np.where(r2 <= 1.0, 40.0, -850.0).astype(np.float32)  # a 2 mm sphere
    aff = np.diag([0.0, 0.0, 0.0, 1.0])
    aff[0, 2], aff[1, 1], aff[2, 0] = sp[2], sp[1], sp[0]
    vol = Volume(pixels=px, affine=aff, is_volumetric=True, has_patient_geometry=True)
    les = Lesion("C1", "", "nodule", 0.5, 5, np.array([22, 22, 26, 26], np.float32), (4, 7),
                 center_mm=vol.index_to_lps(np.array([5.5, 23.5, 23.5])))
    les.measurements = measure_lesion(vol, les)
    d = les.measurements.mean_diameter_mm
    assert 1.5 <= d < 3.0
    apply_filters(vol, [les], np.ones(px.shape, bool))
    bad = les.rejected_by
    assert bad == FilterDecision("size", False, f"mean diameter {d:.1f} mm below the 3.0 mm minimum", d)
    # without a measurement the detector's diameter is used; above the maximum is rejected too
    big = Lesion("C2", "", "nodule", 0.5, 5, np.array([2, 2, 46, 46], np.float32), (0, 11), diameter_mm=35.0)
    apply_filters(vol, [big], None, FPRConfig(vessel_filter=False, track_filter=False))
    assert [(x.filter, x.passed) for x in big.decisions] == [("lung", True), ("size", False)]
    assert big.decisions[0].reason == "no lung mask: not checked"
    assert big.decisions[1].reason == "detector diameter 35.0 mm above the 30.0 mm maximum"


def test_switched_off_filters_record_nothing_and_config_is_checked() -> None:
    les = Lesion("C1", "", "nodule", 0.5, 0, np.array([0, 0, 2, 2], np.float32), (0, 0), diameter_mm=1.0)
    vol = Volume(pixels=np.zeros((1, 4, 4), np.float32), affine=np.eye(4))
    apply_filters(vol, [les], None, FPRConfig(lung_filter=False, size_filter=False, vessel_filter=False, track_filter=False))
    assert les.decisions == [] and les.kept
    apply_filters(vol, [les], None, FPRConfig(lung_filter=False, vessel_filter=False, track_filter=False, size_range_mm=(0.5, 5.0)))
    assert les.kept and les.decisions[0].value == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        FPRConfig(size_range_mm=(10.0, 5.0))
    with pytest.raises(ConfigError):
        FPRConfig(max_elongation=1.0)


def test_track_filter_drops_a_candidate_seen_on_too_few_slices_for_its_size() -> None:
    from lesionlens.pipeline.fpr import FPRConfig, track_decision
    from lesionlens.pipeline.types import Lesion

    def cand(z_mm: float, d_mm: float) -> Lesion:
        return Lesion("L1", "", "nodule", 0.8, 5, np.array([10, 10, 20, 20], np.float32), (5, 5),
                      diameter_mm=d_mm, extra={"z_extent_mm": z_mm})

    cfg = FPRConfig()
    flat = track_decision(cand(1.0, 8.0), cfg)  # one 1 mm slice for an 8 mm lesion
    assert not flat.passed and "too thin" in flat.reason and flat.value == pytest.approx(0.125)
    assert track_decision(cand(3.0, 9.0), cfg).passed  # 3 slices of 1 mm for 9 mm: plausible
    assert track_decision(cand(2.5, 6.0), cfg).passed  # one thick slice covers a small nodule
    assert track_decision(Lesion("L1", "", "nodule", 0.8, 5, np.zeros(4, np.float32), (5, 5)), cfg).reason.startswith("no track")
    assert track_decision(cand(1.0, 8.0), FPRConfig(min_z_ratio=0.1)).passed
    with pytest.raises(ConfigError):
        FPRConfig(min_z_ratio=3.0)

"""The learned candidate rescorer: features, fitting, persistence, and its use by the predictor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lesionlens.errors import DataFormatError, ModelError
from lesionlens.pipeline.aggregate import Candidate3D
from lesionlens.pipeline.patchnet import PATCH_FILE
from lesionlens.pipeline.rescore import (
    FEATURES,
    RESCORER_FILE,
    Rescorer,
    candidate_features,
    fit_rescorer,
    label_candidates,
)


def _cand(k: int, box: tuple[float, float, float, float], *, scores: list[float], slices: int, z_mm: float,
          drift: float = 0.0, diameter: float | None = None) -> Candidate3D:
    x1, y1, x2, y2 = box
    d = diameter if diameter is not None else float(x2 - x1)
    return Candidate3D(label=0, confidence=max(scores), center_mm=np.zeros(3), diameter_mm=d, inplane_diameter_mm=d,
                       z_extent_mm=z_mm, drift_mm=drift, key_k=k, bbox_px=np.array(box, np.float32),
                       slices=list(range(k, k + slices)), n_boxes=slices, slice_scores=scores)


def _volume() -> np.ndarray:
    """Lung (-850 HU) on the left half, soft tissue (40 HU) on the right; a 40 HU disc at (20, 30)."""
    v = np.full((6, 64, 64), -850.0, np.float32)
    v[:, :, 40:] = 40.0
    yy, xx = np.mgrid[:64, :64]
    v[:, (yy + 0.5 - 20) ** 2 + (xx + 0.5 - 20) ** 2 <= 16] = 40.0
    return v


def test_features_describe_shape_and_surroundings() -> None:
    vol = _volume()
    nodule = _cand(2, (16, 16, 24, 24), scores=[0.6, 0.9, 0.7], slices=3, z_mm=7.5)
    wall = _cand(2, (50, 30, 58, 38), scores=[0.8], slices=1, z_mm=2.5)
    x = candidate_features([nodule, wall], vol, slice_mm=2.5)
    f = {n: x[:, i] for i, n in enumerate(FEATURES)}
    assert x.shape == (2, len(FEATURES))
    assert f["logit_max_score"][0] == pytest.approx(np.log(0.9 / 0.1))
    m = (0.6 + 0.9 + 0.7) / 3
    assert f["logit_mean_score"][0] == pytest.approx(np.log(m / (1 - m)))
    assert f["log_n_boxes"][0] == pytest.approx(np.log(3))
    # 8 mm wide and 7.5 mm deep versus 8 mm wide and one 2.5 mm slice deep
    assert f["log_depth_ratio"][0] == pytest.approx(np.log(7.5 / 8))
    assert f["log_depth_ratio"][1] == pytest.approx(np.log(2.5 / 8))
    # the disc sits in lung; the second box in soft tissue
    assert f["core_hu"][0] == pytest.approx(0.4, abs=0.05)
    assert f["ring_lung_fraction"][0] == pytest.approx(1.0)
    assert f["ring_lung_fraction"][1] == pytest.approx(0.0)
    assert f["contrast_hu"][0] > 8.0 and abs(f["contrast_hu"][1]) < 0.5


def test_features_of_a_box_at_the_image_border_are_finite() -> None:
    c = _cand(0, (-3, -3, 2, 2), scores=[1.0], slices=1, z_mm=1.0)
    x = candidate_features([c], _volume(), slice_mm=1.0)
    assert np.all(np.isfinite(x))
    assert candidate_features([], _volume(), 1.0).shape == (0, len(FEATURES))


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    y = ((x[:, 5] > 0.5) & (x[:, 11] > -0.5)).astype(np.float64)  # depth ratio and lung surround
    return x, y


def test_fit_learns_a_rule_it_was_not_told() -> None:
    x, y = _separable(3000, 0)
    r = fit_rescorer(x, y, hidden=16, epochs=400)
    xt, yt = _separable(2000, 1)
    p = r.probabilities(xt)
    pos, neg = p[yt == 1], p[yt == 0]
    auc = float(np.mean(pos[:, None] > neg[None, :]))
    assert auc > 0.97
    assert r.info["n_positive"] == int(y.sum()) and r.info["n_candidates"] == 3000


def test_fit_refuses_one_class_and_wrong_shapes() -> None:
    x, _ = _separable(50, 0)
    with pytest.raises(ValueError, match="both positive and negative"):
        fit_rescorer(x, np.zeros(50))
    with pytest.raises(ValueError, match="must be"):
        fit_rescorer(x[:, :3], np.ones(50))


def test_save_load_round_trip_and_rescoring(tmp_path: Path) -> None:
    x, y = _separable(500, 2)
    r = fit_rescorer(x, y, hidden=8, epochs=50)
    r.save(tmp_path)
    back = Rescorer.load(tmp_path)
    assert back is not None
    np.testing.assert_allclose(back.probabilities(x), r.probabilities(x))
    vol = _volume()
    cands = [_cand(2, (16, 16, 24, 24), scores=[0.5], slices=3, z_mm=7.5),
             _cand(2, (50, 30, 58, 38), scores=[0.9], slices=1, z_mm=2.5)]
    expected = r.probabilities(candidate_features(cands, vol, 2.5))
    out = back(cands, vol, 2.5)
    assert sorted(c.confidence for c in out) == pytest.approx(sorted(expected.tolist()))
    assert [c.confidence for c in out] == sorted((c.confidence for c in out), reverse=True)
    assert {c.detector_confidence for c in out} == {0.5, 0.9}
    assert Rescorer.load(tmp_path / "nothing-here") is None


def test_load_refuses_bad_files(tmp_path: Path) -> None:
    x, y = _separable(200, 3)
    doc = fit_rescorer(x, y, hidden=4, epochs=5).to_dict()
    cases = {
        "schema": ({**doc, "schema": "other/1"}, DataFormatError, "schema"),
        "features": ({**doc, "features": list(FEATURES)[:-1]}, ModelError, "features"),
        "shapes": ({**doc, "w1": [[0.0]]}, DataFormatError, "inconsistent"),
        "missing": ({k: v for k, v in doc.items() if k != "w2"}, DataFormatError, "malformed"),
    }
    for name, (bad, err, msg) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / RESCORER_FILE).write_text(json.dumps(bad))
        with pytest.raises(err, match=msg) as info:
            Rescorer.load(d)
        assert RESCORER_FILE in str(info.value)
    d = tmp_path / "garbage"
    d.mkdir()
    (d / RESCORER_FILE).write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON") as info:
        Rescorer.load(d)
    assert RESCORER_FILE in str(info.value)


def test_predictor_applies_the_package_rescorer(tmp_path: Path) -> None:
    """The default model on a phantom: with the rescorer every candidate carries the detector's
    own score and a rescored confidence; --conf filters on the rescored value."""
    from lesionlens.dicom.types import Volume
    from lesionlens.engine.predict import PredictConfig, Predictor, resolve_model
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct

    pkg = tmp_path / "pkg"
    shutil.copytree(resolve_model("default"), pkg)
    (pkg / RESCORER_FILE).unlink(missing_ok=True)
    (pkg / PATCH_FILE).unlink(missing_ok=True)
    ph = generate_ct(5, CTPhantomConfig(matrix=(256, 256), n_slices=40, p_no_nodules=0.0))
    vol = Volume(pixels=ph.hu.astype(np.float32), affine=ph.affine, modality="CT", study_instance_uid="1.2",
                 series_instance_uid="1.2.3", is_volumetric=True, has_patient_geometry=True)
    plain = Predictor(pkg, config=PredictConfig(conf=0.01, max_det=50), threads=1).predict_volume(vol).candidates
    assert plain and all(c.detector_confidence is None for c in plain)
    # a rescorer that only looks at the detector's score, inverted: the order must flip
    nf = len(FEATURES)
    w1 = np.zeros((nf, 1))
    w1[0, 0] = -1.0
    inv = Rescorer(mean=np.zeros(nf), std=np.ones(nf), w1=w1, b1=np.array([100.0]), w2=np.array([1.0]), b2=-100.0)
    inv.save(pkg)
    res = Predictor(pkg, config=PredictConfig(conf=0.01, max_det=50), threads=1).predict_volume(vol).candidates
    assert len(res) == len(plain)  # the same candidates (box threshold 0.01), 1 - s >= 0.01 for all
    assert all(c.detector_confidence is not None for c in res)
    assert res[0].detector_confidence == pytest.approx(min(c.confidence for c in plain), abs=1e-6)
    off = Predictor(pkg, config=PredictConfig(conf=0.01, max_det=50, rescore=False), threads=1)
    assert [c.confidence for c in off.predict_volume(vol).candidates] == [c.confidence for c in plain]
    cut = float(np.median([c.confidence for c in res]))
    kept = Predictor(pkg, config=PredictConfig(conf=cut, max_det=50), threads=1).predict_volume(vol).candidates
    assert kept and all(c.confidence >= cut for c in kept) and len(kept) < len(res)


def test_recipe_fits_a_rescorer_that_the_predictor_then_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fit_default_rescorer end to end on two small phantoms: labels from the truth, rescorer.json
    written with its provenance, and the package's predictor applies it."""
    import lesionlens.engine.recipes as recipes
    from lesionlens.engine.predict import PredictConfig, Predictor, resolve_model
    from lesionlens.synth.ct import CTPhantomConfig

    monkeypatch.setattr(recipes, "_phantom_config", lambda spacings: CTPhantomConfig(
        matrix=(256, 256), n_slices=48, slice_spacings_mm=spacings, p_no_nodules=0.0, n_nodules=(3, 5),
        nodule_diameter_mm=(6.0, 20.0), small_nodule_fraction=0.0))
    pkg = tmp_path / "pkg"
    shutil.copytree(resolve_model("default"), pkg)
    (pkg / RESCORER_FILE).unlink(missing_ok=True)
    (pkg / PATCH_FILE).unlink(missing_ok=True)
    recipe = recipes.DefaultRecipe(rescorer_studies=2, rescorer_seed0=777_000, threads=1)
    info = recipes.fit_default_rescorer(pkg, recipe, tmp_path / "cache", log=lambda m: None)
    assert info["seeds"] == [777_000, 777_001] and info["phantoms"] == 2
    assert 0 < info["n_positive"] < info["n_candidates"]
    assert (tmp_path / "cache" / "seed777001" / "truth.json").is_file()
    r = Rescorer.load(pkg)
    assert r is not None and r.w1.shape == (len(FEATURES), recipes.RESCORER_FIT["hidden"])
    pred = Predictor(pkg, threads=1, config=PredictConfig(conf=0.0))
    assert pred.rescorer is not None
    case = recipes._load_cached(tmp_path / "cache" / "seed777000")
    cands = pred.predict_volume(case.volume).candidates
    assert cands and all(c.detector_confidence is not None for c in cands)
    # the rescorer was fitted on this phantom: its nodules rank above the rest
    y, _ = label_candidates(cands, case.truth)
    assert y[: int(y.sum())].mean() > y.mean()


def test_labels_follow_the_luna16_hit_rule() -> None:
    from lesionlens.data.annotations import Lesion3D, StudyTruth

    truth = StudyTruth("1.2", lesions=[Lesion3D((0.0, 0.0, 0.0), 10.0), Lesion3D((50.0, 0.0, 0.0), 8.0, excluded=True)])
    at = [(4.9, 0, 0), (5.0, 0, 0), (53.0, 0, 0), (100.0, 0, 0)]  # inside; on the radius; excluded; nothing
    cands = [_cand(0, (0, 0, 2, 2), scores=[0.5], slices=1, z_mm=1.0) for _ in at]
    for c, p in zip(cands, at, strict=True):
        c.center_mm = np.array(p, np.float64)
    y, keep = label_candidates(cands, truth)
    assert y.tolist() == [1.0, 0.0, 0.0, 0.0]  # strictly inside the radius only
    assert keep.tolist() == [True, True, False, True]


def test_recipe_skips_the_rescorer_when_the_detector_hits_nothing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An undertrained detector (here: phantoms without nodules) gives no hits: the recipe says so
    and leaves the package unrescored instead of failing the whole run."""
    import lesionlens.engine.recipes as recipes
    from lesionlens.engine.predict import resolve_model
    from lesionlens.synth.ct import CTPhantomConfig

    monkeypatch.setattr(recipes, "_phantom_config", lambda spacings: CTPhantomConfig(
        matrix=(256, 256), n_slices=32, slice_spacings_mm=spacings, p_no_nodules=1.0))
    pkg = tmp_path / "pkg"
    shutil.copytree(resolve_model("default"), pkg)
    (pkg / RESCORER_FILE).unlink(missing_ok=True)
    (pkg / PATCH_FILE).unlink(missing_ok=True)
    said: list[str] = []
    info = recipes.fit_default_rescorer(pkg, recipes.DefaultRecipe(rescorer_studies=1, rescorer_seed0=778_000,
                                                                   threads=1), tmp_path / "cache", log=said.append)
    assert info["skipped"] and info["n_positive"] == 0
    assert not (pkg / RESCORER_FILE).exists()
    assert any("rescorer not fitted" in m and "0 hits" in m for m in said)

"""The 3D patch classifier: cube sampling in patient coordinates, training, ONNX export and its
use by the predictor and the recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lesionlens.errors import ModelError
from lesionlens.pipeline.patchnet import (
    DETAIL_FILE,
    PATCH_FILE,
    SIZE,
    PatchClassifier,
    PatchFitConfig,
    export_patch_classifier,
    extract_patches,
    fit_patch_classifier,
)
from lesionlens.pipeline.rescore import RESCORER_FILE


def _ball_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An anisotropic volume (2.5 mm slices, 0.7 mm pixels, offset origin) holding one 8 mm ball
    of 50 HU in -850 HU lung; returns pixels, affine and the ball's LPS centre."""
    affine = np.array([[0.0, 0.0, 0.7, -100.0], [0.0, 0.7, 0.0, -80.0], [2.5, 0.0, 0.0, -300.0], [0, 0, 0, 1.0]])
    k, r, c = np.meshgrid(np.arange(30), np.arange(96), np.arange(96), indexing="ij")
    lps = np.stack([c * 0.7 - 100.0, r * 0.7 - 80.0, k * 2.5 - 300.0], -1)
    center = np.array([-100.0 + 48 * 0.7, -80.0 + 40 * 0.7, -300.0 + 15 * 2.5])
    v = np.where(np.linalg.norm(lps - center, axis=-1) <= 4.0, 50.0, -850.0).astype(np.float32)
    return v, affine, center


def test_cubes_are_sampled_in_patient_millimetres() -> None:
    v, affine, center = _ball_volume()
    p = extract_patches(v, affine, np.array([center, center + [0.0, 0.0, 5.0], center + [3.0, 0.0, 0.0]]))
    assert p.shape == (3, SIZE, SIZE, SIZE) and p.dtype == np.float32
    mid = (SIZE - 1) / 2
    # centred: the ball (8 mm) sits in the middle; about 4/3·π·4³ ≈ 268 of the 1 mm samples are in it
    bright = np.argwhere(p[0] > -400)
    assert np.allclose(bright.mean(0), mid, atol=0.6)
    assert 200 < len(bright) < 340
    # centred 5 mm superior (+z): the ball appears 5 samples lower along the cube's first axis
    assert np.allclose(np.argwhere(p[1] > -400).mean(0), [mid - 5, mid, mid], atol=0.7)
    # centred 3 mm to the patient's left (+x): 3 samples lower along the last axis
    assert np.allclose(np.argwhere(p[2] > -400).mean(0), [mid, mid, mid - 3], atol=0.7)


def test_cubes_outside_the_volume_read_air_and_no_centres_give_no_cubes() -> None:
    v, affine, center = _ball_volume()
    far = extract_patches(v, affine, np.array([center + [0.0, 0.0, 500.0]]))
    assert np.all(far == -1000.0)
    assert extract_patches(v, affine, np.zeros((0, 3))).shape == (0, SIZE, SIZE, SIZE)


def _toy_cubes(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """n cubes of noisy lung holding a ball (kind 'ball') or a straight 4 mm tube along a random axis."""
    o = np.arange(SIZE) - (SIZE - 1) / 2
    z, y, x = np.meshgrid(o, o, o, indexing="ij")
    pts = np.stack([z, y, x], -1)
    out = np.empty((n, SIZE, SIZE, SIZE), np.float32)
    for i in range(n):
        c = rng.uniform(-1.5, 1.5, 3)
        if kind == "ball":
            inside = np.linalg.norm(pts - c, axis=-1) <= rng.uniform(2.0, 4.0)
        else:
            a = rng.normal(size=3)
            a /= np.linalg.norm(a)
            d = pts - c
            inside = np.linalg.norm(d - (d @ a)[..., None] * a, axis=-1) <= rng.uniform(1.5, 2.5)
        out[i] = np.where(inside, 40.0, -850.0) + rng.normal(0, 60, (SIZE,) * 3)
    return out


def test_training_separates_balls_from_tubes_and_onnx_matches_torch(tmp_path: Path) -> None:
    import torch

    from lesionlens.pipeline.patchnet import normalize

    rng = np.random.default_rng(0)
    net = fit_patch_classifier(_toy_cubes(rng, 64, "ball"), _toy_cubes(rng, 128, "tube"),
                               PatchFitConfig(epochs=10, batch=16, neg_per_pos=2, threads=1))
    test_pos, test_neg = _toy_cubes(rng, 20, "ball"), _toy_cubes(rng, 20, "tube")
    path = export_patch_classifier(net, tmp_path / PATCH_FILE, {"box_conf": 0.02, "seeds": [1, 2]})
    clf = PatchClassifier(path, threads=1)
    assert clf.size == SIZE and clf.box_conf == 0.02 and clf.info["seeds"] == [1, 2]
    assert clf.detector_weight == 0.5  # metadata without a weight: the plain geometric mean
    p_pos, p_neg = clf.probabilities(test_pos), clf.probabilities(test_neg)
    # ranking: nearly every ball above nearly every tube (AUC), on cubes it never saw
    auc = np.mean(p_pos[:, None] > p_neg[None, :])
    assert auc > 0.9, auc
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(normalize(test_pos)))).numpy()
    assert np.allclose(p_pos, ref, atol=1e-4)
    assert clf.probabilities(np.zeros((0, SIZE, SIZE, SIZE), np.float32)).shape == (0,)


def test_fit_refuses_an_empty_class() -> None:
    with pytest.raises(ValueError, match="positive and negative"):
        fit_patch_classifier(np.zeros((0, SIZE, SIZE, SIZE), np.float32), np.zeros((4, SIZE, SIZE, SIZE), np.float32))


def test_a_detector_graph_is_not_taken_for_a_patch_classifier(tmp_path: Path) -> None:
    from lesionlens.engine.predict import resolve_model

    shutil.copy(resolve_model("default") / "model.onnx", tmp_path / PATCH_FILE)
    with pytest.raises(ModelError, match="not a patch classifier"):
        PatchClassifier.load(tmp_path)
    assert PatchClassifier.load(tmp_path / "nothing-here") is None


def test_the_detector_weight_comes_with_the_classifier(tmp_path: Path) -> None:
    """``s^w · p^(1 − w)`` with the stored ``w``: the candidates' confidences and the operating-point
    shortcut (detector score below ``conf^(1/w)`` is not classified) follow it; a weight outside
    (0, 1) is refused."""
    from lesionlens.pipeline.aggregate import Candidate3D
    from lesionlens.pipeline.patchnet import build_patchnet

    net = build_patchnet().eval()
    clf = PatchClassifier(export_patch_classifier(net, tmp_path / PATCH_FILE, {"detector_weight": 0.25}), threads=1)
    assert clf.detector_weight == 0.25
    assert clf.combine(0.0625, 1.0) == pytest.approx(0.5) and clf.combine(1.0, 0.0625) == pytest.approx(0.125)
    assert clf.combine(0.0625, 1.0, 0.5) == pytest.approx(0.25)  # another weight, asked for explicitly
    v, affine, center = _ball_volume()

    def cands() -> list[Candidate3D]:
        return [Candidate3D(label=0, confidence=s, center_mm=center + [i, 0.0, 0.0], diameter_mm=6.0,
                            inplane_diameter_mm=6.0, z_extent_mm=6.0, drift_mm=0.0, key_k=0,
                            bbox_px=np.zeros(4, np.float32), slices=[0], n_boxes=1, slice_scores=[s])
                for i, s in enumerate((0.9, 0.3, 0.05, 0.01))]

    every = clf(cands(), v, affine)
    for c in every:
        assert c.confidence == pytest.approx(c.detector_confidence ** 0.25 * c.patch_probability ** 0.75)
    kept = clf(cands(), v, affine, min_confidence=0.5)  # only scores >= 0.5**4 = 0.0625 may reach it
    assert sorted(c.detector_confidence for c in kept) == [0.3, 0.9]
    (tmp_path / "bad").mkdir()
    export_patch_classifier(net, tmp_path / "bad" / PATCH_FILE, {"detector_weight": 1.0})
    with pytest.raises(ModelError, match="detector_weight"):
        PatchClassifier.load(tmp_path / "bad")


def _tiny_phantoms(monkeypatch: pytest.MonkeyPatch) -> None:
    import lesionlens.engine.recipes as recipes
    from lesionlens.synth.ct import CTPhantomConfig

    monkeypatch.setattr(recipes, "_phantom_config", lambda spacings: CTPhantomConfig(
        matrix=(256, 256), n_slices=48, slice_spacings_mm=spacings, p_no_nodules=0.0, n_nodules=(3, 5),
        nodule_diameter_mm=(6.0, 20.0), small_nodule_fraction=0.0))


def test_recipe_trains_a_classifier_that_the_predictor_applies(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """fit_default_patch_classifier end to end on two small phantoms, then the predictor combines
    the detector's score with the classifier's probability; --no-rescore leaves it out."""
    import lesionlens.engine.recipes as recipes
    from lesionlens.engine.predict import PredictConfig, Predictor, froc_config, resolve_model

    _tiny_phantoms(monkeypatch)
    pkg = tmp_path / "pkg"
    shutil.copytree(resolve_model("default"), pkg)
    for name in (PATCH_FILE, DETAIL_FILE, RESCORER_FILE):  # the main classifier alone is tested here
        (pkg / name).unlink(missing_ok=True)
    assert froc_config(pkg).conf == 0.01
    monkeypatch.setitem(recipes.FPR_EXTRA, "n_nodules", (4, 6))
    recipe = recipes.DefaultRecipe(fpr_studies=2, fpr_epochs=1, fpr_extra_studies=1, train_seed0=779_000, threads=1)
    said: list[str] = []
    info = recipes.fit_default_patch_classifier(pkg, recipe, tmp_path / "cache", log=said.append)
    assert info["seeds"] == [779_000, 779_001] and info["n_negative"] > 0
    extra = np.load(tmp_path / "cache" / "truth-cubes" / f"seed{recipes.FPR_EXTRA['seed0']}.npy")
    assert info["n_extra_positive"] == len(extra) >= 16 and info["n_positive"] > len(extra)
    assert any("nodule-rich phantom 1/1" in m for m in said)
    assert any("patch classifier epoch 1/1" in m for m in said)
    assert (pkg / PATCH_FILE).is_file() and froc_config(pkg).conf == 0.0

    case = recipes._load_cached(tmp_path / "cache" / "seed779000")
    plain = Predictor(pkg, threads=1, config=PredictConfig(conf=0.01, rescore=False)).predict_volume(case.volume)
    pred = Predictor(pkg, threads=1, config=PredictConfig(conf=0.0))
    assert pred.patch is not None and pred.rescorer is None
    res = pred.predict_volume(case.volume)
    assert "patch_classifier" in res.timings
    assert len(res.candidates) == len(plain.candidates)
    by_det = sorted((c.detector_confidence, c.patch_probability, c.confidence) for c in res.candidates)
    assert [round(d, 6) for d, _, _ in by_det] == sorted(round(c.confidence, 6) for c in plain.candidates)
    for d, p, conf in by_det:
        assert 0.0 <= p <= 1.0 and conf == pytest.approx(d ** pred.patch.detector_weight
                                                         * p ** (1 - pred.patch.detector_weight))
    assert [c.confidence for c in res.candidates] == sorted((c.confidence for c in res.candidates), reverse=True)
    # at an operating point, candidates that cannot reach it are not classified: same result
    cut = float(np.median([c.confidence for c in res.candidates]))
    at_cut = Predictor(pkg, threads=1, config=PredictConfig(conf=cut)).predict_volume(case.volume).candidates
    expect = [c for c in res.candidates if c.confidence >= cut]
    assert at_cut and len(at_cut) == len(expect)
    assert [round(c.confidence, 6) for c in at_cut] == [round(c.confidence, 6) for c in expect]


def test_truth_patches_cut_a_cube_around_every_nodule_and_are_cached(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The extra positives: truth_copies jittered cubes per true nodule of each nodule-rich phantom,
    nodule tissue at every cube's centre; a second call reads the cached cubes, generating nothing."""
    from dataclasses import replace

    import lesionlens.engine.recipes as recipes
    from lesionlens.synth.ct import generate_ct

    _tiny_phantoms(monkeypatch)
    monkeypatch.setitem(recipes.FPR_EXTRA, "n_nodules", (4, 6))
    spacings = (1.25, 2.5)
    said: list[str] = []
    cubes = recipes.truth_patches([779_100, 779_101], spacings, tmp_path, log=said.append)
    config = replace(recipes._phantom_config(spacings), n_nodules=(4, 6), p_no_nodules=0.0)
    copies = int(recipes.FPR_MINING["truth_copies"])
    per_seed = [len(generate_ct(sd, config).truth.lesions) for sd in (779_100, 779_101)]
    assert min(per_seed) >= 4 and len(cubes) == copies * sum(per_seed)
    assert said == [f"nodule-rich phantom {i + 1}/2: {copies * n} positive cubes" for i, n in enumerate(per_seed)]
    assert cubes.dtype == np.int16 and cubes.shape[1:] == (SIZE, SIZE, SIZE)
    c = SIZE // 2
    centre = cubes[:, c - 2 : c + 2, c - 2 : c + 2, c - 2 : c + 2]
    assert (centre.mean(axis=(1, 2, 3)) > -700).all()  # lung parenchyma is about -850 HU

    def no_generation(*a: object, **k: object) -> None:
        raise AssertionError("the cubes should have come from the cache")

    monkeypatch.setattr("lesionlens.synth.ct.generate_ct", no_generation)
    again = recipes.truth_patches([779_100, 779_101], spacings, tmp_path, log=lambda m: None)
    assert np.array_equal(again, cubes)


def test_separable_sampling_equals_scipy_and_oblique_geometry_works() -> None:
    """Axial geometry is sampled separably; it must give scipy's trilinear values, also for cubes
    reaching out of the volume (those samples read -1000 HU). An oblique affine goes through scipy
    and still finds the ball at the centre."""
    from lesionlens.pipeline.patchnet import _extract_general

    v, affine, center = _ball_volume()
    rng = np.random.default_rng(1)
    pts = center + rng.uniform(-40, 40, (25, 3))
    fast = extract_patches(v, affine, pts)
    inv = np.linalg.inv(affine)
    ref = _extract_general(v, inv, pts @ inv[:3, :3].T + inv[:3, 3], np.empty_like(fast), SIZE, 1.0, 8)
    assert np.abs(fast - ref).max() < 1e-2
    assert (fast == -1000.0).any()  # some cubes do reach outside
    # oblique: rotate the voxel grid 30° about z in patient space
    a = np.deg2rad(30)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    obl = rot @ affine
    c_obl = (rot @ np.r_[center, 1.0])[:3]
    p = extract_patches(v, obl, c_obl[None])
    mid = (SIZE - 1) / 2
    assert np.allclose(np.argwhere(p[0] > -400).mean(0), mid, atol=0.6)


def test_views_are_averaged_for_the_top_candidates_only(tmp_path: Path) -> None:
    """probabilities_tta: the top-ranked cubes get the mean over 8 views, the rest one view; a cube
    symmetric under every view keeps its probability."""
    from lesionlens.pipeline.patchnet import build_patchnet

    path = export_patch_classifier(build_patchnet().eval(), tmp_path / PATCH_FILE)
    clf = PatchClassifier(path, threads=1)
    rng = np.random.default_rng(3)
    cubes = rng.normal(-500, 300, (6, SIZE, SIZE, SIZE)).astype(np.float32)
    cubes[5] = -850.0  # symmetric
    one = clf.probabilities(cubes)
    prior = np.array([0.9, 0.8, 0.1, 0.05, 0.01, 0.95])
    tta = clf.probabilities_tta(cubes, prior, top=3)
    top = np.argsort(-np.sqrt(prior * one))[:3]
    rest = np.setdiff1d(np.arange(6), top)
    assert np.allclose(tta[rest], one[rest])
    for i in top:
        c, f = cubes[i], cubes[i][::-1]
        views = np.stack([c, c[:, :, ::-1], c[:, ::-1, :], np.swapaxes(c, 1, 2),
                          f, f[:, :, ::-1], f[:, ::-1, :], np.swapaxes(f, 1, 2)])
        assert tta[i] == pytest.approx(clf.probabilities(np.ascontiguousarray(views)).mean(), abs=1e-6)
    assert 5 in top and tta[5] == pytest.approx(one[5], abs=1e-6)
    assert np.allclose(clf.probabilities_tta(cubes, prior, top=0), one)


def test_installing_a_package_replaces_the_previous_stages(tmp_path: Path) -> None:
    """A model with a patch classifier installed over one with a rescorer leaves no stale
    rescorer.json behind (the predictor would apply it)."""
    from lesionlens.engine.recipes import install_package

    old, new, dest = tmp_path / "old", tmp_path / "new", tmp_path / "dest"
    for d, stage in ((old, RESCORER_FILE), (new, PATCH_FILE)):
        d.mkdir()
        for name in ("model.safetensors", "meta.json", stage):
            (d / name).write_text(f"{d.name}:{name}")
    (old / "optimizer.pt").write_text("not for prediction")
    install_package(old, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(["model.safetensors", "meta.json", RESCORER_FILE])
    install_package(new, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(["model.safetensors", "meta.json", PATCH_FILE])
    assert (dest / "meta.json").read_text() == "new:meta.json"

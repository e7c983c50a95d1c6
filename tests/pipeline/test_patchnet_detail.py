"""The detail classifier: a finer cube for small candidates, blended with the main patch
classifier's probability; its training data and recipe step."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lesionlens.errors import ModelError
from lesionlens.pipeline.aggregate import Candidate3D
from lesionlens.pipeline.patchnet import (
    DETAIL_FILE,
    PATCH_FILE,
    PatchClassifier,
    build_patchnet,
    export_patch_classifier,
    extract_patches,
)

DETAIL_INFO = {"role": "detail", "gate_mm": 8.0, "main_weight": 0.6}


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2.5 mm slices, 0.7 mm pixels: a 4 mm ball and a 14 mm ball of 40 HU in -850 HU lung;
    returns pixels, affine and the two LPS centres."""
    affine = np.array([[0.0, 0.0, 0.7, -60.0], [0.0, 0.7, 0.0, -50.0], [2.5, 0.0, 0.0, -200.0], [0, 0, 0, 1.0]])
    k, r, c = np.meshgrid(np.arange(24), np.arange(120), np.arange(120), indexing="ij")
    lps = np.stack([c * 0.7 - 60.0, r * 0.7 - 50.0, k * 2.5 - 200.0], -1)
    small, large = np.array([-30.0, -20.0, -170.0]), np.array([5.0, 10.0, -170.0])
    v = np.full(lps.shape[:3], -850.0, np.float32)
    v[np.linalg.norm(lps - small, axis=-1) <= 2.0] = 40.0
    v[np.linalg.norm(lps - large, axis=-1) <= 7.0] = 40.0
    return v, affine, np.stack([small, large])


def _cand(center: np.ndarray, s: float, d: float) -> Candidate3D:
    return Candidate3D(label=0, confidence=s, center_mm=center, diameter_mm=d, inplane_diameter_mm=d,
                       z_extent_mm=d, drift_mm=0.0, key_k=0, bbox_px=np.zeros(4, np.float32), slices=[0],
                       n_boxes=1, slice_scores=[s])


def _package(tmp: Path, detail_info: dict | None = DETAIL_INFO) -> Path:
    import torch

    torch.manual_seed(0)
    export_patch_classifier(build_patchnet().eval(), tmp / PATCH_FILE, {"detector_weight": 0.25})
    if detail_info is not None:
        torch.manual_seed(1)
        export_patch_classifier(build_patchnet().eval(), tmp / DETAIL_FILE, detail_info, size=16, step_mm=0.5)
    return tmp


def test_small_candidates_get_the_detail_probability_blended_in(tmp_path: Path) -> None:
    """Candidates up to gate_mm across: p^a · q^(1 − a) with q from a 16³ cube at 0.5 mm (views
    averaged as for the main classifier); larger ones keep the main classifier's p alone."""
    clf = PatchClassifier.load(_package(tmp_path), threads=1)
    assert clf is not None and clf.detail is not None
    d = clf.detail
    assert (d.size, d.step_mm, d.gate_mm, d.main_weight) == (16, 0.5, 8.0, 0.6)
    v, affine, (small, large) = _volume()
    cands = [_cand(small, 0.4, 4.2), _cand(large, 0.7, 14.0), _cand(small + [0.5, 0, 0], 0.2, 8.0)]
    prior = np.array([c.confidence for c in cands])
    centers = np.stack([c.center_mm for c in cands])
    p = clf.probabilities_tta(extract_patches(v, affine, centers), prior)
    q = d.probabilities_tta(extract_patches(v, affine, centers[[0, 2]], size=16, step_mm=0.5), prior[[0, 2]],
                            weight=0.25)
    out = {round(c.detector_confidence, 3): c for c in clf(cands, v, affine)}
    for (s, pi, qi) in ((0.4, p[0], q[0]), (0.2, p[2], q[1])):
        c = out[s]
        assert c.patch_probability == pytest.approx(pi) and c.detail_probability == pytest.approx(qi)
        assert c.confidence == pytest.approx(s ** 0.25 * (pi ** 0.6 * qi ** 0.4) ** 0.75)
        assert set(c.stage_scores()) == {"detector_confidence", "patch_probability", "detail_probability"}
    big = out[0.7]
    assert big.detail_probability is None and "detail_probability" not in big.stage_scores()
    assert big.confidence == pytest.approx(0.7 ** 0.25 * p[1] ** 0.75)


def test_without_a_detail_file_nothing_changes_and_bad_detail_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    clf = PatchClassifier.load(_package(tmp_path / "plain", None), threads=1)
    assert clf is not None and clf.detail is None
    v, affine, (small, _) = _volume()
    (c,) = clf([_cand(small, 0.4, 4.0)], v, affine)
    assert c.detail_probability is None and c.confidence == pytest.approx(0.4 ** 0.25 * c.patch_probability ** 0.75)
    # a detail file that blends nothing, or a main classifier put in its place
    (tmp_path / "bad").mkdir()
    _package(tmp_path / "bad", {**DETAIL_INFO, "main_weight": 1.0})
    with pytest.raises(ModelError, match="main_weight"):
        PatchClassifier.load(tmp_path / "bad")
    shutil.copy(tmp_path / "bad" / PATCH_FILE, tmp_path / "bad" / DETAIL_FILE)
    with pytest.raises(ModelError, match="not a detail classifier"):
        PatchClassifier.load(tmp_path / "bad")


def test_a_detail_file_is_part_of_the_model_identity(tmp_path: Path) -> None:
    from lesionlens.engine.checkpoint import identity
    from lesionlens.engine.predict import resolve_model

    pkg = tmp_path / "pkg"
    shutil.copytree(resolve_model("default"), pkg)
    (pkg / DETAIL_FILE).unlink(missing_ok=True)
    before = identity(pkg)["sha256"]
    _package(tmp_path / "pkg")
    assert identity(pkg)["sha256"] != before


def _tiny_phantoms(monkeypatch: pytest.MonkeyPatch) -> None:
    import lesionlens.engine.recipes as recipes
    from lesionlens.synth.ct import CTPhantomConfig

    monkeypatch.setattr(recipes, "_phantom_config", lambda spacings: CTPhantomConfig(
        matrix=(256, 256), n_slices=48, slice_spacings_mm=spacings, p_no_nodules=0.0, n_nodules=(3, 5),
        nodule_diameter_mm=(3.0, 12.0), small_nodule_fraction=0.5))
    monkeypatch.setitem(recipes.FPR_EXTRA, "n_nodules", (4, 6))
    monkeypatch.setitem(recipes.FPR_DETAIL, "size", 12)


def test_detail_truth_cubes_cover_every_small_nodule_and_are_cached(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """truth_copies cubes per nodule up to max_nodule_mm (none for larger ones), nodule tissue at
    each centre (a jitter of at most a quarter of the diameter); a second call generates nothing."""
    from dataclasses import replace

    import lesionlens.engine.recipes as recipes
    from lesionlens.synth.ct import generate_ct

    _tiny_phantoms(monkeypatch)
    spacings = (1.25,)
    said: list[str] = []
    cubes = recipes.detail_truth_patches([779_200, 779_201], spacings, tmp_path, log=said.append)
    config = replace(recipes._phantom_config(spacings), n_nodules=(4, 6), p_no_nodules=0.0)
    lesions = [les for sd in (779_200, 779_201) for les in generate_ct(sd, config).truth.lesions]
    n_small = sum(1 for les in lesions if les.diameter_mm <= recipes.FPR_DETAIL["max_nodule_mm"] and not les.excluded)
    assert 0 < n_small < len(lesions)  # both kinds drawn, only the small ones cut
    copies = int(recipes.FPR_DETAIL["truth_copies"])
    assert len(cubes) == copies * n_small and cubes.shape[1:] == (12, 12, 12) and cubes.dtype == np.int16
    assert said[-1].startswith("detail cubes, nodule-rich phantom 2/2")
    # nodule tissue at the centre (lung is about -850 HU); a jittered centre of a nodule on the
    # phantom's first or last slice may fall outside the volume, which reads -1000
    assert (cubes[:, 5:7, 5:7, 5:7].mean(axis=(1, 2, 3)) > -700).mean() >= 0.8

    def no_generation(*a: object, **k: object) -> None:
        raise AssertionError("the cubes should have come from the cache")

    monkeypatch.setattr("lesionlens.synth.ct.generate_ct", no_generation)
    assert np.array_equal(recipes.detail_truth_patches([779_200, 779_201], spacings, tmp_path, log=lambda m: None),
                          cubes)


def test_recipe_trains_a_detail_classifier_that_the_predictor_applies(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """fit_default_detail_classifier on two small phantoms: negatives only from candidates up to
    max_candidate_mm, the file carries gate and blend weight, and the predictor blends it in for
    candidates up to the gate."""
    import lesionlens.engine.recipes as recipes
    from lesionlens.engine.predict import PredictConfig, Predictor, resolve_model

    _tiny_phantoms(monkeypatch)
    monkeypatch.setitem(recipes.FPR_DETAIL, "extra_studies", 1)
    monkeypatch.setitem(recipes.FPR_DETAIL, "epochs", 1)
    pkg = tmp_path / "pkg"
    shutil.copytree(resolve_model("default"), pkg)
    (pkg / DETAIL_FILE).unlink(missing_ok=True)
    picked: list[int] = []
    real_mine = recipes.mine_detail_patches

    def mine(case, cands, rng):  # type: ignore[no-untyped-def]
        pos, neg = real_mine(case, cands, rng)
        picked.append(len(neg))
        return pos, neg

    monkeypatch.setattr(recipes, "mine_detail_patches", mine)
    recipe = recipes.DefaultRecipe(fpr_studies=2, train_seed0=779_300, threads=1)
    said: list[str] = []
    info = recipes.fit_default_detail_classifier(pkg, recipe, tmp_path / "cache", log=said.append)
    assert info["seeds"] == [779_300, 779_301] and info["n_negative"] == sum(picked) > 0
    assert any("patch classifier epoch 1/1" in m for m in said)
    clf = PatchClassifier.load(pkg, threads=1)
    assert clf is not None and clf.detail is not None and clf.detail.size == 12
    assert clf.detail.gate_mm == recipes.FPR_DETAIL["gate_mm"] and clf.detail.info["n_positive"] == info["n_positive"]

    case = recipes._load_cached(tmp_path / "cache" / "seed779300")
    res = Predictor(pkg, threads=1, config=PredictConfig(conf=0.0)).predict_volume(case.volume)
    gated = [c for c in res.candidates if c.diameter_mm <= clf.detail.gate_mm]
    assert gated and all(c.detail_probability is not None for c in gated)
    assert all(c.detail_probability is None for c in res.candidates if c.diameter_mm > clf.detail.gate_mm)
    a, w = clf.detail.main_weight, clf.detector_weight
    for c in gated:
        blended = c.patch_probability ** a * c.detail_probability ** (1 - a)
        assert c.confidence == pytest.approx(c.detector_confidence ** w * blended ** (1 - w))
    # at an operating point, candidates that cannot reach it (even with q = 1) are not classified
    # again: the same candidates and confidences as filtering the full result
    cut = float(np.quantile([c.confidence for c in res.candidates], 0.7))
    at_cut = Predictor(pkg, threads=1, config=PredictConfig(conf=cut)).predict_volume(case.volume).candidates
    expect = [c for c in res.candidates if c.confidence >= cut]
    # (ONNX Runtime's sums differ in the last float digits with the batch's size)
    assert at_cut and len(at_cut) == len(expect)
    assert [c.confidence for c in at_cut] == pytest.approx([c.confidence for c in expect], abs=1e-4)
    # negatives come only from candidates up to max_candidate_mm
    cands = Predictor(pkg, threads=1, config=PredictConfig(conf=0.01, max_det=300, rescore=False)).predict_volume(
        case.volume).candidates
    pos, neg = real_mine(case, cands, np.random.default_rng(0))
    n_small_false = sum(1 for c in cands if c.diameter_mm <= recipes.FPR_DETAIL["max_candidate_mm"])
    assert 0 < len(neg) <= n_small_false

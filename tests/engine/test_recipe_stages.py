"""The default recipe's stages: what each one trains with (no training here)."""

from __future__ import annotations

from pathlib import Path

from lesionlens.engine.recipes import (
    DEFAULT_STAGES,
    DefaultRecipe,
    detector_train_config,
    model_card,
)


def test_stage_train_config_carries_the_recipe_and_never_stops_early(tmp_path: Path) -> None:
    recipe = DefaultRecipe(seed=3, score_floor=0.5, small_boost=2.0, copy_paste=0.3, epochs=7, lr=1e-3,
                           model="s")
    cfg = detector_train_config(recipe, tmp_path / "dataset.yaml", tmp_path / "run", "cpu")
    assert cfg.seed == 3 and cfg.patience == 7 and cfg.epochs == 7 and cfg.score_floor == 0.5
    assert cfg.small_boost == 2.0 and cfg.copy_paste == 0.3 and cfg.lr == 1e-3
    assert cfg.out == str(tmp_path / "run") and cfg.data == str(tmp_path / "dataset.yaml")
    assert cfg.device == "cpu" and cfg.model == "s"


def test_only_the_last_stage_trains_the_patch_classifier_and_it_is_warm_started() -> None:
    *earlier, last = DEFAULT_STAGES
    assert last.fpr_studies > 0 and last.fpr_detail and last.model == "@previous"
    assert all(s.fpr_studies == 0 and s.rescorer_studies == 0 and not s.fpr_detail for s in earlier)
    # every warm-started stage trains on the same phantoms as the one before it or more
    for prev, cur in zip(DEFAULT_STAGES[:-1], DEFAULT_STAGES[1:], strict=True):
        assert cur.model == "@previous" and cur.train_studies >= prev.train_studies


def test_model_card_names_the_score_floor_when_a_stage_uses_it() -> None:
    m = {"froc": {"sensitivity_at_fps": {"1": 0.5}}, "recall_by_size_at_4fp": [], "cpm": 0.5,
         "cpm_ci": [0.4, 0.6], "n_scans": 3}
    data = {"positives": {}, "negatives": {}}
    with_floor = model_card(DefaultRecipe(score_floor=1.0, model="@previous"), m, 10.0, data)
    without = model_card(DefaultRecipe(model="@previous"), m, 10.0, data)
    assert "class target of at least 1" in with_floor and "score floor" not in without


def test_model_card_describes_the_detail_classifier_when_the_recipe_trains_one() -> None:
    from lesionlens.engine.recipes import FPR_DETAIL

    m = {"froc": {"sensitivity_at_fps": {"1": 0.5}}, "recall_by_size_at_4fp": [], "cpm": 0.5,
         "cpm_ci": [0.4, 0.6], "n_scans": 3}
    data = {"positives": {}, "negatives": {}}
    with_detail = model_card(DefaultRecipe(fpr_studies=4, fpr_detail=True, model="@previous"), m, 10.0, data)
    without = model_card(DefaultRecipe(fpr_studies=4, model="@previous"), m, 10.0, data)
    assert "fpr_detail.onnx" in with_detail and "fpr_detail.onnx" not in without
    assert f"up to {FPR_DETAIL['gate_mm']:g} mm across" in with_detail
    assert f"a = {FPR_DETAIL['main_weight']:g}" in with_detail

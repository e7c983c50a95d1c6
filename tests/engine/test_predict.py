from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lesionlens.cli.main import app
from lesionlens.engine.predict import PredictConfig, Predictor
from lesionlens.errors import ModelError
from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory, make_tiny_package) -> Path:  # type: ignore[no-untyped-def]
    return make_tiny_package(tmp_path_factory.mktemp("pkg"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = CTPhantomConfig(matrix=(96, 96), n_slices=12, pixel_spacing_mm=(3.5, 3.6), slice_spacings_mm=(2.5,),
                          max_vessel_segments=300, n_nodules=(1, 2), p_no_nodules=0.0)
    d = tmp_path_factory.mktemp("study")
    write_ct_study(generate_ct(5, cfg), d, with_localizer=True)
    return d


def test_torch_and_onnx_backends_agree_on_a_study(package: Path, study: Path) -> None:
    cfg = PredictConfig(conf=0.0, max_det=50)
    t = Predictor(package, backend="torch", config=cfg, threads=1)
    o = Predictor(package, backend="onnx", config=cfg, threads=1)
    (pt,), _ = t.predict(study)
    (po,), _ = o.predict(study)
    assert pt.volume.pixels.shape == (12, 96, 96)  # the localizer was not selected
    assert len(pt.candidates) > 0 and len(po.candidates) > 0
    # same preprocessed batch → same decoded boxes and scores from both backends
    timings: dict[str, float] = {"preprocess": 0.0}
    _, x = next(iter(t._batches(pt.volume, timings)))
    np.testing.assert_allclose(t._run(x), o._run(x), atol=2e-3, rtol=1e-3)
    assert set(pt.timings) >= {"preprocess", "inference", "postprocess", "aggregate"}


def test_cpu_batches_are_one_slice_and_any_batch_gives_the_same_candidates(package: Path, study: Path) -> None:
    auto = Predictor(package, backend="onnx", config=PredictConfig(conf=0.0, max_det=50), threads=1)
    eight = Predictor(package, backend="onnx", config=PredictConfig(conf=0.0, max_det=50, batch=8), threads=1)
    assert not auto.on_gpu and auto.batch == 1 and eight.batch == 8
    (a,), _ = auto.predict(study)
    (b,), _ = eight.predict(study)
    timings: dict[str, float] = {"preprocess": 0.0}
    assert [len(ks) for ks, _ in auto._batches(a.volume, timings)] == [1] * 12
    assert [len(ks) for ks, _ in eight._batches(a.volume, timings)] == [8, 4]
    assert len(a.candidates) == len(b.candidates) > 0
    for ca, cb in zip(a.candidates, b.candidates, strict=True):
        assert ca.confidence == cb.confidence and np.array_equal(ca.center_mm, cb.center_mm)


def test_low_conf_returns_the_tail_and_high_conf_filters(package: Path, study: Path) -> None:
    low = Predictor(package, backend="onnx", config=PredictConfig(conf=0.0, max_det=50))
    high = Predictor(package, backend="onnx", config=PredictConfig(conf=0.99, max_det=50))
    (pl,), _ = low.predict(study)
    (ph,), _ = high.predict(study)
    assert len(pl.candidates) > len(ph.candidates)
    assert all(c.confidence >= 0.99 for c in ph.candidates)


def test_predict_cli_writes_findings_schema(package: Path, study: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["predict", str(study), "--out", str(tmp_path), "--model", str(package),
                                 "--conf", "0.0", "--backend", "onnx"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "findings.json").read_text())
    assert doc["schema"] == "lesionlens.findings/1"
    assert doc["model"]["name"] == "test-n" and len(doc["model"]["sha256"]) == 64
    truth = json.loads((study / "truth.json").read_text())
    (st,) = doc["studies"]
    assert st["study_instance_uid"] == truth["study_instance_uid"]
    (se,) = st["series"]
    assert se["series_instance_uid"] == truth["series_instance_uid"] and se["modality"] == "CT"
    f = se["findings"][0]
    assert len(f["center_mm"]) == 3 and len(f["bbox_px"]) == 4 and 0 <= f["confidence"] <= 1
    assert f["sop_instance_uid"].startswith("2.25.")


def test_missing_model_is_a_clear_error(study: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model package named 'nope'"):
        Predictor("nope")
    r = CliRunner().invoke(app, ["predict", str(study), "--out", str(tmp_path), "--model", "nope"])
    assert r.exit_code == 2 and "no model package named" in r.output


@pytest.mark.parametrize("kwargs, word", [({"tile": 32}, "tile"), ({"tile": 256, "tile_overlap": 200}, "tile_overlap"),
                                          ({"conf": 1.5}, "conf"), ({"iou": 0.0}, "iou"), ({"max_det": 0}, "max_det"),
                                          ({"batch": -1}, "batch")])
def test_predict_config_refuses_values_that_would_fail_later(kwargs: dict, word: str) -> None:
    """A tile not larger than its overlap would never advance (a hang or a crash mid-study)."""
    from lesionlens.errors import ConfigError

    with pytest.raises(ConfigError, match=word):
        PredictConfig(**kwargs)


def test_detect_cli_names_a_bad_tile(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    r = CliRunner().invoke(app, ["detect", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tile", "16"])
    assert r.exit_code == 2 and "tile must be >= 64" in r.output and "Traceback" not in r.output

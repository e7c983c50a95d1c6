"""``evaluate_ct`` end to end: two phantom studies of different slice thickness, read back through
the DICOM ingest path, scored by the LUNA16 rules; the metrics agree with the truth files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesionlens.engine.evaluate import evaluate_ct
from lesionlens.engine.predict import PredictConfig, Predictor
from lesionlens.errors import DataFormatError
from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory, make_tiny_package) -> Path:  # type: ignore[no-untyped-def]
    return make_tiny_package(tmp_path_factory.mktemp("pkg"), cls_bias=-2.0)  # candidates down the whole tail


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("held-out")
    for name, seed, dz in (("a", 11, 2.5), ("b", 12, 1.25)):
        cfg = CTPhantomConfig(matrix=(96, 96), n_slices=16, pixel_spacing_mm=(3.0, 3.0), slice_spacings_mm=(dz,),
                              max_vessel_segments=200, n_nodules=(2, 3), p_no_nodules=0.0)
        write_ct_study(generate_ct(seed, cfg), root / name)
    return root


def test_evaluate_ct_metrics_agree_with_the_truth(package: Path, studies: Path, tmp_path: Path) -> None:
    pred = Predictor(package, backend="onnx", threads=1, config=PredictConfig(conf=0.01, max_det=300))
    res = evaluate_ct(pred, studies, tmp_path / "eval", n_bootstrap=20)
    m = res.metrics
    truth = {n: json.loads((studies / n / "truth.json").read_text()) for n in ("a", "b")}
    n_nodules = {n: len(t["nodules"]) for n, t in truth.items()}
    assert m["n_scans"] == 2 and m["froc"]["n_nodules"] == sum(n_nodules.values())
    assert 0.0 <= m["cpm"] <= 1.0 and m["cpm_ci"][0] <= m["cpm"] <= m["cpm_ci"][1]
    sens = [m["froc"]["sensitivity_at_fps"][k] for k in ("0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0")]
    assert sens == sorted(sens)  # non-decreasing with the FP rate
    assert sum(b["n_total"] for b in m["recall_by_size_at_4fp"]) == sum(n_nodules.values())
    # recall by slice thickness: one entry per study's spacing, holding exactly that study's nodules
    by = {e["slice_spacing_mm"]: e["buckets"] for e in m["recall_by_slice_spacing_at_4fp"]}
    assert sorted(by) == [1.25, 2.5]
    assert sum(b["n_total"] for b in by[2.5]) == n_nodules["a"]
    assert sum(b["n_total"] for b in by[1.25]) == n_nodules["b"]
    found = sum(b["n_detected"] for e in by.values() for b in e)
    assert found == sum(b["n_detected"] for b in m["recall_by_size_at_4fp"])
    assert [s["slice_spacing_mm"] for s in m["scans"]] == [2.5, 1.25]
    assert res.froc is not None and res.froc.n_nodules == m["froc"]["n_nodules"]
    assert m["latency"]["ms_per_slice_inference"] > 0 and m["peak_rss_mb"] > 0
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["recall_by_slice_spacing_at_4fp"] == m["recall_by_slice_spacing_at_4fp"]
    assert (tmp_path / "eval" / "froc.png").stat().st_size > 1000


def test_evaluate_ct_without_truth_is_a_clear_error(package: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    pred = Predictor(package, backend="onnx", threads=1)
    with pytest.raises(DataFormatError):
        evaluate_ct(pred, tmp_path / "empty", tmp_path / "eval", n_bootstrap=0)

"""The shipped default model (demonstration, synthetic data) on a phantom it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesionlens.engine.checkpoint import identity, read_meta
from lesionlens.engine.predict import PACKAGED_MODELS, PredictConfig, Predictor
from lesionlens.pipeline.patchnet import PatchClassifier
from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

DEFAULT = PACKAGED_MODELS / "default"


def test_default_package_is_complete_small_and_labelled() -> None:
    for name in ("model.safetensors", "model.json", "meta.json", "model.onnx", "fpr.onnx", "MODEL_CARD.md"):
        assert (DEFAULT / name).is_file(), name
    size_mb = sum(p.stat().st_size for p in DEFAULT.iterdir()) / 2**20
    assert size_mb <= 25
    meta = read_meta(DEFAULT)
    assert "not for clinical use" in meta.notice.lower()
    assert "not for clinical use" in (DEFAULT / "MODEL_CARD.md").read_text().lower()
    assert meta.names == ["nodule"] and meta.input.kind == "ct-hu"
    assert len(identity(DEFAULT)["sha256"]) == 64
    # held-out figures travel with the package: two sets of 30 scans, CPM with its CI
    for key in ("held_out", "held_out_2"):
        h = meta.metrics[key]
        assert h["n_scans"] == 30 and 0.0 < h["cpm"] <= 1.0 and h["cpm_ci"][0] <= h["cpm"] <= h["cpm_ci"][1]
    clf = PatchClassifier.load(DEFAULT)
    assert clf is not None and clf.info["n_positive"] > 0 and clf.info["n_negative"] > 0
    # the patch classifier learnt from training phantoms only: inside the training seed range,
    # outside both held-out ranges named in the card
    lo, hi = clf.info["seeds"]
    assert 100_000 <= lo <= hi <= 100_103
    assert "patch classifier" in (DEFAULT / "MODEL_CARD.md").read_text()


def test_default_model_finds_the_large_nodules_of_an_unseen_phantom(tmp_path: Path) -> None:
    # a seed outside every training and test range of the recipe
    cfg = CTPhantomConfig(slice_spacings_mm=(2.5,), n_nodules=(3, 4), p_no_nodules=0.0,
                          nodule_diameter_mm=(12.0, 25.0), small_nodule_fraction=0.0,
                          type_weights={"solid": 1.0})
    write_ct_study(generate_ct(4_242_424, cfg), tmp_path / "s")
    truth = json.loads((tmp_path / "s" / "truth.json").read_text())
    pred = Predictor("default", backend="onnx", config=PredictConfig(conf=0.25))
    (sp,), problems = pred.predict(tmp_path / "s")
    assert not [p for p in problems if p.severity == "error"]
    cands = sp.candidates
    found = 0
    for n in truth["nodules"]:
        c = np.array(n["center_lps_mm"])
        d = [np.linalg.norm(np.asarray(x.center_mm) - c) for x in cands]
        if d and min(d) <= n["diameter_mm"] / 2:
            found += 1
            best = cands[int(np.argmin(d))]
            assert best.diameter_mm == pytest.approx(n["diameter_mm"], rel=0.5)
            assert best.detector_confidence is not None and best.patch_probability is not None  # rescored
    assert found == len(truth["nodules"])


def test_the_model_sha256_covers_every_prediction_file(tmp_path: Path) -> None:
    """Another patch classifier (same detector) is another model sha256; a new model card or
    new metrics in meta.json are not; without the weights there is no identity."""
    import shutil

    from lesionlens.engine.checkpoint import WEIGHTS, sha256_file
    from lesionlens.errors import ModelError

    pkg = tmp_path / "pkg"
    shutil.copytree(DEFAULT, pkg)
    first = identity(pkg)["sha256"]
    assert first == identity(DEFAULT)["sha256"] and first != sha256_file(pkg / WEIGHTS)
    (pkg / "MODEL_CARD.md").write_text("another card")
    meta = json.loads((pkg / "meta.json").read_text())
    meta["metrics"] = {}
    (pkg / "meta.json").write_text(json.dumps(meta))
    assert identity(pkg)["sha256"] == first
    with open(pkg / "fpr.onnx", "ab") as fh:
        fh.write(b"\0")
    changed = identity(pkg)["sha256"]
    assert changed != first
    (pkg / "fpr.onnx").unlink()
    assert identity(pkg)["sha256"] not in (first, changed)
    (pkg / WEIGHTS).unlink()
    with pytest.raises(ModelError, match="weights missing"):
        identity(pkg)

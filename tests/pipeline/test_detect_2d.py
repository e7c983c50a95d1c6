"""End to end on projection images (issue #5, the 2D path): a tiny gray-input detector trained
here on the synthetic 2D phantoms, then the real ``lesionlens detect`` on DX chest radiographs
(PixelSpacing, or ImagerPixelSpacing only) and, through ``Detector`` + ``write_outputs``, on a
mammogram larger than the model input (tiled inference).

Checked: findings with ``bbox_px`` inside the image and sizes in mm equal to the box × the pixel
spacing the header states (PixelSpacing first, else ImagerPixelSpacing; (row, column) order), a
truth lesion of each image found, a lesion outside the first tile found at full-image
coordinates, SR regions (SCOORD POLYLINE in pixels = ``bbox_px``, on the right SOP instance) and
GSPS that dciodvfy accepts, and the mm sizes in report.html.

The phantoms are drawn with fields of view chosen so that lesions are 8–17 px wide — the size
the model, trained for a few hundred steps on 96-px images, can find. The mammogram's field is
therefore far larger than a real breast (1.5 mm pixels); it is a pixel-scale test, not anatomy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
import yaml
from pydicom.sr.codedict import codes
from typer.testing import CliRunner

from lesionlens.cli.main import app
from lesionlens.engine.config import load_config
from lesionlens.engine.predict import PredictConfig
from lesionlens.engine.trainer import Trainer
from lesionlens.errors import ConfigError
from lesionlens.pipeline.detect import DetectConfig, Detector
from lesionlens.reports.bundle import write_outputs
from lesionlens.synth.dicom2d import CLASS_NAMES_2D, Phantom2D, write_2d_study
from lesionlens.synth.mammo import MammoConfig, generate_mammogram
from lesionlens.synth.xray import ChestXrayConfig, generate_chest_xray
from tests.reports.test_sr import dciodvfy_problems

pytestmark = pytest.mark.slow

# training phantoms: 96-px images, lesions 8–17 px (2 mm pixels for the chest, 1.5 mm for the breast)
TRAIN_DX = ChestXrayConfig(rows=96, cols=96, field_mm=(192.0, 192.0), nodules=2, nodule_diameter_mm=(16.0, 28.0))
TRAIN_MG = MammoConfig(rows=96, cols=72, field_mm=(144.0, 108.0), masses=2, calcification_clusters=0,
                       mass_diameter_mm=(12.0, 26.0))
# test images: a chest radiograph of a real chest's field (384 mm, 192 px) and a mammogram of
# 1024 × 768 px at the training pixel size, tiled into 256-px model inputs
TEST_DX = ChestXrayConfig(rows=192, cols=192, field_mm=(384.0, 384.0), nodules=2, nodule_diameter_mm=(16.0, 28.0))
TEST_MG = MammoConfig(rows=1024, cols=768, field_mm=(1536.0, 1152.0), masses=3, calcification_clusters=0,
                      mass_diameter_mm=(14.0, 26.0))
TILE = 256
CONF = 0.05
TRAIN_STEPS = 250


def _phantom(kind: str, seed: int, cfg: ChestXrayConfig | MammoConfig) -> Phantom2D:
    """The phantom of ``seed`` (or of the next seed whose lesions fit in the breast/lungs)."""
    for s in range(seed, seed + 50_000, 1000):
        try:
            return generate_chest_xray(s, cfg) if kind == "dx" else generate_mammogram(s, cfg)  # type: ignore[arg-type]
        except ConfigError:
            continue
    raise AssertionError("no phantom could be drawn")


def _training_set(root: Path, n: int = 30) -> Path:
    """YOLO layout of ``n`` chest and ``n`` breast phantoms: 1-channel npy of the stored values
    (MONOCHROME2, so stored = display) and their truth boxes."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for s in range(100, 100 + n):
        for kind, cfg in (("dx", TRAIN_DX), ("mg", TRAIN_MG)):
            ph = _phantom(kind, s, cfg)
            np.save(root / "images" / "train" / f"{kind}{s}.npy", ph.image.astype(np.float32)[None])
            h, w = ph.height, ph.width
            rows = [f"{int(lab)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                    f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}" for b, lab in zip(ph.boxes, ph.labels, strict=True)]
            (root / "labels" / "train" / f"{kind}{s}.txt").write_text("\n".join(rows) + "\n")
    (root / "dataset.yaml").write_text(yaml.safe_dump(
        {"path": ".", "train": "images/train", "names": list(CLASS_NAMES_2D), "channels": 1, "format": "image"}))
    return root / "dataset.yaml"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-channel "gray" detector package, trained for TRAIN_STEPS steps (~40 s on 1 CPU thread;
    2 threads on a busy 2-core machine are many times slower)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train2d")
    cfg = load_config(None, data=str(_training_set(root / "ds")), model="n", epochs=1, batch=8, imgsz=96,
                      device="cpu", out=str(root / "run"), lr=4e-3, steps_per_epoch=TRAIN_STEPS, warmup_epochs=0.1,
                      augment=False, threads=1, ema_decay=0.9)
    res = Trainer(cfg).fit()
    meta = json.loads((res.best / "meta.json").read_text())
    assert meta["input"]["kind"] == "gray" and meta["input"]["channels"] == 1
    return res.best


# ------------------------------------------------------------------------------ inputs


def _dx_file(root: Path, seed: int, spacing: str) -> tuple[Path, Phantom2D, tuple[float, float]]:
    """A DX chest radiograph whose header states its spacing one way; returns (file, phantom,
    the (row, column) mm spacing a reader must use). Anisotropic on purpose (catches a swap)."""
    ph = _phantom("dx", seed, TEST_DX)
    path = write_2d_study(ph, root, patient_id=f"DX{seed}")
    ds = pydicom.dcmread(path)
    if spacing == "PixelSpacing":  # calibrated at the patient: PixelSpacing wins over the detector's
        ds.ImagerPixelSpacing = [2.0, 2.0]
        ds.PixelSpacing = [1.6, 1.8]
        ds.EstimatedRadiographicMagnificationFactor = 1.2
        used = (1.6, 1.8)
    else:  # detector spacing only (no calibration)
        del ds.PixelSpacing
        for kw in ("PixelSpacingCalibrationType", "PixelSpacingCalibrationDescription"):
            if kw in ds:
                delattr(ds, kw)
        ds.ImagerPixelSpacing = [2.0, 2.25]
        used = (2.0, 2.25)
    ds.save_as(path)
    return path, ph, used


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _matches(findings: list[dict], truth: np.ndarray, min_iou: float = 0.3) -> list[tuple[int, dict]]:
    """(truth index, best finding) for each truth box some finding overlaps with IoU >= min_iou."""
    out = []
    for i, t in enumerate(truth):
        best = max(findings, key=lambda f: _iou(np.asarray(f["bbox_px"]), t), default=None)
        if best is not None and _iou(np.asarray(best["bbox_px"]), t) >= min_iou:
            out.append((i, best))
    return out


def _check_sizes(findings: list[dict], used: tuple[float, float], shape: tuple[int, int]) -> None:
    """bbox_px inside the image; every size = box × (row, column) spacing, in mm."""
    dy, dx = used
    rows, cols = shape
    assert findings
    for f in findings:
        x1, y1, x2, y2 = f["bbox_px"]
        assert 0 <= x1 < x2 <= cols and 0 <= y1 < y2 <= rows, f["bbox_px"]
        w_mm, h_mm = (x2 - x1) * dx, (y2 - y1) * dy
        m = f["measurements"]
        assert m["long_axis_mm"] == pytest.approx(max(w_mm, h_mm), abs=0.03)
        assert m["short_axis_mm"] == pytest.approx(min(w_mm, h_mm), abs=0.03)
        assert m["mean_diameter_mm"] == pytest.approx((w_mm + h_mm) / 2, abs=0.03)
        assert f["diameter_mm"] == pytest.approx(np.sqrt(w_mm * h_mm), abs=0.03)
        assert m["volume_mm3"] is None and m["mean_hu"] is None  # a projection has neither
        assert f["center_mm"] is None  # no patient geometry on a radiograph


def _check_sr(sr_path: Path, findings: list[dict], sop_uid: str) -> None:
    assert dciodvfy_problems(sr_path)[0] == []
    content: Any = hd.sr.srread(sr_path).content
    assert content.get_volumetric_roi_measurement_groups() == []
    assert b"SCOORD3D" not in sr_path.read_bytes()
    for f in findings:
        (planar,) = content.get_planar_roi_measurement_groups(tracking_uid=f["tracking_uid"])
        assert planar.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        x1, y1, x2, y2 = f["bbox_px"]
        np.testing.assert_allclose(planar.roi.value, [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], atol=0.006)
        ref = planar.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == sop_uid == f["sop_instance_uid"]
        (long_axis,) = planar.get_measurements(name=codes.SCT.LongAxis)
        assert float(long_axis.value) == pytest.approx(f["measurements"]["long_axis_mm"], abs=0.006)
        assert long_axis.unit == codes.UCUM.Millimeter


def _check_gsps(path: Path, findings: list[dict], sop_uid: str) -> None:
    assert dciodvfy_problems(path)[0] == []
    ds = pydicom.dcmread(path)
    boxes = {g.TrackingUID: np.reshape(g.GraphicData, (-1, 2))
             for a in ds.GraphicAnnotationSequence if a.GraphicLayer == "LESIONS"
             and a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == sop_uid
             for g in a.get("GraphicObjectSequence", [])}
    for f in findings:
        x1, y1, x2, y2 = f["bbox_px"]
        np.testing.assert_allclose(boxes[f["tracking_uid"]], [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]],
                                   atol=0.006)


def _check_html(path: Path, findings: list[dict]) -> None:
    html = path.read_text()
    assert "Long × short axis (mm)" in html
    for f in findings:  # one decimal, from the unrounded value (the JSON has two)
        m = f["measurements"]
        shown = {f"{a:.1f} × {b:.1f}" for a in (m["long_axis_mm"] - 0.005, m["long_axis_mm"] + 0.005)
                 for b in (m["short_axis_mm"] - 0.005, m["short_axis_mm"] + 0.005)}
        assert f"<td><strong>{f['tracking_id']}</strong></td>" in html and any(s in html for s in shown), f["tracking_id"]


# ------------------------------------------------------------------------------ chest DX via the CLI


@pytest.fixture(scope="module", params=["PixelSpacing", "ImagerPixelSpacing"])
def dx_run(request: pytest.FixtureRequest, model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp(f"dx-{request.param}")
    path, ph, used = _dx_file(root / "in", 3, request.param)
    r = CliRunner().invoke(app, ["detect", str(path), "--out", str(root / "out"), "--model", str(model),
                                 "--backend", "torch", "--threads", "1", "--conf", str(CONF)])
    assert r.exit_code == 0, r.output
    doc = json.loads((root / "out" / "findings.json").read_text())
    return {"doc": doc, "phantom": ph, "used": used, "out": root / "out",
            "sop": str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)}


def test_dx_sizes_use_the_stated_pixel_spacing(dx_run: dict) -> None:
    (st,) = dx_run["doc"]["studies"]
    assert st["status"] == "ok", st["messages"]
    (se,) = st["series"]
    assert se["modality"] == "DX" and se["shape"] == [1, 192, 192]
    assert se["spacing_mm"][1:] == pytest.approx(list(dx_run["used"]))
    _check_sizes(se["findings"], dx_run["used"], (192, 192))
    assert all(f["sop_instance_uid"] == dx_run["sop"] and f["slice_index"] == 0 for f in se["findings"])
    assert {f["label"] for f in se["findings"]} <= set(CLASS_NAMES_2D)


def test_dx_a_truth_nodule_is_found(dx_run: dict) -> None:
    findings = dx_run["doc"]["studies"][0]["series"][0]["findings"]
    ph = dx_run["phantom"]
    found = _matches(findings, ph.boxes)
    assert found, (ph.boxes.tolist(), [(f["bbox_px"], f["confidence"]) for f in findings])
    assert any(f["label"] == "nodule" for _, f in found)


def test_dx_sr_gsps_and_report(dx_run: dict) -> None:
    out, findings = dx_run["out"], dx_run["doc"]["studies"][0]["series"][0]["findings"]
    outputs = dx_run["doc"]["studies"][0]["outputs"]
    assert {"sr", "gsps", "report_html"} <= set(outputs), dx_run["doc"]["studies"][0]["messages"]
    _check_sr(out / outputs["sr"], findings, dx_run["sop"])
    _check_gsps(out / outputs["gsps"], findings, dx_run["sop"])
    _check_html(out / outputs["report_html"], findings)


# ------------------------------------------------------------------------------ large mammogram, tiled


@pytest.fixture(scope="module")
def mg_run(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mg")
    ph = _phantom("mg", 7, TEST_MG)
    path = write_2d_study(ph, root / "in", patient_id="MG7")  # seed 7: all 3 masses beyond the first tile
    ds = pydicom.dcmread(path)  # a mammogram with the detector's spacing only
    del ds.PixelSpacing
    for kw in ("PixelSpacingCalibrationType", "PixelSpacingCalibrationDescription"):
        if kw in ds:
            delattr(ds, kw)
    ds.save_as(path)
    det = Detector(model, backend="torch", threads=1, config=DetectConfig(
        predict=PredictConfig(conf=CONF, tile=TILE, tile_overlap=32, max_det=300), max_candidates=60, workers=1))
    assert det.meta.input.kind == "gray" and not det.is_ct_model
    results = det.detect(path)
    doc = write_outputs(results, root / "out")
    return {"doc": doc, "phantom": ph, "out": root / "out", "sop": str(ds.SOPInstanceUID),
            "used": tuple(float(v) for v in ds.ImagerPixelSpacing)}


def test_mg_is_tiled_and_a_lesion_outside_the_first_tile_is_found(mg_run: dict) -> None:
    (st,) = mg_run["doc"]["studies"]
    assert st["status"] == "ok", st["messages"]
    (se,) = st["series"]
    assert se["modality"] == "MG" and se["shape"] == [1, 1024, 768]  # 4 × 3 tiles and more of 256 px
    assert len(se["findings"]) == 60 and any("max_candidates=60" in w for w in se["warnings"])
    ph = mg_run["phantom"]
    _check_sizes(se["findings"], mg_run["used"], (1024, 768))
    far = [i for i, b in enumerate(ph.boxes) if b[0] >= TILE or b[1] >= TILE]
    assert far, ph.boxes.tolist()  # the phantom has lesions beyond the first tile
    found = [(i, f) for i, f in _matches(se["findings"], ph.boxes) if i in far]
    assert found, (ph.boxes.tolist(), sorted((f["confidence"], f["bbox_px"]) for f in se["findings"])[-10:])
    # the match sits where the truth is, in full-image pixels (not in its tile's own frame)
    for i, f in found:
        c_f = np.add(f["bbox_px"][:2], f["bbox_px"][2:]) / 2
        c_t = (ph.boxes[i][:2] + ph.boxes[i][2:]) / 2
        assert np.abs(c_f - c_t).max() <= 0.5 * max(ph.boxes[i][2] - ph.boxes[i][0], ph.boxes[i][3] - ph.boxes[i][1])
        assert max(f["bbox_px"][0], f["bbox_px"][1]) >= TILE - 32
    assert any(f["label"] == "mass" for _, f in found)


def test_mg_sr_gsps_and_report(mg_run: dict) -> None:
    out, st = mg_run["out"], mg_run["doc"]["studies"][0]
    findings = st["series"][0]["findings"]
    assert {"sr", "gsps", "report_html"} <= set(st["outputs"]), st["messages"]
    _check_sr(out / st["outputs"]["sr"], findings, mg_run["sop"])
    _check_gsps(out / st["outputs"]["gsps"], findings, mg_run["sop"])
    _check_html(out / st["outputs"]["report_html"], findings)


def test_a_monochrome1_radiograph_is_seen_as_displayed(model: Path, tmp_path: Path) -> None:
    """The same radiograph stored MONOCHROME1 (stored = max − value) gives the same detections as
    its MONOCHROME2 original: the model sees what the reader sees, not the stored numbers."""
    from lesionlens.dicom.study import read_study
    from lesionlens.engine.predict import PredictConfig, Predictor

    path, ph, _ = _dx_file(tmp_path / "m2", 3, "ImagerPixelSpacing")
    ds = pydicom.dcmread(path)
    px = ds.pixel_array.astype(np.int32)
    ds.PixelData = (int(px.max()) - px).astype(ds.pixel_array.dtype).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    (tmp_path / "m1").mkdir()
    ds.save_as(tmp_path / "m1" / "m1.dcm")
    pred = Predictor(model, backend="torch", threads=1, config=PredictConfig(conf=CONF))
    rules = Detector(model, backend="torch", threads=1).selection_rules()
    (v2,) = read_study(str(path), rules=rules, workers=1).volumes
    (v1,) = read_study(str(tmp_path / "m1" / "m1.dcm"), rules=rules, workers=1).volumes
    assert v1.display.invert and not v2.display.invert
    d2, d1 = pred.predict_image(v2).images[0], pred.predict_image(v1).images[0]
    assert len(d2.boxes) >= 1 and len(d1.boxes) == len(d2.boxes)
    np.testing.assert_allclose(d1.boxes, d2.boxes, atol=0.05)
    np.testing.assert_allclose(d1.scores, d2.scores, atol=1e-4)

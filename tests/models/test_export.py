from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionlens.engine.export import OnnxDetector, export_onnx
from lesionlens.errors import ConfigError, ModelError
from lesionlens.models.detector import DetectorConfig, build_detector
from lesionlens.models.postprocess import Postprocessor


def _trained_like(cfg: DetectorConfig) -> torch.nn.Module:
    """A model with non-trivial BN statistics and box logits (parity must hold beyond init)."""
    torch.manual_seed(0)
    model = build_detector(cfg)
    with torch.no_grad():
        for m in model.head.box:
            m[-1].weight.normal_(0, 0.3)
        for m in model.head.cls:
            m[-1].bias.fill_(-1.0)
        model.train()
        for _ in range(2):
            model(torch.randn(2, cfg.in_channels, 64, 64))
    return model.eval()


@pytest.mark.parametrize("attention", [False, True])
def test_onnx_parity(tmp_path, attention: bool) -> None:
    torch.set_num_threads(1)
    cfg = DetectorConfig(size="n", in_channels=3, num_classes=2, attention=attention)
    model = _trained_like(cfg)
    path = export_onnx(model, tmp_path / "det.onnx", imgsz=64)
    assert not any(isinstance(m, torch.nn.Identity) for m in model.backbone.stem.modules())  # original untouched
    det = OnnxDetector(path, intra_op_threads=1, providers=["CPUExecutionProvider"])
    assert det.num_classes == 2 and det.in_channels == 3
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    got = det(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape == (1, 16 * 16 + 8 * 8 + 4 * 4, 6)
    np.testing.assert_allclose(got[..., :4], ref[..., :4], atol=2e-3)  # pixels
    np.testing.assert_allclose(got[..., 4:], ref[..., 4:], atol=1e-4)  # scores
    a = Postprocessor(conf=0.0, max_det=50)(got)[0]
    b = Postprocessor(conf=0.0, max_det=50)(ref)[0]
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_dynamic_export_runs_other_sizes(tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=1)
    model = _trained_like(cfg)
    path = export_onnx(model, tmp_path / "dyn.onnx", imgsz=64, dynamic=True)
    det = OnnxDetector(path, intra_op_threads=1)
    x = np.random.default_rng(2).standard_normal((2, 1, 96, 128)).astype(np.float32)
    got = det(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_dynamic_export_of_the_attention_variant_at_its_size_multiple(tmp_path) -> None:
    """imgsz equal to size_multiple (64 with area attention) used to fail: the exporter
    specialised the one-multiple trace size. The dynamic graph must run at other sizes."""
    torch.set_num_threads(1)
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=1, attention=True)
    model = _trained_like(cfg)
    assert model.size_multiple == 64
    path = export_onnx(model, tmp_path / "att.onnx", imgsz=64, dynamic=True)
    x = np.random.default_rng(4).standard_normal((1, 1, 64, 192)).astype(np.float32)
    got = OnnxDetector(path, intra_op_threads=1)(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_export_and_session_errors(tmp_path) -> None:
    model = build_detector(DetectorConfig(size="n"))
    with pytest.raises(ConfigError, match="imgsz"):
        export_onnx(model, tmp_path / "x.onnx", imgsz=50)
    with pytest.raises(ModelError, match="Detector"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="not found"):
        OnnxDetector(tmp_path / "missing.onnx")


def test_static_shape_and_channel_checks(tmp_path) -> None:
    torch.set_num_threads(1)
    path = export_onnx(build_detector(DetectorConfig(size="n")), tmp_path / "s.onnx", imgsz=32)
    det = OnnxDetector(path, intra_op_threads=1)
    with pytest.raises(ConfigError, match="channels"):
        det(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ConfigError, match="dynamic"):
        det(np.zeros((1, 3, 64, 64), np.float32))


def test_half_export(tmp_path) -> None:
    torch.set_num_threads(1)
    model = _trained_like(DetectorConfig(size="n", in_channels=1))
    path = export_onnx(model, tmp_path / "h.onnx", imgsz=64, half=True)
    det = OnnxDetector(path, intra_op_threads=1, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((1, 1, 64, 64)).astype(np.float32)
    got = det(x)  # FP16 inside, FP32 out
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got[..., 4:], ref[..., 4:], atol=2e-2)
    assert np.median(np.abs(got[..., :4] - ref[..., :4])) < 0.5  # pixels

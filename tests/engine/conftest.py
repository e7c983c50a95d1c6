"""Shared helpers of the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lesionlens.engine.checkpoint import ModelMeta, write_meta
from lesionlens.engine.export import export_onnx
from lesionlens.engine.preprocess import InputSpec
from lesionlens.models.detector import DetectorConfig, build_detector, save_detector


def tiny_package(d: Path, cls_bias: float | None = None) -> Path:
    """An untrained ``n`` detector written as a model package (weights, meta, dynamic ONNX) in ``d``.
    cls_bias: set the class logits' bias (e.g. -2 spreads the scores over (0, 1))."""
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(size="n", class_names=["nodule"])).eval()
    if cls_bias is not None:
        with torch.no_grad():
            for m in model.head.cls:
                m[-1].bias.fill_(cls_bias)
    save_detector(model, d / "model.safetensors")
    write_meta(d, ModelMeta(name="test-n", version="0", input=InputSpec(), names=["nodule"]))
    export_onnx(model, d / "model.onnx", imgsz=128, dynamic=True)
    return d


@pytest.fixture(scope="session")
def make_tiny_package():  # type: ignore[no-untyped-def]
    """:func:`tiny_package`, for module-scoped package fixtures."""
    return tiny_package

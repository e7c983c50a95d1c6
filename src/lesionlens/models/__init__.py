"""Detector family, criterion and post-processing.

Public API (imported lazily so that ``lesionlens.models.postprocess`` works without torch)::

    from lesionlens.models import DetectorConfig, build_detector, DetectionLoss, Postprocessor
    model = build_detector(DetectorConfig(size="n", in_channels=3, num_classes=1))
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DetectorConfig": "lesionlens.models.detector",
    "Detector": "lesionlens.models.detector",
    "build_detector": "lesionlens.models.detector",
    "save_detector": "lesionlens.models.detector",
    "load_detector": "lesionlens.models.detector",
    "count_params": "lesionlens.models.detector",
    "count_flops": "lesionlens.models.detector",
    "SIZES": "lesionlens.models.detector",
    "DetectionLoss": "lesionlens.models.loss",
    "LossConfig": "lesionlens.models.loss",
    "TaskAlignedAssigner": "lesionlens.models.assigner",
    "Postprocessor": "lesionlens.models.postprocess",
    "Detections": "lesionlens.models.postprocess",
}

__all__ = [
    "SIZES",
    "DetectionLoss",
    "Detections",
    "Detector",
    "DetectorConfig",
    "LossConfig",
    "Postprocessor",
    "TaskAlignedAssigner",
    "build_detector",
    "count_flops",
    "count_params",
    "load_detector",
    "save_detector",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lesionlens.models' has no attribute {name!r}")

"""Static INT8 quantisation (QDQ) of an exported detector with ONNX Runtime.

Calibration images come from a dataset (``dataset.yaml``): whole images, normalised exactly as
prediction does, so activation ranges are those the model meets in use. The box/score decoding at
the end of the graph stays in float (quantising it would cost accuracy for no speed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lesionlens.errors import ConfigError, ModelError


class _Reader:
    """onnxruntime CalibrationDataReader over normalised calibration images."""

    def __init__(self, name: str, images: list[np.ndarray]):
        self.name = name
        self.it = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.it, None)
        return None if x is None else {self.name: x}

    def rewind(self) -> None:  # pragma: no cover - API completeness
        pass


def calibration_images(data: str | Path, spec: object, multiple: int, n: int = 32, size: int | None = None,
                       split: str = "train") -> list[np.ndarray]:
    """Up to ``n`` (1, C, H, W) float32 inputs from ``data`` (centre crops of ``size`` if given)."""
    from lesionlens.engine.dataset import DetectionSamples, read_dataset_yaml

    info = read_dataset_yaml(data)
    use = split if split in info.splits else next(iter(info.splits))
    ds = DetectionSamples(info, use, spec, crop=None)  # type: ignore[arg-type]
    if len(ds) == 0:
        raise ConfigError("calibration split holds no images", path=info.splits[use])
    idx = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)
    out = []
    for i in idx:
        x = ds[int(i)][0].numpy()
        if size:
            h, w = x.shape[-2:]
            y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
            x = x[:, y0 : y0 + size, x0 : x0 + size]
        h, w = x.shape[-2:]
        x = x[:, : h - h % multiple, : w - w % multiple]
        out.append(np.ascontiguousarray(x[None], np.float32))
    return out


def quantize_int8(onnx_path: str | Path, calib: str | Path, out_path: str | Path, *, n_images: int = 32,
                  spec: object | None = None, multiple: int = 32) -> Path:
    """FP32 ONNX → static INT8 QDQ ONNX (per-channel weights, MinMax calibration)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from lesionlens.engine.preprocess import InputSpec

    src, dst = Path(onnx_path), Path(out_path)
    if not src.is_file():
        raise ModelError("ONNX model not found", path=src)
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    spec = spec or _spec_from_package(src) or InputSpec()
    images = calibration_images(calib, spec, multiple, n=n_images)
    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation; fall back to the plain graph
        pre = src
    # keep the decode tail (after the last conv) in float
    nodes = [n for n in onnx.load(str(pre)).graph.node]
    last_conv = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=len(nodes) - 1)
    exclude = [n.name for n in nodes[last_conv + 1 :] if n.name]
    try:
        quantize_static(str(pre), str(dst), _Reader(input_name, images), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)
    except Exception as exc:
        raise ModelError(f"INT8 quantisation failed: {exc}", path=src) from exc
    finally:
        if pre != src:
            pre.unlink(missing_ok=True)
    # carry the metadata (num_classes, strides, config) over
    q = onnx.load(str(dst))
    del q.metadata_props[:]
    for p in model.metadata_props:
        q.metadata_props.add(key=p.key, value=p.value)
    onnx.save(q, str(dst))
    return dst


def _spec_from_package(onnx_path: Path) -> object | None:
    from lesionlens.engine.checkpoint import read_meta

    try:
        return read_meta(onnx_path.parent).input
    except Exception:
        return None

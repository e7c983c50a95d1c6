"""Static INT8 quantisation (QDQ) of an exported detector with ONNX Runtime.

Calibration images come from a dataset (``dataset.yaml``): whole images, normalised exactly as
prediction does, so activation ranges are those the model meets in use.

What stays in float, and why (each measured with ONNX Runtime's profiler on the default model,
512 x 512, 2 threads; docs/detection.md has the figures):

* the box/score decoding after the head's last convolutions (quantising it would cost accuracy for
  no speed, and a dequantised map feeding two float ops is dequantised twice);
* the stem convolution on the input image (3 input channels: an INT8 GEMM with K = 27 is slower
  than the float one, and a float input consumed by Shape ops would be dequantised once per use);
* nearest 2x upsampling becomes a depthwise ConvTranspose with unit 2x2 kernels (the same values):
  ONNX Runtime's uint8 NHWC Resize is several times slower than the float ConvTranspose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

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
        graph = onnx.load(str(pre))
    except Exception:  # pre-processing is an optimisation; fall back to the plain graph
        graph = model
    upsample_as_conv_transpose(graph)
    onnx.save(graph, str(pre))
    exclude = float_nodes(graph)
    try:
        quantize_static(str(pre), str(dst), _Reader(input_name, images), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)
    except Exception as exc:
        raise ModelError(f"INT8 quantisation failed: {exc}", path=src) from exc
    finally:
        pre.unlink(missing_ok=True)
    # carry the metadata (num_classes, strides, config) over
    q = onnx.load(str(dst))
    del q.metadata_props[:]
    for p in model.metadata_props:
        q.metadata_props.add(key=p.key, value=p.value)
    onnx.save(q, str(dst))
    return dst


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes to leave in float: the decoding tail (every non-Conv node from which no
    Conv can be reached, i.e. all that follows the head's last convolutions) and the convolutions
    that read the graph input directly (the stem)."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    reaches: dict[int, bool] = {}
    for i in range(len(nodes) - 1, -1, -1):  # topological order: consumers come later
        n = nodes[i]
        reaches[id(n)] = any(c.op_type == "Conv" or reaches.get(id(c), False)
                             for o in n.output for c in consumers.get(o, []))
    tail = [n for n in nodes if n.op_type != "Conv" and not reaches[id(n)]]
    inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    stem = [c for name in inputs for c in consumers.get(name, []) if c.op_type == "Conv"]
    return [n.name for n in tail + stem if n.name]


def upsample_as_conv_transpose(model: onnx.ModelProto) -> int:
    """Replace every nearest-neighbour 2x Resize (scales ``[1, 1, 2, 2]``) whose channel count is
    known with a depthwise ConvTranspose (kernel 2, stride 2, weights 1) — the same output. In
    place; returns how many were replaced."""
    from onnx import helper, numpy_helper, shape_inference

    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
              for n in model.graph.node if n.op_type == "Constant"}
    shapes = {v.name: v for v in list(shape_inference.infer_shapes(model).graph.value_info) + list(model.graph.input)}
    replaced = 0
    for idx, n in enumerate(list(model.graph.node)):
        if n.op_type != "Resize" or len(n.input) < 3 or (len(n.input) > 3 and n.input[3]):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("mode", b"nearest") != b"nearest" or attrs.get("coordinate_transformation_mode") not in (
                None, b"asymmetric"):
            continue
        st = inits.get(n.input[2]) or consts.get(n.input[2])
        if st is None or numpy_helper.to_array(st).tolist() != [1.0, 1.0, 2.0, 2.0]:
            continue
        v = shapes.get(n.input[0])
        dims = v.type.tensor_type.shape.dim if v is not None else []
        if len(dims) != 4 or not dims[1].HasField("dim_value"):
            continue
        c = int(dims[1].dim_value)
        w_name = f"{n.name or n.output[0]}_unit_kernel"
        model.graph.initializer.append(numpy_helper.from_array(np.ones((c, 1, 2, 2), np.float32), w_name))
        conv = helper.make_node("ConvTranspose", [n.input[0], w_name], list(n.output), name=n.name,
                                group=c, kernel_shape=[2, 2], strides=[2, 2])
        model.graph.node.remove(n)
        model.graph.node.insert(idx, conv)
        replaced += 1
    return replaced


def _spec_from_package(onnx_path: Path) -> object | None:
    from lesionlens.engine.checkpoint import read_meta

    try:
        return read_meta(onnx_path.parent).input
    except Exception:
        return None

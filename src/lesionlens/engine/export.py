"""ONNX export of a detector and an ONNX Runtime wrapper with the same output contract.

The exported graph maps ``images: (B, C, H, W) float32`` to ``detections: (B, N, 4 + nc)``:
boxes xyxy in input pixels, then sigmoid class scores (see :mod:`lesionlens.models.detector`).
NMS is *not* in the graph: :class:`lesionlens.models.postprocess.Postprocessor` runs it in numpy,
which keeps the graph plain Conv/MatMul ops that ONNX Runtime optimises and quantises well, and
lets the caller keep the low-confidence tail FROC needs.

:class:`OnnxDetector` needs only ``onnxruntime`` and ``numpy`` (no torch): it is the CPU
reading-room path. :func:`export_onnx` imports torch lazily.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionlens.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

INPUT_NAME = "images"
OUTPUT_NAME = "detections"
DEFAULT_OPSET = 17  # 18 puts ReduceMax axes in an input, which ORT's quantisation shape inference rejects


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    imgsz: int | tuple[int, int] = 512,
    dynamic: bool = False,
    half: bool = False,
    *,
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``model`` (a :class:`~lesionlens.models.detector.Detector`) to ONNX at ``path``.

    imgsz: ``H`` (square) or ``(H, W)`` of the traced input; both must be multiples of
    ``model.size_multiple``. dynamic: make batch, height and width symbolic. half: export an
    FP16 graph (for GPU providers; ONNX Runtime CPU runs FP32). The model is copied, BatchNorm is
    folded, and it is put in eval mode; the original is left untouched. Returns the path.
    Metadata (``num_classes``, ``strides``, ``in_channels``, ``config`` JSON) is stored in the model.
    """
    import json

    import onnx
    import torch

    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ModelError("export_onnx needs a lesionlens Detector (no .config)")
    mult = int(getattr(model, "size_multiple", 1))
    if h % mult or w % mult or h <= 0 or w <= 0:
        raise ConfigError(f"imgsz: {h}x{w} must be positive multiples of {mult}")
    if batch < 1:
        raise ConfigError(f"batch: must be >= 1, got {batch}")
    m = copy.deepcopy(model).cpu().eval()
    fuse = getattr(m, "fuse", None)
    if callable(fuse):
        fuse()
    dtype = torch.float16 if half else torch.float32
    m = m.to(dtype)
    th, tw = (max(h, 2 * mult), max(w, 2 * mult)) if dynamic else (h, w)  # a dynamic graph traced at
    x = torch.zeros(batch, cfg.in_channels, th, tw, dtype=dtype)  # one multiple gets that size baked in
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if dynamic:
        b_dim = torch.export.Dim("batch", min=1, max=1024)
        h_dim = torch.export.Dim("h", min=1, max=256)
        w_dim = torch.export.Dim("w", min=1, max=256)
        kwargs["dynamic_shapes"] = {"x": {0: b_dim, 2: mult * h_dim, 3: mult * w_dim}}
    try:
        # the exporter reports progress on stdout; keep a CLI's output clean
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            prog = torch.onnx.export(
                m, (x,), None, dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False, **kwargs,
            )
        assert prog is not None
        prog.save(str(path))
    except Exception as e:  # exporter errors come in many types
        raise ModelError(f"ONNX export failed: {e}", path=path) from e
    proto = onnx.load(str(path))
    meta = {
        "producer": "lesionlens",
        "num_classes": str(cfg.num_classes),
        "in_channels": str(cfg.in_channels),
        "strides": json.dumps(list(cfg.strides)),
        "imgsz": json.dumps([h, w]),
        "config": json.dumps(cfg.to_dict()),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return path


def available_providers(prefer_gpu: bool = True) -> list[str]:
    """ONNX Runtime execution providers to use, best first: TensorRT, CUDA (when installed and
    ``prefer_gpu``), then CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if prefer_gpu else []
    return [p for p in order if p in have] + ["CPUExecutionProvider"]


def make_session(
    path: str | Path,
    intra_op_threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session with full graph optimisation, sequential execution and
    ``intra_op_threads`` (``None``: ONNX Runtime's default) threads. Raises ModelError."""
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ModelError("ONNX model not found", path=p)
    if intra_op_threads is not None and intra_op_threads < 0:
        raise ConfigError(f"intra_op_threads: must be >= 0, got {intra_op_threads}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads is not None:
        so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(p), so, providers=list(providers or available_providers()))
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"cannot create ONNX Runtime session: {e}", path=p) from e


class OnnxDetector:
    """Runs an exported detector with ONNX Runtime; same output as ``Detector.eval()(x)``.

    ``OnnxDetector(path, intra_op_threads=2)(images)`` with ``images: (B, C, H, W) float32``
    (numpy) returns ``(B, N, 4 + nc) float32``: xyxy input pixels, then class scores.
    """

    def __init__(
        self,
        path: str | Path,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
    ):
        self.path = Path(path)
        self.session = make_session(self.path, intra_op_threads, providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape: list[Any] = list(inp.shape)
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(meta)
        self.num_classes = int(meta.get("num_classes", "0")) or None
        self.in_channels = int(meta["in_channels"]) if "in_channels" in meta else None

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim != 4:
            raise ConfigError(f"images: expected (B, C, H, W), got shape {x.shape}")
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ConfigError(f"images: model takes {self.in_channels} channels, got {x.shape[1]}")
        for i, d in enumerate(self.input_shape):
            if isinstance(d, int) and d != x.shape[i]:
                raise ConfigError(f"images: model input is {self.input_shape}, got {list(x.shape)} (export with dynamic=True)")
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        try:
            out = self.session.run(None, {self.input_name: x})[0]
        except Exception as e:
            raise ModelError(f"ONNX Runtime inference failed: {e}", path=self.path) from e
        return np.asarray(out, dtype=np.float32)


__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxDetector", "available_providers", "export_onnx", "make_session"]

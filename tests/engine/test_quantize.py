"""INT8 export: the graph rewrites before quantisation, what stays in float, accuracy against FP32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lesionlens.cli.main import app
from lesionlens.engine.export import OnnxDetector, export_onnx
from lesionlens.engine.preprocess import InputSpec
from lesionlens.engine.quantize import float_nodes, quantize_int8, upsample_as_conv_transpose
from lesionlens.errors import ConfigError, ModelError
from lesionlens.models.detector import DetectorConfig, build_detector

SPEC = InputSpec(kind="ct-hu", channels=3, window_center=-600.0, window_width=1600.0)


def _calibration_set(root: Path, n: int = 4, size: int = 64) -> Path:
    """``n`` lung-like HU slices (air-filled field, one soft-tissue disc each) as a dataset.yaml."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size]
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(n):
        img = rng.normal(-850, 30, (3, size, size)).astype(np.float32)
        cx, cy, r = rng.uniform(16, 48, 2).tolist() + [float(rng.uniform(3, 8))]
        img[:, (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 30.0
        np.save(root / "images" / "train" / f"c{i}.npy", img)
        (root / "labels" / "train" / f"c{i}.txt").write_text(f"0 {cx / size} {cy / size} {2 * r / size} {2 * r / size}\n")
    (root / "dataset.yaml").write_text(yaml.safe_dump(
        {"path": ".", "train": "images/train", "names": ["nodule"], "channels": 3, "format": "npy-hu",
         "context_mm": [-2.5, 0.0, 2.5]}))
    return root / "dataset.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A detector with non-trivial BN statistics and box logits, exported with dynamic shapes."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(size="n", in_channels=3, num_classes=1))
    with torch.no_grad():
        for m in model.head.box:
            m[-1].weight.normal_(0, 0.3)
        for m in model.head.cls:  # scores spread over (0, 1), not all near the init prior
            m[-1].weight.normal_(0, 0.3)
            m[-1].bias.fill_(-1.0)
        model.train()
        for _ in range(2):
            model(torch.randn(2, 3, 64, 64))
    model.eval()
    path = export_onnx(model, tmp_path_factory.mktemp("int8") / "det.onnx", imgsz=64, dynamic=True)
    return model, path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return OnnxDetector(path, intra_op_threads=1, providers=["CPUExecutionProvider"])(x)


def test_upsample_rewrite_gives_the_same_outputs(exported, tmp_path: Path) -> None:
    _, path = exported
    graph = onnx.load(str(path))
    assert sum(n.op_type == "Resize" for n in graph.graph.node) == 2  # strides 4, 8, 16: two top-down merges
    assert upsample_as_conv_transpose(graph) == 2
    ops = [n.op_type for n in graph.graph.node]
    assert "Resize" not in ops and ops.count("ConvTranspose") == 2
    onnx.checker.check_model(graph)
    onnx.save(graph, str(tmp_path / "rewritten.onnx"))
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 128)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "rewritten.onnx", x), _run(path, x), atol=1e-4)


def test_float_nodes_are_the_stem_and_the_decoding_tail(exported) -> None:
    _, path = exported
    graph = onnx.load(str(path))
    keep = set(float_nodes(graph))
    by_name = {n.name: n for n in graph.graph.node}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert [n.name for n in convs if n.name in keep] == [convs[0].name]  # only the stem conv
    assert convs[0].input[0] == graph.graph.input[0].name
    # the tail: the Exp of the box distribution, the Sigmoid of the scores and the final Transpose
    assert {"Exp", "Sigmoid", "Transpose"} <= {by_name[k].op_type for k in keep}
    # nothing of the backbone/neck is kept in float: no activation, pooling or upsampling, and
    # (apart from the stem) no kept node feeds a convolution
    assert not any(by_name[k].op_type in ("Relu", "MaxPool", "Resize") for k in keep)
    fed = {t for n in convs for t in n.input}
    assert not [k for k in keep if k != convs[0].name and set(by_name[k].output) & fed]


def test_int8_graph_is_close_to_fp32(exported, tmp_path: Path) -> None:
    model, path = exported
    calib = _calibration_set(tmp_path / "calib")
    q = quantize_int8(path, calib, tmp_path / "det-int8.onnx", spec=SPEC, n_images=4)
    graph = onnx.load(str(q))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 40
    assert "Resize" not in ops
    assert not (tmp_path / "det-int8.pre.onnx").exists()  # the intermediate graph is removed
    # the stem reads the float input and no quantisation follows a decoding op
    producer = {o: n for n in graph.graph.node for o in n.output}
    first_conv = next(n for n in graph.graph.node if n.op_type == "Conv")
    assert first_conv.input[0] == graph.graph.input[0].name
    tail_ops = {"Exp", "Sigmoid", "Clip", "ReduceSum", "Div"}
    assert not [n for n in graph.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in producer
                and producer[n.input[0]].op_type in tail_ops]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["num_classes"] == "1" and json.loads(meta["strides"]) == [4, 8, 16]
    # outputs on a calibration-like image: scores within a few quantisation steps of FP32
    from lesionlens.engine.dataset import DetectionSamples, read_dataset_yaml

    x = DetectionSamples(read_dataset_yaml(calib), "train", SPEC, crop=None)[0][0].numpy()[None]
    got, ref = _run(q, x), _run(path, x)
    assert got.shape == ref.shape
    assert np.abs(got[..., 4:] - ref[..., 4:]).max() < 0.01
    assert np.median(np.abs(got[..., :4] - ref[..., :4])) < 0.25  # pixels


def test_quantize_errors(exported, tmp_path: Path) -> None:
    _, path = exported
    with pytest.raises(ModelError, match="not found"):
        quantize_int8(tmp_path / "missing.onnx", tmp_path / "x.yaml", tmp_path / "q.onnx")
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "dataset.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "names": ["n"],
                                                         "channels": 3, "format": "npy-hu"}))
    with pytest.raises(ConfigError, match="no images"):
        quantize_int8(path, empty / "dataset.yaml", tmp_path / "q.onnx", spec=SPEC)


def test_cli_export_int8_of_the_default_model(tmp_path: Path) -> None:
    calib = _calibration_set(tmp_path / "calib")
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--model", "default", "--out", str(tmp_path / "m.onnx"), "--imgsz", "64",
                              "--int8", "--calib", str(calib)])
    assert res.exit_code == 0, res.output
    out = Path(json.loads(res.output.strip().splitlines()[-1])["onnx"])
    assert out == tmp_path / "m-int8.onnx" and (tmp_path / "m.onnx").is_file()
    det = OnnxDetector(out, intra_op_threads=1, providers=["CPUExecutionProvider"])
    assert det.num_classes == 1 and det.in_channels == 3
    for extra, says in ((["--int8"], "--calib"), (["--int8", "--calib", str(calib), "--half"], "--half")):
        res = runner.invoke(app, ["export", "--model", "default", "--out", str(tmp_path / "n.onnx"), *extra])
        assert res.exit_code == 2 and says in res.output
    assert not (tmp_path / "n.onnx").exists()  # checked before anything is written


def test_cli_export_default_destination_leaves_the_package_alone(tmp_path: Path, monkeypatch) -> None:
    from lesionlens.engine.checkpoint import sha256_file
    from lesionlens.engine.predict import resolve_model

    shipped = resolve_model("default") / "model.onnx"
    before = sha256_file(shipped)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["export", "--model", "default", "--static", "--imgsz", "64"])
    assert res.exit_code == 0, res.output
    out = Path(json.loads(res.output.strip().splitlines()[-1])["onnx"])
    assert out.parent == tmp_path and out.name.endswith("-static64.onnx") and out.name.startswith("lesionlens-ct")
    boxes = OnnxDetector(out, intra_op_threads=1)(np.zeros((1, 3, 64, 64), np.float32))
    assert boxes.shape == (1, 16 * 16 + 8 * 8 + 4 * 4, 5)
    assert sha256_file(shipped) == before

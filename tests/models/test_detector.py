from __future__ import annotations

import json

import pytest
import torch

from lesionlens.errors import ConfigError, ModelError
from lesionlens.models.boxes import dist2bbox, make_anchors
from lesionlens.models.detector import (
    DetectorConfig,
    build_detector,
    count_flops,
    count_params,
    dfl_expectation,
    flatten_outputs,
    load_detector,
    save_detector,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("channels,nc", [(3, 1), (1, 2)])
def test_shapes_train_and_eval(attention: bool, channels: int, nc: int) -> None:
    cfg = DetectorConfig(size="n", in_channels=channels, num_classes=nc, attention=attention)
    model = build_detector(cfg)
    x = torch.randn(2, channels, 64, 64)
    outs = model.train()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 4 * 16 + nc, 64 // s, 64 // s) for s in (4, 8, 16)]
    model.eval()
    with torch.no_grad():
        det = model(x)
    n = 16 * 16 + 8 * 8 + 4 * 4
    assert det.shape == (2, n, 4 + nc) and det.dtype == torch.float32
    assert ((det[..., 4:] >= 0) & (det[..., 4:] <= 1)).all()
    assert (det[..., 2:4] >= det[..., 0:2]).all()


def test_eval_decode_matches_loss_decode() -> None:
    """The exported (channel-first) decode equals the loss's (softmax) decode."""
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=2)
    model = build_detector(cfg).eval()
    with torch.no_grad():
        for m in model.head.box:  # non-trivial box logits
            m[-1].weight.normal_(0, 0.5)
        raw = model.train(False).head(model.neck(model.backbone(torch.randn(1, 1, 64, 64))))
        outs = [torch.cat(o, 1) for o in raw]
        det = model.decode(raw)
        d, c = flatten_outputs(outs, cfg.reg_max)
        pts, st = make_anchors([(o.shape[2], o.shape[3]) for o in outs], cfg.strides)
        ref = torch.cat((dist2bbox(dfl_expectation(d) * st, pts), c.sigmoid()), -1)
    assert torch.allclose(det, ref, atol=1e-4)
    assert torch.allclose(model.decode(outs), det)


def test_decode_with_large_logits_and_in_float16() -> None:
    """The float32 decode clamps DFL logits instead of shifting by their max: still the softmax
    decode for logits up to +-50; float16 (where exp overflows past 11) keeps the max shift."""
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=1)
    model = build_detector(cfg).eval()
    torch.manual_seed(1)
    raw = []
    for s in cfg.strides:
        n = 64 // s
        box = torch.randn(1, 4 * cfg.reg_max, n, n)
        raw.append((box * (50.0 / box.abs().max()), torch.randn(1, 1, n, n)))
    with torch.no_grad():
        det = model.decode(raw)
        outs = [torch.cat(o, 1) for o in raw]
        d, c = flatten_outputs(outs, cfg.reg_max)
        pts, st = make_anchors([(o.shape[2], o.shape[3]) for o in outs], cfg.strides)
        ref = torch.cat((dist2bbox(dfl_expectation(d) * st, pts), c.sigmoid()), -1)
        half = model.decode([(b.half(), k.half()) for b, k in raw])
    assert torch.allclose(det, ref, atol=1e-3)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.allclose(half.float(), ref, atol=0.5, rtol=1e-2)  # float16 steps are 0.25 px at 256


def test_fuse_keeps_outputs() -> None:
    model = build_detector(DetectorConfig(size="n"))
    model.train()
    for _ in range(2):  # non-trivial BN statistics
        model(torch.randn(2, 3, 64, 64))
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model(x)
        b = model.fuse()(x)
    assert torch.allclose(a, b, atol=1e-3)


def test_sizes_grow_and_flops_counted() -> None:
    p = {s: count_params(build_detector(DetectorConfig(size=s))) for s in ("n", "s", "m")}
    assert p["n"] < p["s"] < p["m"]
    model = build_detector(DetectorConfig(size="n"))
    f64 = count_flops(model, (1, 3, 64, 64))
    f128 = count_flops(model, (1, 3, 128, 128))
    assert f64 > 0 and f128 == pytest.approx(4 * f64, rel=0.01)
    att = build_detector(DetectorConfig(size="n", attention=True))
    assert count_flops(att, (1, 3, 128, 128)) > 0


def test_strides_variants() -> None:
    model = build_detector(DetectorConfig(size="n", strides=(8, 16, 32))).train()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [8, 4, 2]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"size": "xl"}, "size"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"strides": (4, 16)}, "strides"),
        ({"strides": (2, 4)}, "strides"),
        ({"reg_max": 1}, "reg_max"),
        ({"act": "gelu"}, "act"),
        ({"num_classes": 2, "class_names": ["mass"]}, "class_names"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DetectorConfig(**kwargs)


def test_save_load_round_trip(tmp_path) -> None:
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=2, class_names=["mass", "calcification"])
    model = build_detector(cfg).eval()
    path = save_detector(model, tmp_path / "det")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    assert json.loads(path.with_suffix(".json").read_text())["class_names"] == ["mass", "calcification"]
    loaded, cfg2 = load_detector(tmp_path / "det.json")
    assert cfg2 == cfg and not loaded.training
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # a fused model saves and loads too
    save_detector(build_detector(cfg).eval().fuse(), tmp_path / "fused")
    load_detector(tmp_path / "fused.safetensors")


def test_load_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_detector(tmp_path / "missing.safetensors")
    path = save_detector(build_detector(DetectorConfig(size="n")), tmp_path / "a")
    path.with_suffix(".json").write_text(json.dumps({"size": "n", "bogus": 1}))
    with pytest.raises(ModelError, match="bogus"):
        load_detector(path)
    path.with_suffix(".json").write_text(json.dumps({"size": "s"}))  # weights of another size
    with pytest.raises(ModelError, match="cannot load weights"):
        load_detector(path)


def test_count_flops_by_hand() -> None:
    """A CSP block at 8 x 8: two 1x1 16->16, one bottleneck (two 3x3 16->16), the 1x1 fuse 48->16."""
    from lesionlens.models.blocks import CSPBlock

    block = torch.nn.Sequential(CSPBlock(16, 16, n=1))
    macs_per_px = 16 * 16 + 16 * 16 + 2 * 9 * 16 * 16 + 48 * 16
    assert count_flops(block, (1, 16, 8, 8)) == 2 * 64 * macs_per_px

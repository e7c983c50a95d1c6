"""The LesionLens detector family: one-stage, anchor-free, decoupled head, DFL box regression.

Backbone (stride-2 stem, one strided 3x3 conv + CSP block per level, SPPF at the deepest level)
-> top-down + bottom-up feature pyramid (FPN/PAN) -> one decoupled head per output stride.
The default output strides are ``(4, 8, 16)``: a stride-4 level keeps 4-10 px lesions on several
anchor points; no stride-32 level is built unless asked for.

``Detector.forward(x)`` takes ``x: (B, C, H, W) float32`` (``H, W`` multiples of
:attr:`Detector.size_multiple`) and returns

* in training mode: a list with one raw map per stride, ``(B, 4 * reg_max + num_classes, H/s, W/s)``
  (box distribution logits first, then class logits) — what :class:`~lesionlens.models.loss.DetectionLoss` takes;
* in eval mode (and in the ONNX graph): ``(B, N, 4 + num_classes) float32``: boxes xyxy in input
  pixels, then per-class sigmoid scores; ``N = sum(H/s * W/s)`` anchor points, level by level.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lesionlens.errors import ConfigError, ModelError
from lesionlens.models.attention import AreaAttention, AreaAttentionCSP, attention_macs
from lesionlens.models.blocks import ACTIVATIONS, SPPF, ConvBNAct, CSPBlock, SumConv
from lesionlens.models.boxes import make_anchors

# size -> (channel widths at strides 2, 4, 8, 16; bottlenecks per CSP block at strides 8 and 16).
# Stride 32 (only when asked for) uses 2x the stride-16 width. Widths are multiples of 16, which
# ONNX Runtime's blocked (NCHWc) CPU convolutions handle without padding.
SIZES: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "n": ((16, 32, 48, 96), 1),
    "s": ((16, 32, 64, 128), 2),
    "m": ((32, 64, 128, 256), 2),
}
ALLOWED_STRIDES = (4, 8, 16, 32)
_LOGIT_CLAMP = 60.0  # DFL logits in the float32 decode (exp(60) * reg_max << float32 max)


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector; saved as JSON next to its weights.

    size: ``"n"`` | ``"s"`` | ``"m"`` (widths/depths in :data:`SIZES`).
    in_channels: input channels (3 for a 2.5D stack of neighbouring CT slices or 3 windows,
    1 for radiographs / mammograms). num_classes: e.g. 1 (nodule) or 2 (mass, calcification cluster).
    strides: output strides, consecutive powers of two from ``(4, 8, 16, 32)``.
    attention: use area-attention blocks at stride 16 (backbone and PAN) instead of CSP blocks.
    reg_max: bins of the distribution focal loss per box side (max side distance ``reg_max - 1``
    strides). act: ``"relu"`` or ``"silu"``. class_names: optional, ``len == num_classes``.
    """

    size: str = "n"
    in_channels: int = 3
    num_classes: int = 1
    strides: tuple[int, ...] = (4, 8, 16)
    attention: bool = False
    reg_max: int = 16
    act: str = "relu"
    area: int = 4
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        if self.size not in SIZES:
            raise ConfigError(f"size: {self.size!r} is not one of {sorted(SIZES)}")
        if int(self.in_channels) < 1:
            raise ConfigError(f"in_channels: must be >= 1, got {self.in_channels}")
        if int(self.num_classes) < 1:
            raise ConfigError(f"num_classes: must be >= 1, got {self.num_classes}")
        s = self.strides
        if not s or any(x not in ALLOWED_STRIDES for x in s) or any(b != 2 * a for a, b in itertools.pairwise(s)):
            raise ConfigError(f"strides: {s} must be consecutive powers of two from {ALLOWED_STRIDES}")
        if int(self.reg_max) < 2:
            raise ConfigError(f"reg_max: must be >= 2, got {self.reg_max}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"act: {self.act!r} is not one of {ACTIVATIONS}")
        if int(self.area) < 1:
            raise ConfigError(f"area: must be >= 1, got {self.area}")
        if self.attention and 16 not in s and 32 not in s:
            raise ConfigError("attention: needs stride 16 or 32 among strides")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ConfigError(f"class_names: {len(self.class_names)} names for num_classes={self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"detector config: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def _widths(cfg: DetectorConfig) -> dict[int, int]:
    w, _ = SIZES[cfg.size]
    return {2: w[0], 4: w[1], 8: w[2], 16: w[3], 32: 2 * w[3]}


class Backbone(nn.Module):
    """``(B, C, H, W)`` -> list of maps at ``cfg.strides`` (widths from :func:`_widths`)."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        wd, depth = _widths(cfg), SIZES[cfg.size][1]
        self.out_strides = cfg.strides
        deepest = max(cfg.strides)
        self.stem = ConvBNAct(cfg.in_channels, wd[2], 3, 2, act=cfg.act)
        self.stages = nn.ModuleList()
        s = 2
        while s < deepest:
            s2 = 2 * s
            n = 1 if s2 == 4 else depth
            if cfg.attention and s2 == 16:
                block: nn.Module = AreaAttentionCSP(wd[s2], wd[s2], n=n, area=cfg.area, act=cfg.act)
            else:
                block = CSPBlock(wd[s2], wd[s2], n=n, act=cfg.act)
            layers: list[nn.Module] = [ConvBNAct(wd[s], wd[s2], 3, 2, act=cfg.act), block]
            if s2 == deepest:
                layers.append(SPPF(wd[s2], wd[s2], act=cfg.act))
            self.stages.append(nn.Sequential(*layers))
            s = s2

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs, s = [], 2
        for stage in self.stages:
            x = stage(x)
            s *= 2
            if s in self.out_strides:
                outs.append(x)
        return outs


class Neck(nn.Module):
    """FPN (top-down: 1x1 lateral at the coarse level, nearest 2x upsampling, add) + PAN
    (bottom-up: strided 3x3 conv, add), a CSP block after every merge. Merging by addition
    instead of concatenation keeps the ONNX graph free of Concat/Split (layout changes on CPU).

    list of ``(B, w_s, H/s, W/s)`` -> same shapes, fine to coarse.
    """

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        wd, st = _widths(cfg), cfg.strides
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral = nn.ModuleList(ConvBNAct(wd[st[i + 1]], wd[st[i]], 1, act=cfg.act) for i in range(len(st) - 1))
        self.td = nn.ModuleList(CSPBlock(wd[st[i]], wd[st[i]], 1, act=cfg.act) for i in range(len(st) - 1))
        self.down = nn.ModuleList(ConvBNAct(wd[st[i - 1]], wd[st[i]], 3, 2, act=cfg.act) for i in range(1, len(st)))
        bu: list[nn.Module] = []
        for i in range(1, len(st)):
            c = wd[st[i]]
            if cfg.attention and st[i] == 16:
                bu.append(AreaAttentionCSP(c, c, 1, area=cfg.area, act=cfg.act))
            else:
                bu.append(CSPBlock(c, c, 1, act=cfg.act))
        self.bu = nn.ModuleList(bu)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        td = [feats[-1]]
        for i in range(len(feats) - 2, -1, -1):
            td.insert(0, self.td[i](self.up(self.lateral[i](td[0])) + feats[i]))
        outs = [td[0]]
        for i in range(1, len(feats)):
            outs.append(self.bu[i - 1](self.down[i - 1](outs[-1]) + td[i]))
        return outs


class Head(nn.Module):
    """Decoupled head per level, two depthwise-separable branches: box (depthwise 3x3 -> 1x1 ->
    1x1 to ``4 * reg_max``) and class (depthwise 3x3 -> 1x1 -> 1x1 to ``num_classes``). Output per level:
    ``(B, 4 * reg_max + num_classes, H/s, W/s)`` raw logits."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        wd = _widths(cfg)
        self.reg_max, self.nc, self.strides = cfg.reg_max, cfg.num_classes, cfg.strides
        self.box = nn.ModuleList()
        self.cls = nn.ModuleList()
        for s in cfg.strides:
            c = wd[s]
            self.box.append(
                nn.Sequential(
                    ConvBNAct(c, c, 3, groups=c, act=cfg.act),
                    ConvBNAct(c, c, 1, act=cfg.act),
                    nn.Conv2d(c, 4 * cfg.reg_max, 1),
                )
            )
            self.cls.append(
                nn.Sequential(
                    ConvBNAct(c, c, 3, groups=c, act=cfg.act),
                    ConvBNAct(c, c, 1, act=cfg.act),
                    nn.Conv2d(c, cfg.num_classes, 1),
                )
            )
        self.reset_bias()

    @torch.no_grad()
    def reset_bias(self, nominal_size: int = 512) -> None:
        """Box logits start flat; class logits start at a prior of ~5 objects per image."""
        for box, cls, s in zip(self.box, self.cls, self.strides):
            box_out, cls_out = box[-1], cls[-1]  # type: ignore[index]
            box_out.bias.fill_(1.0)
            cls_out.bias.fill_(math.log(5 / self.nc / (nominal_size / s) ** 2))

    def forward(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """-> per level ``(box logits (B, 4 * reg_max, h, w), class logits (B, nc, h, w))``."""
        return [(b(f), c(f)) for f, b, c in zip(feats, self.box, self.cls)]


def flatten_outputs(outputs: Sequence[Tensor], reg_max: int) -> tuple[Tensor, Tensor]:
    """Per-level raw maps -> ``dist_logits: (B, N, 4, reg_max)`` and ``cls_logits: (B, N, nc)``."""
    b = outputs[0].shape[0]
    no = outputs[0].shape[1]
    flat = torch.cat([o.reshape(b, no, -1) for o in outputs], 2).transpose(1, 2)  # (B, N, no)
    return flat[..., : 4 * reg_max].reshape(b, -1, 4, reg_max), flat[..., 4 * reg_max :]


def dfl_expectation(dist_logits: Tensor) -> Tensor:
    """``(..., 4, reg_max)`` logits -> ``(..., 4)`` expected distance in stride units (softmax mean)."""
    bins = torch.arange(dist_logits.shape[-1], device=dist_logits.device, dtype=dist_logits.dtype)
    return (dist_logits.softmax(-1) * bins).sum(-1)


class Detector(nn.Module):
    """Backbone + neck + head; see the module docstring for the input/output contract."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.neck = Neck(config)
        self.head = Head(config)

    @property
    def size_multiple(self) -> int:
        """Input ``H`` and ``W`` must be multiples of this (deepest stride x attention areas)."""
        deepest = max(self.config.strides)
        return math.lcm(deepest, 16 * self.config.area) if self.config.attention else deepest

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        outs = self.head(self.neck(self.backbone(x)))
        if self.training:
            return [torch.cat(o, 1) for o in outs]
        return self.decode(outs)

    def decode(self, outputs: Sequence[Tensor | tuple[Tensor, Tensor]]) -> Tensor:
        """Raw per-level outputs -> ``(B, N, 4 + nc)``: xyxy input pixels, sigmoid class scores.

        outputs: per level either the training-mode map ``(B, 4 * reg_max + nc, h, w)`` or the
        head's ``(box logits, class logits)`` pair. Works channel-first per level and normalises
        the DFL bins with exp/sum reductions rather than a softmax over a transposed tensor,
        so the ONNX graph needs one small transpose at the very end. In float32/bfloat16 the logits
        are clamped to +-60 instead of shifted by their maximum (the same softmax for any logit a
        trained head gives; exp(60) * reg_max is far from overflow): one consumer per box map,
        so an INT8 graph dequantizes it once, and no max reduction. Float16 keeps the max shift.
        """
        r = self.config.reg_max
        levels = []
        for o, s in zip(outputs, self.config.strides):
            box, cls = (o[:, : 4 * r], o[:, 4 * r :]) if isinstance(o, Tensor) else o
            b, _, h, w = box.shape
            bins = torch.arange(r, device=box.device, dtype=box.dtype).view(1, 1, r, 1)
            d = box.reshape(b, 4, r, h * w)
            if torch.finfo(d.dtype).max > 1e38:
                e = d.clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP).exp()
            else:
                e = (d - d.amax(2, keepdim=True)).exp()
            dist = (e * bins).sum(2) / e.sum(2) * s  # (B, 4, hw) ltrb pixels
            points, _ = make_anchors([(h, w)], [s], device=box.device, dtype=box.dtype)
            pt = points.t().unsqueeze(0)  # (1, 2, hw)
            boxes = torch.cat((pt - dist[:, :2], pt + dist[:, 2:]), 1)
            levels.append(torch.cat((boxes, cls.reshape(b, -1, h * w).sigmoid()), 1))
        return torch.cat(levels, 2).transpose(1, 2)

    def fuse(self) -> Detector:
        """Fold every BatchNorm into its conv (for export/inference); returns ``self``."""
        for m in self.modules():
            if isinstance(m, (ConvBNAct, SumConv)):
                m.fuse()
        return self


def build_detector(config: DetectorConfig) -> Detector:
    """Build a freshly initialised detector for ``config``."""
    return Detector(config)


def save_detector(model: Detector, path: str | Path) -> Path:
    """Write ``<stem>.safetensors`` (weights) and ``<stem>.json`` (config); returns the weights path."""
    from safetensors.torch import save_file

    p = Path(path).with_suffix(".safetensors")
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(p), metadata={"format": "lesionlens-detector"})
    p.with_suffix(".json").write_text(json.dumps(model.config.to_dict(), indent=2))
    return p


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[Detector, DetectorConfig]:
    """Load a detector saved by :func:`save_detector` (``path``: the .safetensors or .json file,
    or the common stem). Returns ``(model in eval mode, config)``; raises ModelError."""
    from safetensors.torch import load_file

    p = Path(path)
    weights, cfg_path = p.with_suffix(".safetensors"), p.with_suffix(".json")
    for f in (weights, cfg_path):
        if not f.is_file():
            raise ModelError("model file not found", path=f)
    try:
        config = DetectorConfig.from_dict(json.loads(cfg_path.read_text()))
    except (ValueError, TypeError, ConfigError) as e:
        raise ModelError(f"bad detector config: {e}", path=cfg_path) from e
    model = Detector(config)
    try:
        state = load_file(str(weights))
        if not any(k.endswith(".bn.weight") for k in state):  # saved after fuse()
            model.fuse()
        model.load_state_dict(state, strict=True)
    except Exception as e:  # safetensors raises its own error types
        raise ModelError(f"cannot load weights: {e}", path=weights) from e
    return model.to(device).eval(), config


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, int, int, int]) -> float:
    """Forward FLOPs (2 x multiply-accumulates) of conv, linear and attention matmuls for one
    ``input_shape = (B, C, H, W)`` pass in eval mode. Element-wise ops are not counted."""
    macs = [0]
    hooks = []

    def conv_hook(m: nn.Conv2d, inp: tuple[Tensor, ...], out: Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs[0] += out.numel() * k

    def linear_hook(m: nn.Linear, inp: tuple[Tensor, ...], out: Tensor) -> None:
        macs[0] += out.numel() * m.in_features

    def sumconv_hook(m: SumConv, inp: tuple[Tensor, ...], out: Tensor) -> None:  # its 1x1 convs run as one
        macs[0] += out.numel() * sum(c.in_channels for c in m.convs)  # type: ignore[misc]

    def attn_hook(m: AreaAttention, inp: tuple[Tensor, ...], out: Tensor) -> None:
        macs[0] += attention_macs(m, inp[0])

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, SumConv):
            hooks.append(m.register_forward_hook(sumconv_hook))
        elif isinstance(m, AreaAttention):
            hooks.append(m.register_forward_hook(attn_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return 2.0 * macs[0]


__all__ = [
    "SIZES",
    "Detector",
    "DetectorConfig",
    "build_detector",
    "count_flops",
    "count_params",
    "dfl_expectation",
    "flatten_outputs",
    "load_detector",
    "save_detector",
]

"""Convolutional building blocks of the detector (Conv-BN-act, CSP blocks, SPPF).

All blocks take and return ``(B, C, H, W) float32`` feature maps. Only ops that ONNX Runtime
runs fast on a CPU and quantises well (Conv, BatchNorm folded into Conv, ReLU/SiLU, MaxPool,
Concat, Resize) are used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = ("relu", "silu")


def make_act(name: str) -> nn.Module:
    """``"relu"`` or ``"silu"`` -> activation module (ReLU fuses into an INT8 QLinearConv)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``y = x * scale + shift``; both ``(C,)``."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation; ``k`` odd, padding ``k // 2``.

    ``(B, c_in, H, W) -> (B, c_out, H / s, W / s)``. ``groups == c_in`` makes it depthwise.
    After :meth:`fuse` the BatchNorm is folded into the convolution (export / inference).
    """

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1, act: str = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold BatchNorm into the conv weights (eval statistics); idempotent."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        scale, shift = bn_scale_shift(self.bn)
        conv = nn.Conv2d(
            self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,  # type: ignore[arg-type]
            self.conv.stride, self.conv.padding, groups=self.conv.groups, bias=True,  # type: ignore[arg-type]
        ).to(self.conv.weight.device)
        conv.weight.copy_(self.conv.weight * scale[:, None, None, None])
        assert conv.bias is not None
        conv.bias.copy_(shift)
        self.conv = conv
        self.bn = nn.Identity()


class Bottleneck(nn.Module):
    """Two 3x3 Conv-BN-act with a residual add; ``(B, c, H, W) -> (B, c, H, W)``."""

    def __init__(self, c: int, act: str = "relu"):
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 3, act=act)
        self.cv2 = ConvBNAct(c, c, 3, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.cv2(self.cv1(x))


class SumConv(nn.Module):
    """``act(BN(conv1x1(concat(x_i))))`` — the 1x1 fuse of a CSP/SPPF block over the channel-concat
    of its inputs. The weights are kept as one 1x1 conv per input (``convs[i]`` sees ``x_i``; the
    checkpoint layout of the earlier sum-of-convs form) and concatenated at run time, so the graph
    is Concat + one Conv. One wider convolution measured faster in ONNX Runtime than a sum of
    narrow ones (FP32: Conv+Add fusions; INT8: a QLinearAdd per input) — see docs/detection.md.

    inputs: list of ``(B, c_i, H, W)`` with ``c_i = c_ins[i]`` -> ``(B, c_out, H, W)``.
    """

    def __init__(self, c_ins: list[int], c_out: int, act: str = "relu"):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c_out, 1, bias=False) for c in c_ins)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = make_act(act)

    def forward(self, xs: list[Tensor]) -> Tensor:
        convs: list[nn.Conv2d] = list(self.convs)  # type: ignore[arg-type]
        weight = torch.cat([c.weight for c in convs], 1)
        y = nn.functional.conv2d(torch.cat(xs, 1), weight, convs[0].bias)  # bias: set by fuse()
        return self.act(self.bn(y))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold BatchNorm into the 1x1 convs (the bias goes on the first); idempotent."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        scale, shift = bn_scale_shift(self.bn)
        new = nn.ModuleList()
        for i, c in enumerate(self.convs):
            assert isinstance(c, nn.Conv2d)
            f = nn.Conv2d(c.in_channels, c.out_channels, 1, bias=i == 0).to(c.weight.device)
            f.weight.copy_(c.weight * scale[:, None, None, None])
            if f.bias is not None:
                f.bias.copy_(shift)
            new.append(f)
        self.convs = new
        self.bn = nn.Identity()


class CSPBlock(nn.Module):
    """C2f-style cross-stage-partial block: two 1x1 branches, ``n`` bottlenecks chained on the
    second, then a 1x1 fuse of all of them (:class:`SumConv`, concat + 1x1).

    ``(B, c_in, H, W) -> (B, c_out, H, W)``; hidden width ``c_out * e`` rounded to a multiple of 16.
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, e: float = 0.5, act: str = "relu"):
        super().__init__()
        self.c = max(16, round(c_out * e / 16) * 16)  # multiples of 16 suit ORT's NCHWc kernels
        self.cv_a = ConvBNAct(c_in, self.c, 1, act=act)
        self.cv_b = ConvBNAct(c_in, self.c, 1, act=act)
        self.m = nn.ModuleList(Bottleneck(self.c, act=act) for _ in range(n))
        self.cv2 = SumConv([self.c] * (2 + n), c_out, act=act)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv_a(x), self.cv_b(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(y)


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, then a 1x1 fuse of all four
    (:class:`SumConv`). ``(B, c_in, H, W) -> (B, c_out, H, W)``; widens the receptive field cheaply.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 5, act: str = "relu"):
        super().__init__()
        c_ = c_in // 2
        self.cv1 = ConvBNAct(c_in, c_, 1, act=act)
        self.cv2 = SumConv([c_] * 4, c_out, act=act)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(y)


__all__ = ["ACTIVATIONS", "SPPF", "Bottleneck", "CSPBlock", "ConvBNAct", "SumConv", "make_act"]

"""Area attention (in the spirit of YOLOv12's A2C2f) built on ``scaled_dot_product_attention``.

The feature map is cut into ``area`` horizontal strips and self-attention runs inside each strip,
which keeps the cost ``O(N^2 / area)`` instead of ``O(N^2)``. On a GPU,
:func:`torch.nn.functional.scaled_dot_product_attention` dispatches to flash / memory-efficient
kernels; the ONNX export turns it into MatMul-Softmax-MatMul.

Shapes: ``(B, C, H, W)`` in, same out. ``H`` must be divisible by ``area`` (the detector places
these blocks at stride 16, so inputs are multiples of ``16 * area`` pixels high).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lesionlens.models.blocks import ConvBNAct


class AreaAttention(nn.Module):
    """Multi-head self-attention within ``area`` horizontal strips, plus a depthwise 5x5
    positional term on the value map (as in YOLOv12).

    ``dim`` channels split into ``num_heads`` heads (``dim % num_heads == 0``).
    """

    def __init__(self, dim: int, num_heads: int, area: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.area = dim, num_heads, area
        self.head_dim = dim // num_heads
        self.qkv = ConvBNAct(dim, dim * 3, 1, act="relu")
        self.qkv.act = nn.Identity()
        self.pe = ConvBNAct(dim, dim, 5, groups=dim, act="relu")
        self.pe.act = nn.Identity()
        self.proj = ConvBNAct(dim, dim, 1, act="relu")
        self.proj.act = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        a, nh, hd = self.area, self.num_heads, self.head_dim
        t = (h // a) * w  # tokens per area (row-major, so an area is a contiguous block of rows)
        # (B, 3C, H, W) -> (B, 3C, a, t) -> (B*a, 3, heads, hd, t): one 4D transpose, then views.
        qkv_map = self.qkv(x)
        qkv = qkv_map.reshape(b, 3 * c, a, t).transpose(1, 2).reshape(b * a, 3, nh, hd, t)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B*a, heads, hd, t), channel-first
        # SDPA wants (..., t, hd); the .mT views become transposed MatMul inputs in ONNX Runtime
        out = F.scaled_dot_product_attention(q.mT, k.mT, v.mT).mT  # (B*a, heads, hd, t)
        out = out.reshape(b, a, c, t).transpose(1, 2).reshape(b, c, h, w)
        return self.proj(out + self.pe(qkv_map[:, 2 * c :]))  # positional term on the V map


class AttentionBlock(nn.Module):
    """Pre-residual attention + 1x1 MLP: ``x + attn(x)``, then ``x + mlp(x)``. Shape-preserving."""

    def __init__(self, dim: int, num_heads: int, area: int = 4, mlp_ratio: float = 1.5, act: str = "relu"):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.attn = AreaAttention(dim, num_heads, area)
        self.mlp = nn.Sequential(ConvBNAct(dim, hidden, 1, act=act), ConvBNAct(hidden, dim, 1, act=act))
        self.mlp[1].act = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class AreaAttentionCSP(nn.Module):
    """A2C2f-style block: 1x1 in, ``n`` pairs of attention blocks chained, concat, 1x1 out.

    ``(B, c_in, H, W) -> (B, c_out, H, W)``; residual (scaled, learnable) when ``c_in == c_out``.
    """

    def __init__(self, c_in: int, c_out: int, n: int = 1, area: int = 4, act: str = "relu"):
        super().__init__()
        c_ = max(32, c_out // 2)
        heads = max(1, c_ // 32)
        self.cv1 = ConvBNAct(c_in, c_, 1, act=act)
        self.m = nn.ModuleList(
            nn.Sequential(*(AttentionBlock(c_, heads, area, act=act) for _ in range(2))) for _ in range(n)
        )
        self.cv2 = ConvBNAct((1 + n) * c_, c_out, 1, act=act)
        self.gamma = nn.Parameter(0.01 * torch.ones(c_out)) if c_in == c_out else None

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for m in self.m:
            y.append(m(y[-1]))
        out = self.cv2(torch.cat(y, 1))
        if self.gamma is not None:
            return x + self.gamma.view(1, -1, 1, 1) * out
        return out


def attention_macs(module: AreaAttention, x: Tensor) -> int:
    """Multiply-accumulates of the two attention matmuls (QK^T and AV) for input ``x: (B,C,H,W)``."""
    b, c, h, w = x.shape
    n = h * w
    return 2 * b * n * (n // module.area) * c


__all__ = ["AreaAttention", "AreaAttentionCSP", "AttentionBlock", "attention_macs"]

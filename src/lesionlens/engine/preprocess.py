"""Model input normalisation — the one function training and prediction share.

A model's :class:`InputSpec` is saved with its weights, so prediction normalises exactly as
training did. Images arrive as ``(C, H, W) float32`` physical values: HU for CT 2.5D stacks,
stored grey values for radiographs/mammograms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from lesionlens.errors import ConfigError

InputKind = Literal["ct-hu", "gray"]


@dataclass(frozen=True)
class InputSpec:
    """How physical values become model inputs in [0, 1].

    kind "ct-hu": a fixed HU window (``window_center``/``window_width``; default the lung window
      −600/1500 widened slightly so ground-glass and solid tissue stay apart) mapped to [0, 1].
    kind "gray": per-image robust min–max (0.5 and 99.5 percentiles) to [0, 1] — radiographs
      and mammograms have no absolute unit.
    channels: C; context_mm: slice offsets (mm) of the channels for CT 2.5D stacks.
    """

    kind: InputKind = "ct-hu"
    channels: int = 3
    window_center: float = -600.0
    window_width: float = 1600.0
    context_mm: tuple[float, ...] = (-2.5, 0.0, 2.5)

    def __post_init__(self) -> None:
        if self.kind not in ("ct-hu", "gray"):
            raise ConfigError(f"input.kind must be 'ct-hu' or 'gray', got {self.kind!r}")
        if self.window_width <= 0:
            raise ConfigError(f"input.window_width must be > 0, got {self.window_width}")
        if self.channels < 1:
            raise ConfigError(f"input.channels must be >= 1, got {self.channels}")
        if self.kind == "ct-hu" and len(self.context_mm) != self.channels:
            raise ConfigError(
                f"input.context_mm has {len(self.context_mm)} offsets but input.channels is {self.channels}"
            )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["context_mm"] = list(self.context_mm)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> InputSpec:
        d = dict(d)
        if "context_mm" in d:
            d["context_mm"] = tuple(float(v) for v in d["context_mm"])  # type: ignore[attr-defined, union-attr]
        try:
            return cls(**d)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"input spec: {exc}") from exc


def normalize(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(C, H, W) or (B, C, H, W) physical values → float32 in [0, 1] per ``spec``."""
    if spec.kind == "ct-hu":
        return normalize_inplace(np.array(image, dtype=np.float32), spec)  # on a copy
    x = np.asarray(image, dtype=np.float32)
    axes = tuple(range(x.ndim - 3, x.ndim))
    lo = np.percentile(x, 0.5, axis=axes, keepdims=True)
    hi = np.percentile(x, 99.5, axis=axes, keepdims=True)
    return np.clip((x - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def normalize_inplace(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """:func:`normalize` of a float32 array, overwriting it for a HU window (the same values);
    returns the normalised array (a new one for ``gray`` input or another dtype)."""
    if spec.kind != "ct-hu" or x.dtype != np.float32:
        return normalize(x, spec)
    x -= spec.window_center - spec.window_width / 2.0
    x *= 1.0 / spec.window_width
    return np.clip(x, 0.0, 1.0, out=x)


def pad_to_multiple(image: np.ndarray, multiple: int, fill: float = 0.0) -> np.ndarray:
    """Pad (…, H, W) at the bottom/right to multiples of ``multiple`` (boxes stay valid)."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image
    pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(image, pad, mode="constant", constant_values=fill)

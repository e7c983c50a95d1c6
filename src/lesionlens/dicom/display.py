"""Display mapping (VOI): physical values → grey levels for people, never for models.

Implements the VOI LUT functions of DICOM PS3.3 C.11.2.1.2 — ``LINEAR``, ``LINEAR_EXACT`` and
``SIGMOID`` — the VOI LUT Sequence, MONOCHROME1 inversion, named radiology window presets and the
"as stored" window (the header's window or VOI LUT, else the data's min–max).

Inputs are physical values (after the modality LUT: HU for CT), as held by
:class:`~lesionlens.dicom.types.Volume`. Outputs are ``uint8`` (``bits=8``) or ``uint16``
(``bits=16``) grey levels in ``[0, 2**bits - 1]``; colour volumes pass through as uint8 RGB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lesionlens.dicom.types import DisplayInfo, Volume
from lesionlens.errors import ConfigError

#: Named windows ``(center, width)`` in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "soft-tissue": (50.0, 350.0),
}

AS_STORED = "as-stored"
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

__all__ = [
    "AS_STORED",
    "VOI_FUNCTIONS",
    "WINDOW_PRESETS",
    "Window",
    "apply_voi_lut",
    "apply_window",
    "parse_window",
    "to_display",
    "window_grey",
]


@dataclass(frozen=True)
class Window:
    """A display window. ``center``/``width`` are None for "as stored" (use the header)."""

    name: str
    center: float | None = None
    width: float | None = None
    function: str = "LINEAR"

    @property
    def as_stored(self) -> bool:
        return self.center is None


_PAIR = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?)\s*[,/:]\s*([-+]?\d+(?:\.\d*)?)\s*$")


def parse_window(spec: str | Window | tuple[float, float]) -> Window:
    """``"lung"`` | ``"soft-tissue"`` | ``"as-stored"`` | ``"WL,WW"`` (e.g. ``"-600,1500"``) → Window.

    Raises :class:`ConfigError` (field ``window``) for unknown names or a width <= 0.
    """
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, tuple):
        center, width = float(spec[0]), float(spec[1])
        name = f"{center:g},{width:g}"
    else:
        key = spec.strip().lower().replace("_", "-").replace(" ", "-")
        if key in (AS_STORED, "asstored", "stored", "header"):
            return Window(AS_STORED)
        if key in ("soft", "softtissue"):
            key = "soft-tissue"
        if key in WINDOW_PRESETS:
            c, w = WINDOW_PRESETS[key]
            return Window(key, c, w)
        m = _PAIR.match(spec)
        if m is None:
            names = ", ".join([*WINDOW_PRESETS, AS_STORED])
            raise ConfigError(f"window: unknown window {spec!r}; use one of {names} or 'WL,WW'", code="window")
        center, width = float(m.group(1)), float(m.group(2))
        name = f"{center:g},{width:g}"
    if width <= 0:
        raise ConfigError(f"window: width must be > 0, got {width:g}", code="window")
    return Window(name, center, width)


def _out_max(bits: int) -> int:
    if bits not in (8, 16):
        raise ConfigError(f"bits: display depth must be 8 or 16, got {bits}", code="bits")
    return (1 << bits) - 1


def _out_dtype(bits: int) -> type[np.unsignedinteger]:
    return np.uint8 if bits == 8 else np.uint16


def apply_window(
    pixels: np.ndarray, center: float, width: float, function: str = "LINEAR", bits: int = 8
) -> np.ndarray:
    """Window physical values per PS3.3 C.11.2.1.2 into ``[0, 2**bits - 1]``.

    pixels: any shape, physical values. Returns the same shape, uint8 (bits=8) or uint16
    (bits=16), rounded to the nearest level.

    * LINEAR: x <= c - 0.5 - (w-1)/2 → 0; x > c - 0.5 + (w-1)/2 → max;
      else ((x - (c - 0.5)) / (w - 1) + 0.5) · max. Requires w >= 1.
    * LINEAR_EXACT: x <= c - w/2 → 0; x > c + w/2 → max; else ((x - c) / w + 0.5) · max.
    * SIGMOID: max / (1 + exp(-4 (x - c) / w)).
    """
    ymax = _out_max(bits)
    x = np.asarray(pixels, dtype=np.float64)
    function = function.upper()
    if function == "LINEAR":
        if width < 1:
            raise ConfigError(f"window: LINEAR needs width >= 1, got {width:g}", code="window")
        lo = center - 0.5 - (width - 1) / 2
        hi = center - 0.5 + (width - 1) / 2
        y = ((x - (center - 0.5)) / max(width - 1, 1e-12) + 0.5) * ymax
        y = np.where(x <= lo, 0.0, np.where(x > hi, ymax, y))
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ConfigError(f"window: LINEAR_EXACT needs width > 0, got {width:g}", code="window")
        y = ((x - center) / width + 0.5) * ymax
        y = np.where(x <= center - width / 2, 0.0, np.where(x > center + width / 2, ymax, y))
    elif function == "SIGMOID":
        if width <= 0:
            raise ConfigError(f"window: SIGMOID needs width > 0, got {width:g}", code="window")
        y = ymax / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    else:
        raise ConfigError(f"window: unknown VOI LUT function {function!r}; use {VOI_FUNCTIONS}", code="window")
    return np.clip(np.rint(y), 0, ymax).astype(_out_dtype(bits))


def apply_voi_lut(pixels: np.ndarray, first_mapped: int, lut_bits: int, table: np.ndarray, bits: int = 8) -> np.ndarray:
    """Map physical values through a VOI LUT Sequence table, then scale to ``bits``.

    Values below ``first_mapped`` take the first entry, values past the end the last entry.
    Entries are scaled from ``[0, 2**lut_bits - 1]`` (or the table's maximum when entries exceed
    the declared depth, a common header error) to ``[0, 2**bits - 1]``.
    pixels: any shape → same shape uint8/uint16.
    """
    ymax = _out_max(bits)
    table = np.asarray(table, dtype=np.float64).ravel()
    if table.size == 0:
        raise ConfigError("VOI LUT table is empty", code="voi-lut")
    idx = np.clip(np.rint(np.asarray(pixels, dtype=np.float64)) - first_mapped, 0, table.size - 1).astype(np.int64)
    scale_from = max(float((1 << int(lut_bits)) - 1), float(table.max()), 1.0)
    y = table[idx] * (ymax / scale_from)
    return np.clip(np.rint(y), 0, ymax).astype(_out_dtype(bits))


def _minmax(pixels: np.ndarray, bits: int) -> np.ndarray:
    ymax = _out_max(bits)
    lo, hi = float(np.min(pixels)), float(np.max(pixels))
    if hi <= lo:
        return np.zeros(pixels.shape, dtype=_out_dtype(bits))
    y = (np.asarray(pixels, dtype=np.float64) - lo) * (ymax / (hi - lo))
    return np.clip(np.rint(y), 0, ymax).astype(_out_dtype(bits))


def window_grey(pixels: np.ndarray, window: Window, info: DisplayInfo, bits: int = 8) -> np.ndarray:
    """Greyscale physical values (any shape) → display levels, MONOCHROME1 inverted."""
    if not window.as_stored:
        assert window.center is not None and window.width is not None
        out = apply_window(pixels, window.center, window.width, window.function, bits)
    elif info.voi_lut is not None:
        first, lut_bits, table = info.voi_lut
        out = apply_voi_lut(pixels, first, lut_bits, table, bits)
    elif info.windows:
        center, width = info.windows[0]
        function = info.voi_function if info.voi_function in VOI_FUNCTIONS else "LINEAR"
        if function == "LINEAR" and width < 1:
            function = "LINEAR_EXACT"
        out = apply_window(pixels, center, width, function, bits)
    else:
        out = _minmax(pixels, bits)
    if info.invert:
        out = (_out_max(bits) - out.astype(np.int64)).astype(out.dtype)
    return out


def to_display(volume: Volume, window: str | Window = AS_STORED, bits: int = 8) -> np.ndarray:
    """A volume as display levels.

    Greyscale ``(K, R, C)`` float32 → ``(K, R, C)`` uint8 (bits=8) or uint16 (bits=16) using
    ``window`` (a preset name, ``"WL,WW"``, or ``"as-stored"``: header VOI LUT, else first
    header window with its VOI LUT function, else min–max over the volume). MONOCHROME1 sources
    are inverted so high physical values show dark, as the modality intended.
    Colour ``(K, R, C, 3)`` uint8 is returned unchanged (windowing does not apply).
    """
    _out_max(bits)
    if volume.pixels.ndim == 4:
        return np.asarray(volume.pixels, dtype=np.uint8)
    return window_grey(volume.pixels, parse_window(window), volume.display, bits)

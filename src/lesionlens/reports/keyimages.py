"""Key images of lesions: PNGs a reader can look at without a viewer.

For every lesion two files, named from its tracking id only (never from header values):

- ``{id}_slice.png`` — the whole key slice (the slice of the measured long axis, else the
  detector's key slice) in the lung window (CT: W 1500, L −600) or, for other images, the
  image's own window (header VOI LUT / window, else min–max; MONOCHROME1 shown as intended).
  Displayed with square pixels (anisotropic pixel spacing is corrected) and the long side
  scaled into [512, 1024] px. The lesion is boxed in yellow and labelled "id long x short mm";
  other lesions crossing the slice are boxed and labelled in cyan; the long axis (red) and
  short axis (green) are drawn where they were measured on this slice.
- ``{id}_crop.png`` — ``CROP_PX`` × ``CROP_PX`` px centred on the lesion's box, covering
  ``CROP_FACTOR`` × the lesion's size (at least ``CROP_MIN_SRC_PX`` source pixels), padded with
  black past the image edge, with the box drawn just outside the lesion.

Only the slices shown are windowed, so a 300-slice CT with a handful of lesions takes a few
tens of milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lesionlens.dicom.display import AS_STORED, Window, parse_window, window_grey
from lesionlens.dicom.types import Volume
from lesionlens.errors import OutputError
from lesionlens.pipeline.types import Lesion

SLICE_MIN_PX = 512
SLICE_MAX_PX = 1024
CROP_PX = 256
CROP_MIN_SRC_PX = 64
CROP_FACTOR = 4.0

FOCUS = (255, 215, 0)  # the lesion the image is about
OTHER = (0, 200, 255)  # other lesions on the same slice
LONG_AXIS = (255, 64, 64)
SHORT_AXIS = (64, 230, 64)
BOX_MARGIN_PX = 3  # output pixels between the lesion's box edge and the drawn box

Box = tuple[float, float, float, float]  # xyxy, source pixels


@dataclass(frozen=True)
class _Frame:
    """Source → output scaling of a displayed slice: x_out = x * sx, y_out = y * sy."""

    width: int
    height: int
    sx: float
    sy: float


def _spacing(volume: Volume) -> tuple[float, float]:
    """(row, column) spacing in mm; 1.0 where the affine gives nothing sensible."""
    sp = volume.spacing_mm
    sr, sc = float(sp[1]), float(sp[2])
    return (sr if np.isfinite(sr) and sr > 0 else 1.0, sc if np.isfinite(sc) and sc > 0 else 1.0)


def _frame(rows: int, cols: int, sr: float, sc: float) -> _Frame:
    ppm = 1.0 / min(sr, sc)  # keep the finest native resolution, square pixels
    w0, h0 = cols * sc * ppm, rows * sr * ppm
    long_side = max(w0, h0)
    f = min(max(long_side, SLICE_MIN_PX), SLICE_MAX_PX) / long_side
    w, h = max(1, round(w0 * f)), max(1, round(h0 * f))
    return _Frame(w, h, w / cols, h / rows)


def _window(volume: Volume) -> Window:
    return parse_window("lung") if volume.modality.upper() == "CT" else Window(AS_STORED)


def _display_slice(volume: Volume, k: int, window: Window) -> Image.Image:
    px = volume.pixels[k]
    if px.ndim == 3:  # colour (R, C, 3) uint8
        return Image.fromarray(np.ascontiguousarray(px, dtype=np.uint8), "RGB")
    return Image.fromarray(window_grey(px, window, volume.display, bits=8), "L")


def _safe_stem(tid: str, i: int, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", tid).strip("_")[:40] or f"lesion{i + 1}"
    base, n = stem, 2
    while stem.lower() in used:
        stem, n = f"{base}_{n}", n + 1
    used.add(stem.lower())
    return stem


def key_slice(lesion: Lesion, n_slices: int) -> int:
    """The slice a lesion is shown on: where its long axis was measured, else its key slice."""
    k = lesion.measurements.long_axis.k if lesion.measurements is not None else lesion.key_k
    return int(min(max(k, 0), n_slices - 1))


def box_on_slice(lesion: Lesion, k: int) -> Box | None:
    """The lesion's xyxy box (source pixels) on slice ``k``: from its mask where there is one,
    its detector box on its key slice (or any slice it spans), else None."""
    m = lesion.measurements
    if m is not None and m.mask is not None:
        k0, r0, c0 = m.mask.offset
        i = k - k0
        if 0 <= i < m.mask.mask.shape[0]:
            rr, cc = np.nonzero(m.mask.mask[i])
            if rr.size:
                return (float(c0 + cc.min()), float(r0 + rr.min()), float(c0 + cc.max() + 1), float(r0 + rr.max() + 1))
    if k == lesion.key_k or lesion.slices[0] <= k <= lesion.slices[1]:
        x1, y1, x2, y2 = (float(v) for v in np.asarray(lesion.bbox_px, dtype=np.float64)[:4])
        return (x1, y1, x2, y2)
    return None


def lesion_label(lesion: Lesion) -> str:
    """"L1 12.3 x 8.1 mm" (measured), "L1 9.0 mm" (detector diameter) or "L1"."""
    m = lesion.measurements
    if m is not None:
        return f"{lesion.tracking_id} {m.long_axis.length_mm:.1f} x {m.short_axis.length_mm:.1f} mm"
    if lesion.diameter_mm is not None:
        return f"{lesion.tracking_id} {lesion.diameter_mm:.1f} mm"
    return lesion.tracking_id


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ValueError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], text: str, colour: tuple[int, int, int],
           font: ImageFont.FreeTypeFont | ImageFont.ImageFont, size: tuple[int, int]) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 4
    x = min(max(box[0], 0), max(size[0] - tw, 0))
    y = box[1] - th - 2 if box[1] - th - 2 >= 0 else min(box[3] + 2, size[1] - th)
    draw.rectangle((x, y, x + tw, y + th), fill=(0, 0, 0))
    draw.text((x + 2 - left, y + 2 - top), text, fill=colour, font=font)


def _draw_slice(base: Image.Image, fr: _Frame, k: int, focus: Lesion, lesions: list[Lesion]) -> Image.Image:
    img = base.convert("RGB")
    draw = ImageDraw.Draw(img)
    font = _font(max(12, fr.width // 42))
    width = max(2, fr.width // 256)
    for les in sorted(lesions, key=lambda x: x is focus):  # the focus lesion last, on top
        box = box_on_slice(les, k)
        if box is None:
            continue
        colour = FOCUS if les is focus else OTHER
        ob = (box[0] * fr.sx - BOX_MARGIN_PX, box[1] * fr.sy - BOX_MARGIN_PX,
              box[2] * fr.sx + BOX_MARGIN_PX, box[3] * fr.sy + BOX_MARGIN_PX)
        draw.rectangle(ob, outline=colour, width=width if les is focus else max(1, width - 1))
        m = les.measurements
        if m is not None:
            for line, c in ((m.long_axis, LONG_AXIS), (m.short_axis, SHORT_AXIS)):
                if line.k == k:
                    draw.line((line.start[0] * fr.sx, line.start[1] * fr.sy, line.end[0] * fr.sx,
                               line.end[1] * fr.sy), fill=c, width=max(1, width - 1))
        _label(draw, ob, lesion_label(les), colour, font, img.size)
    return img


def _crop(grey: Image.Image, box: Box, size_mm: float, sr: float, sc: float) -> Image.Image:
    """A CROP_PX square centred on ``box``, covering CROP_FACTOR × ``size_mm`` (square in mm)."""
    cols, rows = grey.size
    side_mm = max(CROP_FACTOR * size_mm, CROP_MIN_SRC_PX * min(sr, sc))
    side_mm = min(side_mm, max(cols * sc, rows * sr, CROP_MIN_SRC_PX * min(sr, sc)))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = side_mm / 2 / sc, side_mm / 2 / sr
    extent = (cx - hw, cy - hh, cx + hw, cy + hh)
    img = grey.transform((CROP_PX, CROP_PX), Image.Transform.EXTENT, extent, resample=Image.Resampling.BILINEAR)
    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    fx, fy = CROP_PX / (2 * hw), CROP_PX / (2 * hh)
    draw.rectangle(((box[0] - extent[0]) * fx - BOX_MARGIN_PX, (box[1] - extent[1]) * fy - BOX_MARGIN_PX,
                    (box[2] - extent[0]) * fx + BOX_MARGIN_PX, (box[3] - extent[1]) * fy + BOX_MARGIN_PX),
                   outline=FOCUS, width=2)
    return img


def _size_mm(lesion: Lesion, box: Box, sr: float, sc: float) -> float:
    if lesion.measurements is not None:
        return float(lesion.measurements.long_axis.length_mm)
    return max((box[2] - box[0]) * sc, (box[3] - box[1]) * sr)


def _save(img: Image.Image, path: Path) -> Path:
    try:
        img.save(path, format="PNG", compress_level=3)
    except OSError as exc:
        raise OutputError(f"cannot write key image: {exc.strerror or exc}", path=path) from exc
    return path


def render_key_images(volume: Volume, lesions: list[Lesion], out_dir: str | Path) -> dict[str, dict[str, Path]]:
    """Write each lesion's key slice and crop PNGs into ``out_dir``.

    volume: the series the lesions were found on — pixels (K, R, C) float32 (HU for CT) or
    (K, R, C, 3) uint8 RGB; lesions: their key slice, ``bbox_px`` (xyxy pixels) and, when
    measured, axis lines and mask. Returns tracking_id → {"slice": path, "crop": path}.
    Raises :class:`OutputError` when the folder or a file cannot be written.
    """
    out = Path(out_dir)
    if volume.pixels.ndim not in (3, 4) or 0 in volume.pixels.shape[:3]:
        raise OutputError(f"key images need (K, R, C) pixels, got shape {volume.pixels.shape}", path=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the key image folder: {exc.strerror or exc}", path=out) from exc
    n_slices, rows, cols = volume.pixels.shape[:3]
    sr, sc = _spacing(volume)
    fr = _frame(rows, cols, sr, sc)
    window = _window(volume)
    grey: dict[int, Image.Image] = {}
    scaled: dict[int, Image.Image] = {}
    used: set[str] = set()
    written: dict[str, dict[str, Path]] = {}
    for i, les in enumerate(lesions):
        k = key_slice(les, n_slices)
        if k not in grey:
            grey[k] = _display_slice(volume, k, window)
            scaled[k] = grey[k].resize((fr.width, fr.height), Image.Resampling.BILINEAR)
        box = box_on_slice(les, k) or tuple(float(v) for v in np.asarray(les.bbox_px, dtype=np.float64)[:4])
        stem = _safe_stem(les.tracking_id, i, used)
        slice_img = _draw_slice(scaled[k], fr, k, les, lesions)
        crop_img = _crop(grey[k], box, _size_mm(les, box, sr, sc), sr, sc)  # type: ignore[arg-type]
        written[les.tracking_id] = {"slice": _save(slice_img, out / f"{stem}_slice.png"),
                                    "crop": _save(crop_img, out / f"{stem}_crop.png")}
    return written


__all__ = ["CROP_PX", "SLICE_MAX_PX", "SLICE_MIN_PX", "box_on_slice", "key_slice", "lesion_label",
           "render_key_images"]

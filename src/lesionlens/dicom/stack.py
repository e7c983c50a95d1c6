"""2.5D neighbour-slice stacks and resampling of volumes to a target spacing.

Stacks give a 2D detector the context of neighbouring slices as channels. Offsets are given in
millimetres along the slice axis so that thin (e.g. 0.625 mm) and thick (5 mm) series give
comparable anatomical context: an offset that falls between two slices is linearly interpolated
from them, and positions past the first/last slice are clamped to it.

Arrays: volume pixels ``(K, R, C)`` float32; one stack ``(N, R, C)`` float32 with ``N`` the
number of offsets (channel order = order of the offsets); all stacks ``(K, N, R, C)`` float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lesionlens.dicom.types import Volume
from lesionlens.errors import ConfigError, UnsupportedInputError

__all__ = [
    "neighbour_offsets",
    "neighbour_stack",
    "neighbour_stacks",
    "resample",
    "stack_positions",
]


def neighbour_offsets(n_neighbours: int = 1, step_mm: float | None = None) -> tuple[float, ...]:
    """Symmetric offsets ``(-n·step, …, 0, …, +n·step)``; in slices when ``step_mm`` is None."""
    if n_neighbours < 0:
        raise ConfigError(f"n_neighbours must be >= 0, got {n_neighbours}", code="stack")
    step = 1.0 if step_mm is None else float(step_mm)
    return tuple(i * step for i in range(-n_neighbours, n_neighbours + 1))


def _slice_spacing(volume: Volume) -> float:
    spacing = float(volume.spacing_mm[0])
    if not np.isfinite(spacing) or spacing <= 0:
        raise UnsupportedInputError("the volume has no slice spacing; give offsets in slices instead", code="stack")
    return spacing


def stack_positions(n_slices: int, ks: np.ndarray, offsets_slices: Sequence[float]) -> np.ndarray:
    """Fractional slice positions ``(len(ks), N)`` = ``ks[:, None] + offsets``, clamped to [0, K-1]."""
    pos = np.asarray(ks, dtype=np.float64)[:, None] + np.asarray(offsets_slices, dtype=np.float64)[None, :]
    return np.clip(pos, 0.0, n_slices - 1.0)


def _offsets_in_slices(volume: Volume, offsets_mm: Sequence[float] | None, n_neighbours: int) -> list[float]:
    if offsets_mm is None:
        return list(neighbour_offsets(n_neighbours))
    if len(offsets_mm) == 0:
        raise ConfigError("offsets_mm must not be empty", code="stack")
    spacing = _slice_spacing(volume)
    return [float(o) / spacing for o in offsets_mm]


def _greyscale(volume: Volume) -> np.ndarray:
    if volume.pixels.ndim != 3:
        raise UnsupportedInputError(f"2.5D stacks need a greyscale (K, R, C) volume, got {volume.pixels.shape}")
    return volume.pixels


def neighbour_stack(
    volume: Volume, k: int, offsets_mm: Sequence[float] | None = None, n_neighbours: int = 1
) -> np.ndarray:
    """The 2.5D stack centred on slice ``k``: ``(N, R, C)`` float32.

    offsets_mm: positions along the slice axis relative to slice ``k`` in mm (e.g.
    ``(-5, 0, 5)``); between-slice positions are interpolated linearly, positions past the
    ends clamped. When None, ``k - n_neighbours … k + n_neighbours`` whole slices are used.
    """
    pixels = _greyscale(volume)
    if not 0 <= k < pixels.shape[0]:
        raise ConfigError(f"slice index {k} outside 0..{pixels.shape[0] - 1}", code="stack")
    return neighbour_stacks_at(volume, [k], offsets_mm, n_neighbours)[0]


def neighbour_stacks_at(
    volume: Volume, ks: Sequence[int], offsets_mm: Sequence[float] | None = None, n_neighbours: int = 1
) -> np.ndarray:
    """Stacks for the slices ``ks``: ``(len(ks), N, R, C)`` float32, ``[i] == neighbour_stack(volume,
    ks[i], …)``. Written straight into one array: a whole-slice position is copied, a position
    between slices ``a`` and ``b`` is ``a + t * (b - a)`` in float32, in place (no per-slice
    temporaries) — the predictor's batches, the training stacks and :func:`neighbour_stacks`."""
    pixels = _greyscale(volume)
    kk = np.asarray(ks, dtype=np.int64)
    if kk.size and (kk.min() < 0 or kk.max() >= pixels.shape[0]):
        raise ConfigError(f"slice indices {kk.min()}..{kk.max()} outside 0..{pixels.shape[0] - 1}", code="stack")
    pos = stack_positions(pixels.shape[0], kk, _offsets_in_slices(volume, offsets_mm, n_neighbours))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, pixels.shape[0] - 1)
    t = (pos - lo).astype(np.float32)
    out = np.empty((*pos.shape, *pixels.shape[1:]), np.float32)
    tmp = np.empty(pixels.shape[1:], np.float32)
    for i, j in np.ndindex(*pos.shape):
        a = out[i, j]
        a[...] = pixels[lo[i, j]]
        if t[i, j] != 0:  # a + t * (b - a)
            np.subtract(pixels[hi[i, j]], a, out=tmp)
            tmp *= t[i, j]
            a += tmp
    return out


def neighbour_stacks(
    volume: Volume, offsets_mm: Sequence[float] | None = None, n_neighbours: int = 1
) -> np.ndarray:
    """Stacks for every slice: ``(K, N, R, C)`` float32, ``[k] == neighbour_stack(volume, k, …)``.

    Memory: ``K·N·R·C·4`` bytes (about 0.9 GB for 300 slices × 3 × 512²); iterate
    :func:`neighbour_stack` for very large series.
    """
    return neighbour_stacks_at(volume, range(_greyscale(volume).shape[0]), offsets_mm, n_neighbours)


def resample(volume: Volume, spacing_mm: Sequence[float | None], order: int = 1) -> Volume:
    """Resample a volume to (about) ``spacing_mm`` ``(k, r, c)`` mm; None keeps an axis as is.

    The number of voxels along each axis becomes ``n' = max(1, round(n · s / s_target))`` and the
    spacing ``n · s / n'`` so that the outer faces of the grid — the LPS positions of the physical
    corners — stay where they were (the spacing equals the target when the extent is a multiple
    of it). Interpolation: ``scipy.ndimage.affine_transform`` with spline ``order`` (1 = linear,
    0 = nearest, for label maps) and edge values repeated. Greyscale stays float32; colour
    ``(K, R, C, 3)`` uint8 is resampled per channel. Per-slice lists (UIDs, sources) are kept
    only when the slice count does not change.
    """
    if len(spacing_mm) != 3:
        raise ConfigError(f"spacing_mm needs 3 values (k, r, c), got {len(spacing_mm)}", code="resample")
    old_shape = np.array(volume.pixels.shape[:3])
    old_spacing = volume.spacing_mm
    target = np.array([old_spacing[i] if s is None else float(s) for i, s in enumerate(spacing_mm)])
    if np.any(target <= 0) or np.any(old_spacing <= 0):
        raise ConfigError(f"spacings must be > 0 (target {target.tolist()}, volume {old_spacing.tolist()})",
                          code="resample")
    new_shape = np.maximum(1, np.rint(old_shape * old_spacing / target)).astype(int)
    zoom = old_shape / new_shape  # old index units per new voxel
    shift = -0.5 + 0.5 * zoom  # centre of new voxel 0 in old index coordinates
    if np.all(new_shape == old_shape):
        return dataclasses.replace(volume, pixels=volume.pixels.copy(), affine=volume.affine.copy())

    def _one(channel: np.ndarray) -> np.ndarray:
        return ndimage.affine_transform(channel.astype(np.float32), zoom, offset=shift,
                                        output_shape=tuple(new_shape), order=order, mode="nearest")

    if volume.pixels.ndim == 4:
        chans = [_one(volume.pixels[..., i]) for i in range(volume.pixels.shape[3])]
        pixels = np.clip(np.rint(np.stack(chans, axis=-1)), 0, 255).astype(np.uint8)
    else:
        pixels = _one(volume.pixels).astype(np.float32)
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] * zoom[None, :]
    affine[:3, 3] = volume.affine[:3, :3] @ shift + volume.affine[:3, 3]
    same_k = new_shape[0] == old_shape[0]
    return dataclasses.replace(
        volume,
        pixels=pixels,
        affine=affine,
        sop_instance_uids=list(volume.sop_instance_uids) if same_k else [],
        frame_numbers=list(volume.frame_numbers) if same_k else [],
        sources=list(volume.sources) if same_k else [],
        problems=list(volume.problems),
        metadata={**volume.metadata, "resampled_from_spacing_mm": old_spacing.tolist()},
    )

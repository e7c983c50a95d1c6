"""Volume geometry: sort frames by position, check spacing, build the affine — from headers only.

Frames (single-frame instances, or the frames of a multi-frame object) are sorted by their
distance along the slice normal ``n = row_dir × col_dir`` (ImageOrientationPatient), i.e. by
``n · ImagePositionPatient`` — never by InstanceNumber or file name. Then:

* frames with different matrix sizes, orientations or pixel spacings are split into separate
  stacks (as a viewer would), with a ``"split"`` warning;
* frames at the same position are de-duplicated (the first kept, ``"duplicate-slice"``
  warning), or — when every position repeats the same number of times (multi-phase/echo) —
  split into that many stacks (``"repeated-positions"``);
* a gap of more than 1.5 × the median spacing is a ``"missing-slice"`` warning, other
  irregular spacing is ``"non-uniform-spacing"``;
* a slice step not parallel to the normal (gantry tilt) is a ``"gantry-tilt"`` warning; the
  affine keeps the shear, so ``index_to_lps`` still gives each slice's true position.

The affine follows :mod:`lesionlens.dicom.types`: ``lps = affine @ [k, r, c, 1]``, columns
``slice_step``, ``row_step = col_dir × PixelSpacing[0]``, ``col_step = row_dir ×
PixelSpacing[1]``, origin = ImagePositionPatient of slice 0. Frames without IPP/IOP (plain
CR/DX/US/SC...) get a made-up affine (``has_patient_geometry=False``): identity directions,
pixel spacing (ImagerPixelSpacing, ultrasound regions, or 1 mm) and 1 mm (or the slice
thickness) between frames.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from lesionlens.dicom.io import DEFAULT_LIMITS, ReadLimits, read_header
from lesionlens.dicom.scan import pixel_spacing_of
from lesionlens.dicom.types import InstanceKind, InstanceRecord, Problem, SeriesRecord
from lesionlens.errors import LesionLensError

POSITION_TOL_MM = 0.01
GAP_FACTOR = 1.5
TILT_WARN_DEG = 0.5


@dataclass
class FrameGeom:
    """Header geometry of one frame. ipp: (3,) LPS mm; iop: (6,) row dir then column dir;
    pixel_spacing: (row spacing, column spacing) mm. ``frame_number`` is 1-based."""

    source: str
    sop_instance_uid: str
    frame_number: int
    instance_number: int | None
    rows: int
    columns: int
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None

    @property
    def has_geometry(self) -> bool:
        return self.ipp is not None and self.iop is not None


@dataclass
class StackPlan:
    """One future :class:`~lesionlens.dicom.types.Volume`: its frames in slice order and geometry.

    affine: (4, 4) float64, ``lps = affine @ [k, r, c, 1]``.
    """

    frames: list[FrameGeom]
    affine: np.ndarray
    is_volumetric: bool
    has_patient_geometry: bool
    problems: list[Problem] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        f = self.frames[0]
        return (len(self.frames), f.rows, f.columns)


def _arr(v: object, n: int) -> np.ndarray | None:
    if v is None:
        return None
    try:
        a = np.asarray([float(x) for x in v], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return a if a.shape == (n,) and np.all(np.isfinite(a)) else None


def _item(seq_owner: Dataset | None, kw: str) -> Dataset | None:
    if seq_owner is None:
        return None
    seq = seq_owner.get(kw)
    return seq[0] if seq else None


def frames_from_dataset(ds: Dataset, source: str, rec: InstanceRecord | None = None) -> list[FrameGeom]:
    """Per-frame geometry of a (multi-frame) header: enhanced functional groups (per-frame
    first, then shared), else the top-level attributes for frame 1 only (other frames of a
    multi-frame object without per-frame positions get no patient geometry)."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    top_ipp = _arr(ds.get("ImagePositionPatient"), 3)
    top_iop = _arr(ds.get("ImageOrientationPatient"), 6)
    top_ps = pixel_spacing_of(ds)
    top_th = ds.get("SliceThickness")
    out: list[FrameGeom] = []
    for f in range(n):
        item = per_frame[f] if f < len(per_frame) else None
        pos = _item(item, "PlanePositionSequence") or _item(shared, "PlanePositionSequence")
        ori = _item(item, "PlaneOrientationSequence") or _item(shared, "PlaneOrientationSequence")
        meas = _item(item, "PixelMeasuresSequence") or _item(shared, "PixelMeasuresSequence")
        ipp = _arr(pos.get("ImagePositionPatient"), 3) if pos is not None else None
        iop = _arr(ori.get("ImageOrientationPatient"), 6) if ori is not None else None
        ps_a = _arr(meas.get("PixelSpacing"), 2) if meas is not None else None
        th = meas.get("SliceThickness") if meas is not None else None
        if n == 1:
            ipp = ipp if ipp is not None else top_ipp
            iop = iop if iop is not None else top_iop
        elif ipp is None or iop is None:
            ipp = iop = None  # frames of a plain multi-frame: no per-frame positions
        ps = (float(ps_a[0]), float(ps_a[1])) if ps_a is not None else top_ps
        thick = th if th not in (None, "") else top_th
        out.append(
            FrameGeom(
                source=source,
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                frame_number=f + 1,
                instance_number=rec.instance_number if rec else None,
                rows=rows,
                columns=cols,
                ipp=ipp,
                iop=iop,
                pixel_spacing=ps,
                thickness=float(thick) if thick not in (None, "") else None,
            )
        )
    return out


def frames_from_record(rec: InstanceRecord) -> list[FrameGeom]:
    """Geometry of a single-frame instance straight from its scan record (no file access)."""
    return [
        FrameGeom(
            source=rec.source,
            sop_instance_uid=rec.sop_instance_uid,
            frame_number=1,
            instance_number=rec.instance_number,
            rows=rec.rows,
            columns=rec.columns,
            ipp=_arr(rec.image_position_patient, 3),
            iop=_arr(rec.image_orientation_patient, 6),
            pixel_spacing=rec.pixel_spacing,
            thickness=rec.slice_thickness,
        )
    ]


def series_frames(
    series: SeriesRecord, *, limits: ReadLimits = DEFAULT_LIMITS
) -> tuple[list[FrameGeom], list[Problem]]:
    """Frames of every usable image instance of ``series`` (multi-frame headers are re-read)."""
    frames: list[FrameGeom] = []
    problems: list[Problem] = []
    for rec in series.instances:
        if rec.kind is not InstanceKind.IMAGE or any(p.severity == "error" for p in rec.problems):
            continue
        if rec.frames <= 1:
            frames.extend(frames_from_record(rec))
            continue
        try:
            frames.extend(frames_from_dataset(read_header(rec.source, limits=limits).dataset, rec.source, rec))
        except LesionLensError as exc:
            problems.append(Problem.from_error(exc))
    return frames, problems


def _made_up_affine(f: FrameGeom) -> np.ndarray:
    ps = f.pixel_spacing or (1.0, 1.0)
    aff = np.eye(4)
    aff[:3, 0] = (0.0, 0.0, f.thickness or 1.0)
    aff[:3, 1] = (0.0, ps[0], 0.0)
    aff[:3, 2] = (ps[1], 0.0, 0.0)
    return aff


def _key(f: FrameGeom) -> tuple[object, ...]:
    ps = tuple(round(x, 3) for x in f.pixel_spacing) if f.pixel_spacing else None
    return (f.rows, f.columns, tuple(np.round(f.iop, 3)) if f.iop is not None else None, ps)


def _plan_geometric(frames: list[FrameGeom], label: str) -> list[StackPlan]:
    """Frames sharing size/orientation/spacing → one or more stacks sorted along the normal."""
    iop = frames[0].iop
    assert iop is not None
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    normal = normal / (np.linalg.norm(normal) or 1.0)
    dist = np.array([float(normal @ f.ipp) for f in frames])  # type: ignore[operator]
    order = sorted(range(len(frames)), key=lambda i: (dist[i], frames[i].instance_number or 0, frames[i].frame_number))
    # group frames by position
    groups: list[list[int]] = []
    for i in order:
        if groups and abs(dist[i] - dist[groups[-1][0]]) <= POSITION_TOL_MM:
            groups[-1].append(i)
        else:
            groups.append([i])
    problems: list[Problem] = []
    counts = Counter(len(g) for g in groups)
    if len(counts) == 1 and len(groups) > 1 and next(iter(counts)) > 1 and _distinct_objects(frames, groups):
        n = next(iter(counts))
        problems.append(
            Problem("warning", "repeated-positions", f"{label}: every position holds {n} frames; split into {n} stacks")
        )
        plans = []
        for j in range(n):
            sub = [frames[g[j]] for g in groups]
            p = _plan_sorted(sub, normal, label)
            p.problems[:0] = problems
            plans.append(p)
        return plans
    dups = sum(len(g) - 1 for g in groups)
    if dups:
        same = sum(1 for g in groups for i in g[1:] if frames[i].sop_instance_uid == frames[g[0]].sop_instance_uid)
        problems.append(
            Problem(
                "warning",
                "duplicate-slice",
                f"{label}: {dups} frame(s) at an already used position dropped "
                f"({same} identical SOP instance(s)); first kept",
                frames[groups[0][0]].source if len(groups) == 1 else None,
            )
        )
    plan = _plan_sorted([frames[g[0]] for g in groups], normal, label)
    plan.problems[:0] = problems
    return [plan]


def _distinct_objects(frames: list[FrameGeom], groups: list[list[int]]) -> bool:
    return all(len({(frames[i].sop_instance_uid, frames[i].frame_number) for i in g}) == len(g) for g in groups) and any(
        len({frames[i].sop_instance_uid for i in g}) == 1 for g in groups
    )


def _plan_sorted(frames: list[FrameGeom], normal: np.ndarray, label: str) -> StackPlan:
    """Frames already sorted by position (distinct positions) → affine and spacing checks."""
    f0 = frames[0]
    assert f0.iop is not None and f0.ipp is not None
    ps = f0.pixel_spacing
    problems: list[Problem] = []
    if ps is None:
        problems.append(Problem("warning", "no-pixel-spacing", f"{label}: no pixel spacing; 1 mm assumed"))
        ps = (1.0, 1.0)
    aff = np.eye(4)
    aff[:3, 1] = f0.iop[3:] * ps[0]
    aff[:3, 2] = f0.iop[:3] * ps[1]
    aff[:3, 3] = f0.ipp
    k = len(frames)
    volumetric = k >= 2
    if k == 1:
        aff[:3, 0] = normal * (f0.thickness or 1.0)
    else:
        ipps = np.stack([f.ipp for f in frames])  # type: ignore[arg-type, misc]
        d = np.diff(ipps @ normal)
        med = float(np.median(d))
        gaps = d > GAP_FACTOR * med
        span = ipps[-1] - ipps[0]
        aff[:3, 0] = span / (k - 1)
        if gaps.any():
            steps_total = float(span @ normal) / med
            aff[:3, 0] = span / steps_total
            missing = int(round(float(np.sum(d[gaps] / med - 1))))
            volumetric = False
            problems.append(
                Problem(
                    "warning",
                    "missing-slice",
                    f"{label}: {int(gaps.sum())} gap(s) larger than {GAP_FACTOR}× the median spacing "
                    f"{med:.3g} mm (about {max(missing, 1)} slice(s) missing); the affine uses the median spacing",
                )
            )
        elif np.max(np.abs(d - med)) > max(0.01 * med, POSITION_TOL_MM):
            volumetric = False
            problems.append(
                Problem(
                    "warning",
                    "non-uniform-spacing",
                    f"{label}: slice spacing varies from {d.min():.3g} to {d.max():.3g} mm; the affine uses the mean",
                )
            )
        step = aff[:3, 0]
        cosang = abs(float(step @ normal)) / (np.linalg.norm(step) or 1.0)
        tilt = float(np.degrees(np.arccos(min(1.0, cosang))))
        if tilt > TILT_WARN_DEG:
            problems.append(
                Problem(
                    "warning",
                    "gantry-tilt",
                    f"{label}: slices are sheared by {tilt:.1f}° (gantry tilt); the affine keeps the shear",
                )
            )
    return StackPlan(frames, aff, volumetric, True, problems)


def plan_stacks(frames: list[FrameGeom], *, label: str = "series") -> list[StackPlan]:
    """Split frames into stacks and compute each stack's affine and warnings (header-only)."""
    plans: list[StackPlan] = []
    geo = [f for f in frames if f.has_geometry]
    flat = [f for f in frames if not f.has_geometry]
    buckets: dict[tuple[object, ...], list[FrameGeom]] = {}
    for f in geo:
        buckets.setdefault(_key(f), []).append(f)
    split_note: Problem | None = None
    if len(buckets) > 1:
        desc = "; ".join(f"{len(v)} frame(s) {k[0]}×{k[1]}" for k, v in buckets.items())
        split_note = Problem(
            "warning", "split", f"{label}: mixed matrix sizes/orientations/spacings; split into {len(buckets)} stacks ({desc})"
        )
    for group in buckets.values():
        for p in _plan_geometric(group, label):
            if split_note is not None:
                p.problems.insert(0, split_note)
            plans.append(p)
    by_source: dict[str, list[FrameGeom]] = {}
    for f in flat:
        by_source.setdefault(f.source, []).append(f)
    for src_frames in by_source.values():
        src_frames.sort(key=lambda f: f.frame_number)
        probs = []
        if src_frames[0].pixel_spacing is None:
            probs.append(Problem("warning", "no-pixel-spacing", "no pixel spacing; 1 mm assumed", src_frames[0].source))
        plans.append(StackPlan(src_frames, _made_up_affine(src_frames[0]), False, False, probs))
    return plans


def plan_series(series: SeriesRecord, *, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[list[StackPlan], list[Problem]]:
    """Header-only geometry of a series: the stacks it would load as, and problems met."""
    frames, problems = series_frames(series, limits=limits)
    label = f"series {series.series_number}" if series.series_number is not None else "series"
    return plan_stacks(frames, label=label), problems


__all__ = [
    "FrameGeom",
    "StackPlan",
    "frames_from_dataset",
    "frames_from_record",
    "plan_series",
    "plan_stacks",
    "series_frames",
]

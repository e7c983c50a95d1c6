"""Study-level ingest: scan → select → load. The one entry point is :func:`read_study`.

One bad file never stops the rest: it becomes a :class:`~lesionlens.dicom.types.Problem` on
the catalog (unreadable / not DICOM), the series (header problems) or the volume (pixel decode
failures), and every other file still loads.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lesionlens.dicom.assemble import StackPlan, plan_series, plan_stacks
from lesionlens.dicom.io import (
    DEFAULT_LIMITS,
    HeaderRead,
    ReadLimits,
    parse_bytes,
    read_source_bytes,
    split_source,
)
from lesionlens.dicom.scan import Inputs, scan, scan_with_headers
from lesionlens.dicom.select import SelectionRules, select_series
from lesionlens.dicom.types import Catalog, DisplayInfo, Problem, SeriesRecord, Volume
from lesionlens.errors import LesionLensError

_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_META_KEYWORDS = ("Manufacturer", "ManufacturerModelName", "BodyPartExamined", "ConvolutionKernel", "KVP",
                  "PatientSex", "PatientAge", "AccessionNumber", "InstitutionName", "SeriesDate", "ContrastBolusAgent")


@dataclass
class StudyResult:
    """What :func:`read_study` found and loaded.

    catalog: everything scanned, each series marked selected or not (with a reason).
    volumes: the loaded volumes of the selected series (a series may give several).
    problems: every warning/error met (catalog, series and volume problems together).
    """

    catalog: Catalog
    volumes: list[Volume] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Decoded:
    """One decoded source. pixels: (F, R, C) float32 physical values or (F, R, C, 3) uint8 RGB."""

    source: str
    pixels: np.ndarray | None
    display: DisplayInfo | None = None
    metadata: dict[str, object] = field(default_factory=dict)
    problem: Problem | None = None


@dataclass(frozen=True)
class _Native:
    dtype: np.dtype
    shape: tuple[int, int, int]
    stored: int
    signed: bool
    slope: float
    inter: float


def _native_params(hr: HeaderRead) -> _Native | None:
    """How to read uncompressed little-endian greyscale pixels straight with numpy, or None
    (compressed, colour, Modality LUT, functional groups...: use ``decode_pixels``)."""
    ds, px = hr.dataset, hr.pixel
    if px is None or px.length is None or px.keyword != "PixelData":
        return None
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts not in _NATIVE_LE:
        return None
    if "ModalityLUTSequence" in ds or "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        alloc, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        has_rescale = "RescaleSlope" in ds and "RescaleIntercept" in ds
        slope = float(ds.RescaleSlope) if has_rescale else 1.0
        inter = float(ds.RescaleIntercept) if has_rescale else 0.0
    except (AttributeError, TypeError, ValueError):
        return None
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2") or alloc not in (8, 16, 32):
        return None
    if not 0 < stored <= alloc or rows <= 0 or cols <= 0 or frames <= 0:
        return None
    if px.length < rows * cols * frames * alloc // 8:
        return None  # let decode_pixels report the short pixel data
    dtype = np.dtype(f"<{'i' if signed else 'u'}{alloc // 8}")
    return _Native(dtype, (frames, rows, cols), stored, signed, slope, inter)


def _physical(raw: np.ndarray, p: _Native) -> np.ndarray:
    """raw: flat stored values → (F, R, C) float32 physical values (bit mask/sign, rescale)."""
    arr = raw.reshape(p.shape)
    alloc = p.dtype.itemsize * 8
    if p.stored < alloc:
        shift = alloc - p.stored
        arr = (arr << shift) >> shift if p.signed else arr & ((1 << p.stored) - 1)
    if p.slope == 1.0 and p.inter.is_integer() and alloc <= 16:
        out = arr.astype(np.float32)  # exact in float32
        if p.inter:
            out += np.float32(p.inter)
        return out
    return (arr.astype(np.float64) * p.slope + p.inter).astype(np.float32)


def _decoded(source: str, ds: Dataset, arr: np.ndarray) -> Decoded:
    from lesionlens.dicom.pixels import display_info

    meta = {kw: _plain(ds.get(kw)) for kw in _META_KEYWORDS if kw in ds}
    return Decoded(source, arr, display_info(ds), meta)


def decode_cached(source: str, hr: HeaderRead, limits: ReadLimits = DEFAULT_LIMITS) -> Decoded:
    """Decode a plain file whose header a scan already parsed: for native pixels only the pixel
    bytes are read (``np.fromfile`` at the recorded offset); anything else → :func:`decode_source`."""
    p = _native_params(hr)
    if p is None or hr.pixel is None or split_source(source)[1] is not None:
        return decode_source(source, limits)
    count = p.shape[0] * p.shape[1] * p.shape[2]
    try:
        with open(source, "rb") as fh:
            fh.seek(hr.pixel.offset)
            raw = np.fromfile(fh, dtype=p.dtype, count=count)
        if raw.size != count:
            return decode_source(source, limits)  # file changed since the scan: full path reports it
        return _decoded(source, hr.dataset, _physical(raw, p))
    except OSError:
        return decode_source(source, limits)


def decode_source(source: str, limits: ReadLimits = DEFAULT_LIMITS) -> Decoded:
    """Read and decode every frame of one source; failures come back as ``Decoded.problem``.

    One read of the file; uncompressed little-endian greyscale takes a numpy fast path, the rest
    goes through :func:`lesionlens.dicom.pixels.decode_pixels`.
    """
    from lesionlens.dicom.pixels import decode_pixels

    try:
        data = read_source_bytes(source, limits)
        hr = parse_bytes(data, source, stop_before_pixels=True, limits=limits)
        ds: Dataset = hr.dataset
        p = _native_params(hr)
        if p is not None and hr.pixel is not None and hr.buffer is not None:
            count = p.shape[0] * p.shape[1] * p.shape[2]
            arr = _physical(np.frombuffer(hr.buffer, dtype=p.dtype, count=count, offset=hr.pixel.offset), p)
        else:
            full = parse_bytes(hr.buffer if hr.buffer is not None else data, source, limits=limits).dataset
            if hr.buffer is not data:  # inflated: the re-parse saw plain Explicit VR LE bytes
                full.file_meta = ds.file_meta
            arr = decode_pixels(full, source)
        return _decoded(source, ds, arr)
    except LesionLensError as exc:
        return Decoded(source, None, problem=Problem.from_error(exc, path=source))
    except Exception as exc:  # a codec bug must not stop the study
        return Decoded(source, None, problem=Problem("error", "pixel-decode", f"{type(exc).__name__}: {exc}", source))


def _plain(v: object) -> object:
    if v is None or isinstance(v, (int, float, str)):
        return v
    try:
        return str(v)
    except Exception:  # pragma: no cover
        return None


def _executor(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _decode_all(
    sources: list[str], workers: int, limits: ReadLimits, headers: dict[str, HeaderRead] | None = None
) -> Iterator[Decoded]:
    pool = _executor(min(workers, len(sources)))
    if pool is None:
        for s in sources:
            hr = headers.get(s) if headers else None
            yield decode_cached(s, hr, limits) if hr is not None else decode_source(s, limits)
        return
    with pool:
        chunk = max(1, min(16, len(sources) // (4 * workers) or 1))
        yield from pool.map(decode_source, sources, [limits] * len(sources), chunksize=chunk)


def _volume_from(plan: StackPlan, series: SeriesRecord, decoded: dict[str, Decoded]) -> tuple[Volume | None, list[Problem]]:
    problems = list(plan.problems)
    ok = [f for f in plan.frames if decoded[f.source].pixels is not None]
    if not ok:
        return None, problems
    if len(ok) < len(plan.frames):
        # re-plan without the failed frames so geometry warnings (gaps) stay true
        replanned = plan_stacks(ok)
        plan = replanned[0] if plan.has_patient_geometry and len(replanned) == 1 else StackPlan(
            ok, plan.affine, False, plan.has_patient_geometry, []
        )
        problems = [p for p in plan.problems] + [p for p in problems if p.code not in {q.code for q in plan.problems}]
    first = decoded[ok[0].source].pixels
    assert first is not None
    shape = (len(ok),) + first.shape[1:]
    pixels = np.empty(shape, dtype=first.dtype)
    for k, f in enumerate(ok):
        arr = decoded[f.source].pixels
        assert arr is not None
        frame = arr[f.frame_number - 1]
        if frame.shape != shape[1:]:
            problems.append(
                Problem("error", "pixel-shape", f"decoded frame {frame.shape} does not match {shape[1:]}", f.source)
            )
            return None, problems
        pixels[k] = frame
    recs = {r.source: r for r in series.instances}
    r0 = recs.get(ok[0].source)
    d0 = decoded[ok[0].source]
    meta: dict[str, object] = {
        "patient_id": r0.patient_id if r0 else "",
        "patient_name": r0.patient_name if r0 else "",
        "study_date": r0.study_date if r0 else "",
        "study_description": r0.study_description if r0 else "",
        "series_description": series.description,
        "series_number": series.series_number,
        "slice_thickness": ok[0].thickness,
        "pixel_spacing": list(ok[0].pixel_spacing) if ok[0].pixel_spacing else None,
        "sop_class_uid": r0.sop_class_uid if r0 else "",
        "image_type": list(r0.image_type) if r0 else [],
        "transfer_syntax_uid": r0.transfer_syntax_uid if r0 else "",
    }
    meta.update({k.lower() if k != "KVP" else "kvp": v for k, v in d0.metadata.items()})
    vol = Volume(
        pixels=pixels,
        affine=plan.affine.copy(),
        modality=series.modality,
        study_instance_uid=r0.study_instance_uid if r0 else "",
        series_instance_uid=series.series_instance_uid,
        frame_of_reference_uid=r0.frame_of_reference_uid if r0 else "",
        sop_instance_uids=[f.sop_instance_uid for f in ok],
        frame_numbers=[f.frame_number for f in ok],
        sources=[f.source for f in ok],
        display=d0.display or DisplayInfo(),
        is_volumetric=plan.is_volumetric,
        has_patient_geometry=plan.has_patient_geometry,
        problems=problems,
        metadata=meta,
    )
    return vol, problems


def load_series(
    series: SeriesRecord, *, workers: int = 1, limits: ReadLimits | None = None
) -> list[Volume]:
    """Decode a series into one or more volumes (split by size/orientation/repeated positions).

    workers: processes used to decode (1 = in this process). Files that fail to decode are left
    out and recorded as error problems on the volume; geometry is recomputed without them.
    Raises :class:`~lesionlens.errors.SeriesAssemblyError` only when nothing at all could be loaded.
    """
    return _load(series, workers, limits or DEFAULT_LIMITS, None)


def _load(series: SeriesRecord, workers: int, limits: ReadLimits, headers: dict[str, HeaderRead] | None) -> list[Volume]:
    from lesionlens.errors import SeriesAssemblyError

    plans, problems = plan_series(series, limits=limits)
    problems = [p for p in series.problems] + problems
    sources = list(dict.fromkeys(f.source for p in plans for f in p.frames))
    decoded = {d.source: d for d in _decode_all(sources, workers, limits, headers)}
    failures = [d.problem for d in decoded.values() if d.problem is not None]
    volumes: list[Volume] = []
    for plan in plans:
        vol, _ = _volume_from(plan, series, decoded)
        if vol is not None:
            mine = {f.source for f in plan.frames}
            vol.problems[:0] = problems
            vol.problems.extend(p for p in failures if p.path in mine)
            volumes.append(vol)
    if not volumes:
        detail = "; ".join(str(p) for p in (problems + failures)[:3]) or "no image instances"
        raise SeriesAssemblyError(
            f"series {series.series_number} ({series.series_instance_uid}) has no loadable images: {detail}",
            path=series.instances[0].source if series.instances else None,
        )
    return volumes


def read_study(
    inputs: Inputs,
    *,
    rules: SelectionRules | None = None,
    workers: int = 1,
    limits: ReadLimits | None = None,
) -> StudyResult:
    """Scan ``inputs`` (file, folder, zip, or a list of them), select series, load them.

    Raises only when the input itself is unusable (e.g. the one path given does not exist);
    everything else is collected into ``StudyResult.problems``.
    """
    limits = limits or DEFAULT_LIMITS
    catalog, headers = scan_with_headers(inputs, limits=limits)
    selected = select_series(catalog, rules)
    result = StudyResult(catalog=catalog, problems=list(catalog.problems))
    for se in catalog.series:
        if not se.selected:
            result.problems.extend(se.problems)
    for se in selected:
        try:
            vols = _load(se, workers, limits, headers)
        except LesionLensError as exc:
            result.problems.extend(se.problems)
            result.problems.append(Problem.from_error(exc))
            continue
        result.volumes.extend(vols)
        seen: set[Problem] = set()
        for v in vols:
            for p in v.problems:
                if p not in seen:
                    seen.add(p)
                    result.problems.append(p)
    return result


def default_workers() -> int:
    """A sensible decode worker count: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        n = os.cpu_count() or 1
    return max(1, min(8, n))


__all__ = ["Decoded", "StudyResult", "decode_source", "default_workers", "load_series", "read_study", "scan", "select_series"]

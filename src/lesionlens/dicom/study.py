"""Study-level ingest: scan → select → load. The one entry point is :func:`read_study`.

One bad file never stops the rest: it becomes a :class:`~lesionlens.dicom.types.Problem` on
the catalog (unreadable / not DICOM), the series (header problems) or the volume (pixel decode
failures), and every other file still loads.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import multiprocessing
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lesionlens.dicom.assemble import FrameGeom, StackPlan, plan_series, plan_stacks
from lesionlens.dicom.io import (
    DEFAULT_LIMITS,
    HeaderRead,
    ReadLimits,
    parse_bytes,
    read_header,
    read_source_bytes,
)
from lesionlens.dicom.scan import (
    Inputs,
    _Raw,
    _Slow,
    build_catalog,
    iter_sources,
    scan,
    scan_source_header,
)
from lesionlens.dicom.select import SelectionRules, select_series
from lesionlens.dicom.types import (
    Catalog,
    DisplayInfo,
    InstanceKind,
    InstanceRecord,
    Problem,
    SeriesRecord,
    Volume,
)
from lesionlens.errors import LesionLensError

Workers = int | Literal["auto"]
#: ``workers="auto"`` starts a process pool only for at least this many files.
AUTO_POOL_MIN_FILES = 64

_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_META_KEYWORDS = ("Manufacturer", "ManufacturerModelName", "BodyPartExamined", "ConvolutionKernel", "KVP",
                  "PatientSex", "PatientAge", "AccessionNumber", "InstitutionName", "SeriesDate", "ContrastBolusAgent")


@dataclass
class StudyRead:
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
    """How to read one file's uncompressed little-endian greyscale pixels with numpy.

    offset: byte offset of the pixel values in the file; shape: (F, R, C)."""

    dtype: np.dtype
    shape: tuple[int, int, int]
    stored: int
    signed: bool
    slope: float
    inter: float
    offset: int = 0


def _native_check(
    hr: HeaderRead, ts: object, rows: int, cols: int, frames: int, spp: int, alloc: int, stored: int,
    signed: bool, photometric: str, slope: float, inter: float,
) -> _Native | None:
    px = hr.pixel
    assert px is not None and px.length is not None
    if ts not in _NATIVE_LE:
        return None
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2") or alloc not in (8, 16, 32):
        return None
    if not 0 < stored <= alloc or rows <= 0 or cols <= 0 or frames <= 0:
        return None
    if px.length < rows * cols * frames * alloc // 8:
        return None  # let decode_pixels report the short pixel data
    dtype = np.dtype(f"<{'i' if signed else 'u'}{alloc // 8}")
    return _Native(dtype, (frames, rows, cols), stored, signed, slope, inter, px.offset)


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
    return _native_check(hr, ts, rows, cols, frames, spp, alloc, stored, signed, photometric, slope, inter)


_TAGS = {k: int(tag_for_keyword(k) or 0) for k in (
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence",
)}


def _native_fast(hr: HeaderRead) -> _Native | None:
    """:func:`_native_params` from raw element bytes (no pydicom value conversion) when the
    values are plain; otherwise :func:`_native_params` itself. Same result either way."""
    ds, px, t = hr.dataset, hr.pixel, _TAGS
    if px is None or px.length is None or px.keyword != "PixelData":
        return None
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts not in _NATIVE_LE:
        return None
    try:
        r = _Raw(ds)  # refuses datasets with functional groups
        if t["ModalityLUTSequence"] in r.elems:
            return None
        rows, cols, alloc = r.ushort(t["Rows"]), r.ushort(t["Columns"]), r.ushort(t["BitsAllocated"])
        if rows is None or cols is None or alloc is None:
            return None
        stored = r.ushort(t["BitsStored"])
        slope_v, inter_v = r.floats(t["RescaleSlope"], 1), r.floats(t["RescaleIntercept"], 1)
        has_rescale = t["RescaleSlope"] in r.elems and t["RescaleIntercept"] in r.elems
        if has_rescale and (slope_v is None or inter_v is None):
            return None
        return _native_check(
            hr, ts, rows, cols, r.integer(t["NumberOfFrames"]) or 1, r.ushort(t["SamplesPerPixel"]) or 1, alloc,
            alloc if stored is None else stored, (r.ushort(t["PixelRepresentation"]) or 0) == 1,
            r.text(t["PhotometricInterpretation"], "CS").upper(),
            slope_v[0] if has_rescale and slope_v else 1.0, inter_v[0] if has_rescale and inter_v else 0.0,
        )
    except _Slow:
        return _native_params(hr)


def _to_physical(raw: np.ndarray, p: _Native, out: np.ndarray) -> None:
    """raw: stored values (any shape with ``out.size`` items) → ``out`` float32 physical values,
    in place (bit mask/sign, rescale); bit-identical to ``(raw * slope + inter).astype(float32)``
    computed in float64."""
    arr = raw.reshape(out.shape)
    alloc = p.dtype.itemsize * 8
    if p.stored < alloc:
        shift = alloc - p.stored
        arr = (arr << shift) >> shift if p.signed else arr & ((1 << p.stored) - 1)
    if p.slope == 1.0 and p.inter.is_integer() and alloc <= 16:
        np.copyto(out, arr, casting="unsafe")  # exact in float32
        if p.inter:
            out += np.float32(p.inter)
        return
    tmp = np.multiply(arr, p.slope, dtype=np.float64)
    tmp += p.inter
    np.copyto(out, tmp, casting="same_kind")


def _physical(raw: np.ndarray, p: _Native) -> np.ndarray:
    """raw: flat stored values → (F, R, C) float32 physical values (bit mask/sign, rescale)."""
    out = np.empty(p.shape, dtype=np.float32)
    _to_physical(raw, p, out)
    return out


def _decoded(source: str, ds: Dataset, arr: np.ndarray) -> Decoded:
    from lesionlens.dicom.pixels import display_info

    meta = {kw: _plain(ds.get(kw)) for kw in _META_KEYWORDS if kw in ds}
    return Decoded(source, arr, display_info(ds), meta)


def _read_decode(source: str, limits: ReadLimits, out: np.ndarray | None = None) -> tuple[Dataset, np.ndarray | None]:
    """One read of ``source``, decoded. Native greyscale pixels are converted with numpy,
    straight into ``out`` when given (an (R, C) float32 slot for a single-frame file: returns
    ``(header, None)``); the rest goes through :func:`lesionlens.dicom.pixels.decode_pixels`.
    Raises LesionLensError (or a codec's own exception)."""
    from lesionlens.dicom.pixels import decode_pixels

    data = read_source_bytes(source, limits)
    hr = parse_bytes(data, source, stop_before_pixels=True, limits=limits)
    ds: Dataset = hr.dataset
    p = _native_fast(hr)
    if p is not None and hr.pixel is not None and hr.buffer is not None:
        count = p.shape[0] * p.shape[1] * p.shape[2]
        raw = np.frombuffer(hr.buffer, dtype=p.dtype, count=count, offset=hr.pixel.offset)
        if out is not None and p.shape == (1,) + out.shape:
            _to_physical(raw, p, out)
            return ds, None
        return ds, _physical(raw, p)
    full = parse_bytes(hr.buffer if hr.buffer is not None else data, source, limits=limits).dataset
    if hr.buffer is not data:  # inflated: the re-parse saw plain Explicit VR LE bytes
        full.file_meta = ds.file_meta
    return ds, decode_pixels(full, source)


def decode_source(source: str, limits: ReadLimits = DEFAULT_LIMITS) -> Decoded:
    """Read and decode every frame of one source; failures come back as ``Decoded.problem``.

    One read of the file; uncompressed little-endian greyscale takes a numpy fast path, the rest
    goes through :func:`lesionlens.dicom.pixels.decode_pixels`.
    """
    try:
        ds, arr = _read_decode(source, limits)
        return _decoded(source, ds, arr)  # type: ignore[arg-type]
    except LesionLensError as exc:
        return Decoded(source, None, problem=Problem.from_error(exc, path=source))
    except Exception as exc:  # noqa: BLE001 - a codec bug must not stop the study
        return Decoded(source, None, problem=Problem("error", "pixel-decode", f"{type(exc).__name__}: {exc}", source))


def _decode_into(source: str, native: _Native | None, out: np.ndarray, limits: ReadLimits) -> Problem | None:
    """Decode a single-frame greyscale source into ``out`` ((R, C) float32); never raises.

    With ``native`` (from the scan) only the pixel bytes are read, into a scratch buffer at the
    recorded offset; a file that changed since (short read) takes the full path, which reports it.
    """
    if native is not None and native.shape == (1,) + out.shape:
        try:
            raw = np.empty(out.size, dtype=native.dtype)
            with open(source, "rb") as fh:
                fh.seek(native.offset)
                got = fh.readinto(raw)  # type: ignore[arg-type]
            if got == raw.nbytes:
                _to_physical(raw, native, out)
                return None
        except OSError:
            pass
    try:
        _, arr = _read_decode(source, limits, out)
        if arr is not None:
            if arr.shape != (1,) + out.shape or arr.dtype != out.dtype:
                return Problem("error", "pixel-shape", f"decoded {arr.shape} {arr.dtype} does not match {out.shape}", source)
            out[...] = arr[0]
        return None
    except LesionLensError as exc:
        return Problem.from_error(exc, path=source)
    except Exception as exc:  # noqa: BLE001 - a codec bug must not stop the study
        return Problem("error", "pixel-decode", f"{type(exc).__name__}: {exc}", source)


def _plain(v: object) -> object:
    if v is None or isinstance(v, (int, float, str)):
        return v
    try:
        return str(v)
    except Exception:  # pragma: no cover
        return None


# --------------------------------------------------------------------------------------------
# worker processes


def _mp_context() -> multiprocessing.context.BaseContext:
    """``fork`` (cheapest start) on Linux while this process runs one thread; with other
    threads alive fork is unsafe (a lock held by another thread stays held in the child), so
    ``forkserver``; ``spawn`` elsewhere."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    return multiprocessing.get_context("spawn")


def _executor(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())


def _resolve_workers(workers: Workers, n_files: int) -> int:
    """Processes to use for ``n_files``: ``"auto"`` → the idle CPUs (:func:`idle_workers`), but
    1 (in this process) below :data:`AUTO_POOL_MIN_FILES` files; an int is taken as given."""
    if workers == "auto":
        return idle_workers() if n_files >= AUTO_POOL_MIN_FILES else 1
    return max(1, min(int(workers), n_files))


def idle_workers() -> int:
    """:func:`default_workers` less the CPUs other processes keep busy (1-minute load average,
    counting this process as one of them). On a machine already saturated by other jobs a pool
    only adds overhead (measured: 0.86× in-process with 2 workers on 2 busy cores), so 1."""
    n = default_workers()
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - not on every platform
        return n
    return max(1, min(n, int(n - load + 1.5)))


def _chunks(items: list, workers: int) -> list[list]:  # type: ignore[type-arg]
    """About four chunks per worker (load balance) of consecutive items."""
    size = max(1, math.ceil(len(items) / (4 * workers)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _scan_chunk(sources: list[str], limits: ReadLimits) -> list[tuple[InstanceRecord, _Native | None]]:
    """Scan sources (in a worker or here): each record, and for plain single-file native
    greyscale images where the pixel bytes are (so loading reads only those)."""
    out: list[tuple[InstanceRecord, _Native | None]] = []
    for src in sources:
        rec, hr = scan_source_header(src, limits)
        native = None
        if hr is not None and rec.kind is InstanceKind.IMAGE and not rec.problems and hr.offsets_in_file:
            try:
                native = _native_fast(hr)
            except Exception:  # noqa: BLE001  # pragma: no cover - a layout bug only costs the fast path
                native = None
        out.append((rec, native))
    return out


def _scan_all(
    sources: list[str], pool: Executor | None, workers: int, limits: ReadLimits
) -> list[tuple[InstanceRecord, _Native | None]]:
    if pool is None:
        return _scan_chunk(sources, limits)
    chunks = _chunks(sources, workers)
    futures = [pool.submit(_scan_chunk, c, limits) for c in chunks]
    out: list[tuple[InstanceRecord, _Native | None]] = []
    for chunk, fut in zip(chunks, futures):
        try:
            out.extend(fut.result())
        except Exception as exc:  # noqa: BLE001 - a worker died (a crashing library): its files are unreadable
            for src in chunk:
                rec = InstanceRecord(source=src, kind=InstanceKind.UNREADABLE, reason=f"scan worker failed: {exc!r}")
                rec.problems.append(Problem("error", "worker-failed", rec.reason, src))
                out.append((rec, None))
    return out


_FillItem = tuple[int, str, _Native | None]  # (slot, source, native layout or None)


def _fill_items(out: np.ndarray, items: list[_FillItem], limits: ReadLimits) -> list[tuple[int, Problem]]:
    """Decode each item into ``out[slot]``; the problems of those that failed."""
    failed: list[tuple[int, Problem]] = []
    for slot, src, native in items:
        prob = _decode_into(src, native, out[slot], limits)
        if prob is not None:
            failed.append((slot, prob))
    return failed


def _fill_shared(path: str, shape: tuple[int, ...], items: list[_FillItem], limits: ReadLimits) -> list[tuple[int, Problem]]:
    """Worker side: map the shared volume file and decode ``items`` into it."""
    with open(path, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
        vol = np.frombuffer(mm, dtype=np.float32).reshape(shape)  # type: ignore[call-overload]
        try:
            return _fill_items(vol, items, limits)
        finally:
            del vol  # release the buffer before the map closes


def _shared_dir(nbytes: int) -> str | None:
    """A folder (RAM-backed when possible) with room for a shared volume of ``nbytes``."""
    for d in ("/dev/shm", tempfile.gettempdir()):
        try:
            st = os.statvfs(d)
        except (OSError, AttributeError):
            continue
        if st.f_bavail * st.f_frsize > nbytes * 1.2 + (64 << 20):
            return d
    return None


def _fill_volume(
    shape: tuple[int, int, int], items: list[_FillItem], pool: Executor | None, workers: int, limits: ReadLimits
) -> tuple[np.ndarray, list[tuple[int, Problem]]]:
    """A (K, R, C) float32 volume with ``items`` decoded into their slots, and the failures.

    With a pool and compressed files, the volume is a shared file mapping (``/dev/shm``) the
    workers write into, chunk by chunk; the file is unlinked as soon as they are done (the
    mapping lives on with the array). Otherwise (no pool, only uncompressed files whose pixel
    offsets the scan recorded, or no room for the mapping) it is filled in this process.
    """
    nbytes = int(np.prod(shape)) * 4
    # uncompressed files cost a read and a conversion each (less than shipping them back from
    # a worker): only compressed data is worth decoding in other processes
    compressed = any(native is None for _, _, native in items)
    folder = _shared_dir(nbytes) if pool is not None and compressed and len(items) > 1 and nbytes else None
    if pool is None or folder is None:
        vol = np.empty(shape, dtype=np.float32)
        return vol, _fill_items(vol, items, limits)
    fd, path = tempfile.mkstemp(prefix="lesionlens-vol-", dir=folder)
    try:
        with os.fdopen(fd, "r+b") as fh:
            fh.truncate(nbytes)
            chunks = _chunks(items, workers)
            futures = [pool.submit(_fill_shared, path, shape, c, limits) for c in chunks]
            failed: list[tuple[int, Problem]] = []
            for chunk, fut in zip(chunks, futures):
                try:
                    failed.extend(fut.result())
                except Exception as exc:  # noqa: BLE001 - a worker died: its slices fail, no crash
                    failed.extend(
                        (slot, Problem("error", "worker-failed", f"decode worker failed: {exc!r}", src))
                        for slot, src, _ in chunk
                    )
            # mapped once the workers are done; MAP_POPULATE maps every page in one go
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mm = mmap.mmap(fh.fileno(), nbytes, flags=flags)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # the mapping stays valid; memory is freed with the array
    return np.frombuffer(mm, dtype=np.float32).reshape(shape), failed


# --------------------------------------------------------------------------------------------
# series → volumes


def _is_plain_greyscale(rec: InstanceRecord | None) -> bool:
    return (
        rec is not None
        and rec.frames <= 1
        and rec.samples_per_pixel == 1
        and rec.photometric_interpretation in ("MONOCHROME1", "MONOCHROME2")
    )


def _header_info(source: str, limits: ReadLimits) -> tuple[DisplayInfo | None, dict[str, object]]:
    """Display info and metadata of the first slice of a volume (one header read)."""
    from lesionlens.dicom.pixels import display_info

    try:
        ds = read_header(source, limits=limits).dataset
    except LesionLensError:
        return None, {}
    return display_info(ds), {kw: _plain(ds.get(kw)) for kw in _META_KEYWORDS if kw in ds}


def _direct_volume(
    plan: StackPlan, series: SeriesRecord, natives: dict[str, _Native], pool: Executor | None, workers: int,
    limits: ReadLimits,
) -> tuple[Volume | None, list[Problem]]:
    """A plan of single-frame greyscale files decoded straight into its preallocated volume."""
    f0 = plan.frames[0]
    shape = (len(plan.frames), f0.rows, f0.columns)
    items = [(k, f.source, natives.get(f.source)) for k, f in enumerate(plan.frames)]
    pixels, failed = _fill_volume(shape, items, pool, workers, limits)
    failures = [p for _, p in sorted(failed, key=lambda x: x[0])]
    bad = {slot for slot, _ in failed}
    ok = [f for k, f in enumerate(plan.frames) if k not in bad]
    if not ok:
        return None, failures
    if bad:
        pixels = pixels[[k for k in range(len(plan.frames)) if k not in bad]]
    display, meta = _header_info(ok[0].source, limits)
    vol, _ = _make_volume(plan, ok, pixels, series, display, meta)
    return vol, failures


def _make_volume(
    plan: StackPlan, ok: list[FrameGeom], pixels: np.ndarray, series: SeriesRecord, display: DisplayInfo | None,
    metadata: dict[str, object],
) -> tuple[Volume, list[Problem]]:
    """The :class:`Volume` of ``plan`` from the frames that decoded (``ok``, in slice order)."""
    problems = list(plan.problems)
    if len(ok) < len(plan.frames):
        # re-plan without the failed frames so geometry warnings (gaps) stay true
        replanned = plan_stacks(ok)
        plan = replanned[0] if plan.has_patient_geometry and len(replanned) == 1 else StackPlan(
            ok, plan.affine, False, plan.has_patient_geometry, []
        )
        problems = [p for p in plan.problems] + [p for p in problems if p.code not in {q.code for q in plan.problems}]
    recs = {r.source: r for r in series.instances}
    r0 = recs.get(ok[0].source)
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
    meta.update({k.lower() if k != "KVP" else "kvp": v for k, v in metadata.items()})
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
        display=display or DisplayInfo(),
        is_volumetric=plan.is_volumetric,
        has_patient_geometry=plan.has_patient_geometry,
        problems=problems,
        metadata=meta,
    )
    return vol, problems


def _decode_all(sources: list[str], pool: Executor | None, workers: int, limits: ReadLimits) -> Iterator[Decoded]:
    if pool is None:
        for s in sources:
            yield decode_source(s, limits)
        return
    chunk = max(1, min(16, len(sources) // (4 * workers) or 1))
    yield from pool.map(decode_source, sources, [limits] * len(sources), chunksize=chunk)


def _volume_from(plan: StackPlan, series: SeriesRecord, decoded: dict[str, Decoded]) -> tuple[Volume | None, list[Problem]]:
    """General path (colour, multi-frame): stack already decoded frames."""
    ok = [f for f in plan.frames if decoded[f.source].pixels is not None]
    if not ok:
        return None, list(plan.problems)
    first = decoded[ok[0].source].pixels
    assert first is not None
    shape = (len(ok),) + first.shape[1:]
    pixels = np.empty(shape, dtype=first.dtype)
    for k, f in enumerate(ok):
        arr = decoded[f.source].pixels
        assert arr is not None
        frame = arr[f.frame_number - 1]
        if frame.shape != shape[1:]:
            problems = list(plan.problems)
            problems.append(
                Problem("error", "pixel-shape", f"decoded frame {frame.shape} does not match {shape[1:]}", f.source)
            )
            return None, problems
        pixels[k] = frame
    d0 = decoded[ok[0].source]
    return _make_volume(plan, ok, pixels, series, d0.display, d0.metadata)


def load_series(
    series: SeriesRecord, *, workers: Workers = 1, limits: ReadLimits | None = None
) -> list[Volume]:
    """Decode a series into one or more volumes (split by size/orientation/repeated positions).

    workers: processes used to decode (1 = in this process; ``"auto"`` = every CPU for series
    of at least :data:`AUTO_POOL_MIN_FILES` files). Files that fail to decode are left out and
    recorded as error problems on the volume; geometry is recomputed without them.
    Raises :class:`~lesionlens.errors.SeriesAssemblyError` only when nothing at all could be loaded.
    """
    n = _resolve_workers(workers, len(series.instances))
    with _executor(n) or contextlib.nullcontext() as pool:
        return _load(series, pool, n, limits or DEFAULT_LIMITS, {})


def _load(
    series: SeriesRecord, pool: Executor | None, workers: int, limits: ReadLimits, natives: dict[str, _Native]
) -> list[Volume]:
    from lesionlens.errors import SeriesAssemblyError

    plans, problems = plan_series(series, limits=limits)
    problems = [p for p in series.problems] + problems
    recs = {r.source: r for r in series.instances}
    volumes: list[Volume] = []
    failures: list[Problem] = []
    results: list[tuple[StackPlan, Volume | None, list[Problem]]] = []
    if all(_is_plain_greyscale(recs.get(f.source)) for p in plans for f in p.frames):
        for plan in plans:  # single-frame greyscale: straight into each preallocated volume
            vol, fails = _direct_volume(plan, series, natives, pool, workers, limits)
            failures.extend(fails)
            results.append((plan, vol, fails))
    else:
        sources = list(dict.fromkeys(f.source for p in plans for f in p.frames))
        decoded = {d.source: d for d in _decode_all(sources, pool, workers, limits)}
        failures = [d.problem for d in decoded.values() if d.problem is not None]
        for plan in plans:
            mine = {f.source for f in plan.frames}
            vol, _ = _volume_from(plan, series, decoded)
            results.append((plan, vol, [p for p in failures if p.path in mine]))
    for plan, vol, fails in results:
        if vol is not None:
            vol.problems[:0] = problems
            vol.problems.extend(fails)
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
    workers: Workers = "auto",
    limits: ReadLimits | None = None,
) -> StudyRead:
    """Scan ``inputs`` (file, folder, zip, or a list of them), select series, load them.

    workers: processes for the header scan and the pixel decoding; ``"auto"`` (default) uses
    every CPU (at most 8) for inputs of at least :data:`AUTO_POOL_MIN_FILES` files and stays in
    this process below that; 1 = always in this process.

    Raises only when the input itself is unusable (e.g. the one path given does not exist);
    everything else is collected into ``StudyRead.problems``.
    """
    limits = limits or DEFAULT_LIMITS
    found: list[Problem] = []
    sources = list(iter_sources(inputs, limits, found))
    n = _resolve_workers(workers, len(sources))
    with _executor(n) or contextlib.nullcontext() as pool:
        scanned = _scan_all(sources, pool, n, limits)
        natives = {rec.source: nat for rec, nat in scanned if nat is not None}
        catalog = build_catalog((rec for rec, _ in scanned), found)
        selected = select_series(catalog, rules)
        result = StudyRead(catalog=catalog, problems=list(catalog.problems))
        for se in catalog.series:
            if not se.selected:
                result.problems.extend(se.problems)
        for se in selected:
            try:
                vols = _load(se, pool, n, limits, natives)
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


__all__ = ["AUTO_POOL_MIN_FILES", "Decoded", "StudyRead", "Workers", "decode_source", "default_workers", "idle_workers", "load_series", "read_study", "scan", "select_series"]

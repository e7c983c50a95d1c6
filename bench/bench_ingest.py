"""Ingest benchmark: LesionLens read + decode versus a bare pydicom loop, and decode workers.

Generates its own CT-like series (synthetic HU content, not constant) in a temporary folder:

* an uncompressed series (default 300 slices of 512×512): ``read_study`` (scan + select +
  load into an HU volume; default ``workers="auto"``, then 1 and ``--workers`` processes)
  versus ``[pydicom.dcmread(f).pixel_array for f in files]``;
* a JPEG 2000 Lossless series (default 100 slices): ``load_series(workers=1)`` versus
  ``load_series(workers=2)`` (processes).

Prints the median of ``--repeat`` runs: MB/s (file bytes read), files/s, CPU seconds used
(this process and its workers; ``cpu/wall`` near the worker count means the cores were free)
and the ratios, plus the CPU count and load average, since other jobs skew the figures. Usage::

    python bench/bench_ingest.py [--slices 300] [--j2k-slices 100] [--size 512] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless

from lesionlens.dicom import load_series, read_study, scan
from lesionlens.dicom.study import default_workers, idle_workers
from lesionlens.dicom.write import save_dataset, uid_from_seed


def _phantom(size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) int16 HU: air outside a body ellipse, soft tissue, lungs, bone ring, noise."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    img = np.full((size, size), -1000.0)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    img[body] = 40
    for cx in (-0.4, 0.4):
        img[((x - cx) / 0.3) ** 2 + (y / (0.4 + 0.002 * k)) ** 2 < 1] = -850
    ring = np.abs(np.hypot(x / 0.85, y / 0.65) - 0.93) < 0.03
    img[ring] = 700
    img += rng.normal(0, 15, img.shape) * body
    return np.clip(img, -1024, 3071).astype(np.int16)


def write_series(folder: Path, n: int, size: int, ts: str, seed: str) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid_from_seed(seed, k)
        ds.StudyInstanceUID = uid_from_seed(seed, "study")
        ds.SeriesInstanceUID = uid_from_seed(seed, "series")
        ds.FrameOfReferenceUID = uid_from_seed(seed, "for")
        ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "BENCH", "CT", 1, n - k
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-200.0, -200.0, -300.0 + 1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.78, 0.78], 1.25
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = _phantom(size, k, rng).tobytes()
        paths.append(save_dataset(ds, folder / f"{rng.integers(1 << 40):010x}.dcm", transfer_syntax_uid=ts))
    return paths


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def median_of(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process + finished workers) of ``fn``."""
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = _cpu(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _line(label: str, t: tuple[float, float], mb: float, n: int) -> str:
    wall, cpu = t
    return f"  {label:28s}: {wall:6.3f} s  {mb / wall:7.1f} MB/s  {n / wall:7.1f} files/s  cpu {cpu:5.2f} s ({cpu / wall:.2f}/wall)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--j2k-slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lesionlens-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        files = write_series(root / "raw", args.slices, args.size, ExplicitVRLittleEndian, "raw")
        j2k = write_series(root / "j2k", args.j2k_slices, args.size, JPEG2000Lossless, "j2k")
        print(f"generated {len(files)} uncompressed + {len(j2k)} JPEG 2000 files in {time.perf_counter() - t0:.1f} s")
        mb = sum(p.stat().st_size for p in files) / 1e6
        mb_j2k = sum(p.stat().st_size for p in j2k) / 1e6
        for p in files + j2k:  # warm the page cache for both contenders
            p.read_bytes()

        def bare() -> list[np.ndarray]:
            return [pydicom.dcmread(f).pixel_array for f in files]

        def ours(workers: int | str = "auto") -> object:
            res = read_study(root / "raw", workers=workers)  # type: ignore[arg-type]
            assert res.volumes[0].shape == (args.slices, args.size, args.size)
            return res

        ref = np.stack(bare()).astype(np.float32)
        for w in ("auto", 1, args.workers):
            got = ours(w).volumes[0].pixels  # type: ignore[attr-defined]
            assert np.array_equal(ref, got), "HU volume differs from pydicom's pixels"
        load0 = os.getloadavg()[0]
        auto_n = idle_workers()
        t_bare = median_of(bare, args.repeat)
        t_ours = median_of(ours, args.repeat)
        t_one = median_of(lambda: ours(1), args.repeat)
        t_many = median_of(lambda: ours(args.workers), args.repeat)
        (series,) = scan(root / "raw").series
        t_load = median_of(lambda: load_series(series), args.repeat)
        n = len(files)
        print(f"{default_workers()} CPUs; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after; "
              f"median of {args.repeat} runs")
        print(f"uncompressed {n} × {args.size}² ({mb:.0f} MB):")
        print(_line("pydicom dcmread+pixel_array", t_bare, mb, n))
        print(_line(f"read_study (auto: {auto_n} proc)", t_ours, mb, n))
        print(_line("read_study workers=1", t_one, mb, n))
        print(_line(f"read_study workers={args.workers}", t_many, mb, n))
        print(_line("load_series only (1 proc)", t_load, mb, n))
        print(f"  ratio read_study / bare loop (speed) = {t_bare[0] / t_ours[0]:.2f} (auto), "
              f"{t_bare[0] / t_one[0]:.2f} (workers=1), {t_bare[0] / t_many[0]:.2f} (workers={args.workers})")

        (jser,) = scan(root / "j2k").series
        t1 = median_of(lambda: load_series(jser, workers=1), args.repeat)
        t2 = median_of(lambda: load_series(jser, workers=args.workers), args.repeat)
        m = len(j2k)
        print(f"JPEG 2000 lossless {m} × {args.size}² ({mb_j2k:.0f} MB); load average now {os.getloadavg()[0]:.2f}:")
        print(_line("load_series workers=1", t1, mb_j2k, m))
        print(_line(f"load_series workers={args.workers}", t2, mb_j2k, m))
        print(f"  ratio workers={args.workers} / workers=1 (speed) = {t1[0] / t2[0]:.2f}")


if __name__ == "__main__":
    main()

"""DICOM ingest benchmark: C-STORE rate of our DicomListener versus a real Orthanc.

Generates a synthetic CT study (default 300 slices of 512×512, ``lesionlens.synth.ct``), then
sends it with dcmtk's ``storescu`` — a separate process, one association — to

* our :class:`~lesionlens.net.scp.DicomListener` (durable: fsync of file and folder before each
  success status), and
* Orthanc (started on free loopback ports by ``tests/integration/orthanc.py``; its own default
  storage settings) — with ``TCP_NODELAY=1`` in its environment (DCMTK then disables Nagle's
  algorithm) and as packaged (each C-STORE response then waits ~40 ms for a delayed ACK),

``--repeat`` times each (a fresh store every run), and prints the median instances/s and MB/s,
this process's CPU seconds per run (the listener and send_files run in it; ~0 for Orthanc), the CPU count and load average
(other jobs on the machine skew the figures). Optionally (``--scu``) also our C-STORE SCU
(``send_files``) into both. Needs dcmtk (and Orthanc for its row). Usage::

    python bench/bench_dicom_ingest.py [--slices 300] [--size 512] [--repeat 3] [--workdir DIR] [--scu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lesionlens.net.scp import DicomListener, DicomListenerConfig
from lesionlens.net.scu import ScuOptions, send_files
from lesionlens.net.storage import InstanceStore
from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from integration.orthanc import OrthancServer, find_orthanc  # noqa: E402


def make_study(folder: Path, slices: int, size: int) -> list[Path]:
    t0 = time.perf_counter()
    ph = generate_ct(7, CTPhantomConfig(matrix=(size, size), n_slices=slices))
    write_ct_study(ph, folder)
    files = sorted(folder.glob("CT_*.dcm"))
    print(f"generated {len(files)} slices of {size}x{size} in {time.perf_counter() - t0:.1f} s "
          f"({sum(f.stat().st_size for f in files) / 1e6:.0f} MB)")
    return files


def storescu(port: int, files: list[Path], called: str) -> float:
    """Wall seconds of one storescu run (one association for all files)."""
    cmd = ["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, files)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"storescu failed ({r.returncode}): {r.stderr[-800:]}")
    return dt


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds as returned by fn, CPU seconds of this process meanwhile)."""
    c0 = time.process_time()
    wall = fn()
    return wall, time.process_time() - c0


def report(name: str, runs: list[tuple[float, float]], n: int, mb: float) -> None:
    wall = statistics.median(w for w, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    rates = ", ".join(f"{n / w:.0f}" for w, _ in runs)
    print(f"{name:<44} {n / wall:7.1f} inst/s {mb / wall:7.1f} MB/s  cpu {cpu:5.2f} s/run  (runs: {rates})")


def bench_ours(work: Path, files: list[Path], repeat: int) -> list[tuple[float, float]]:
    runs = []
    for i in range(repeat):
        store = work / f"ours-{i}"
        with DicomListener(InstanceStore(store), DicomListenerConfig(port=0)) as listener:
            runs.append(timed(lambda: storescu(listener.port, files, "LESIONLENS")))
            stored = len(list(listener.store.iter_instances()))
        if stored != len(files):
            raise SystemExit(f"listener stored {stored} of {len(files)}")
        shutil.rmtree(store)
    return runs


def bench_orthanc(work: Path, files: list[Path], repeat: int, nodelay: bool) -> list[tuple[float, float]]:
    runs = []
    for i in range(repeat):
        with OrthancServer(work / f"orthanc-{i}", dicomweb=False, tcp_nodelay=nodelay) as pacs:
            runs.append(timed(lambda: storescu(pacs.dicom_port, files, pacs.ae_title)))
            stored = len(pacs.instances())
        if stored != len(files):
            raise SystemExit(f"Orthanc stored {stored} of {len(files)}")
        shutil.rmtree(work / f"orthanc-{i}")
    return runs


def bench_scu(work: Path, files: list[Path], repeat: int, to_orthanc: bool) -> list[tuple[float, float]]:
    runs = []
    opts = ScuOptions(retries=0)
    for i in range(repeat):
        def send(port: int, aet: str) -> float:
            t0 = time.perf_counter()
            rep = send_files(f"{aet}@127.0.0.1:{port}", files, calling_ae="BENCH", options=opts)
            if not rep.all_ok:
                raise SystemExit(f"send_files: {len(rep.failed)} failed: {rep.failed[0]}")
            return time.perf_counter() - t0

        if to_orthanc:
            with OrthancServer(work / f"scu-orthanc-{i}", dicomweb=False) as pacs:
                runs.append(timed(lambda: send(pacs.dicom_port, pacs.ae_title)))
            shutil.rmtree(work / f"scu-orthanc-{i}")
        else:
            with DicomListener(InstanceStore(work / f"scu-ours-{i}"), DicomListenerConfig(port=0)) as lst:
                runs.append(timed(lambda: send(lst.port, "LESIONLENS")))
            shutil.rmtree(work / f"scu-ours-{i}")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the scratch folder (default: system temp)")
    ap.add_argument("--scu", action="store_true", help="also time our send_files() SCU")
    args = ap.parse_args()
    if shutil.which("storescu") is None:
        raise SystemExit("storescu (dcmtk) is not installed")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-dicom-ingest-", dir=args.workdir))
    try:
        files = make_study(work / "study", args.slices, args.size)
        n, mb = len(files), sum(f.stat().st_size for f in files) / 1e6
        print(f"cpus {os.cpu_count()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"storescu -> receiver, {n} instances, one association, median of {args.repeat}:")
        report("LesionLens DicomListener (fsync per instance)", bench_ours(work, files, args.repeat), n, mb)
        if find_orthanc() is not None:
            version = OrthancServer.version()
            report(f"Orthanc {version} (TCP_NODELAY=1)", bench_orthanc(work, files, args.repeat, True), n, mb)
            report(f"Orthanc {version} (as packaged: Nagle on)", bench_orthanc(work, files, args.repeat, False), n, mb)
        else:
            print("Orthanc: not installed, skipped")
        if args.scu:
            report("LesionLens send_files -> DicomListener", bench_scu(work, files, args.repeat, False), n, mb)
            if find_orthanc() is not None:
                report("LesionLens send_files -> Orthanc", bench_scu(work, files, args.repeat, True), n, mb)
        print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

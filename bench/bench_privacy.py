"""Privacy benchmark: encryption at rest, the audit trail and de-identification.

* **AES-GCM** (:mod:`lesionlens.privacy.crypto`, 1 MiB chunks): ``encrypt_file`` / ``decrypt_file``
  (atomic, fsync'ed outputs) and ``open_decrypted`` (into memory, the service's read path) on files
  of ``--sizes`` MB (default 0.5 = one 512×512 CT slice, and 50), plus ``encrypt_bytes`` /
  ``decrypt_bytes`` (no file I/O: the cipher alone). MB/s of plaintext, median of ``--repeat`` runs
  over enough files to move at least ``--min-mb`` MB per run.
* **Audit trail** (:class:`lesionlens.privacy.audit.AuditLog`): appends/s (each one fsync'ed) for a
  plain SHA-256 and a keyed HMAC chain, and ``audit verify``
  (:func:`lesionlens.privacy.audit_export.verify`) in records/s over the log written.
* **De-identification** (:func:`lesionlens.privacy.deid_files.deidentify_path`): instances/s and
  MB/s for a synthetic CT study (default 100 slices of 512×512, ``lesionlens.synth.ct``), basic
  profile and with three options (:data:`DEID_OPTIONS`), median of ``--repeat`` runs (a fresh
  output folder each time).

Prints a table; the CPU count and load average (other jobs on the machine skew the figures).
Scratch files go under ``--workdir`` (removed at the end unless ``--keep``). Usage::

    python bench/bench_privacy.py [--sizes 0.5 50] [--audit-records 1000] [--slices 100] [--size 512]
                                  [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lesionlens.privacy.audit import AuditLog, ParticipantObject
from lesionlens.privacy.audit_export import verify
from lesionlens.privacy.crypto import (
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    open_decrypted,
)
from lesionlens.privacy.deid_files import deidentify_path
from lesionlens.privacy.deid_options import DeidConfig
from lesionlens.privacy.keys import DataKey
from lesionlens.privacy.uidmap import DeidKey

MB = 1_000_000
DEID_OPTIONS = ("retain-long-modified-dates", "clean-descriptors", "clean-structured-content")


def median_rate(amount: float, repeat: int, fn: Callable[..., object], *args: object) -> tuple[float, list[float]]:
    """(median of amount/seconds, every run's rate) over ``repeat`` timed calls of ``fn(*args)``."""
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        rates.append(amount / (time.perf_counter() - t))
    return statistics.median(rates), rates


def row(what: str, size: str, unit: str, measured: tuple[float, list[float]]) -> None:
    rate, rates = measured
    runs = " ".join(f"{r:.0f}" if r >= 10 else f"{r:.1f}" for r in rates)
    print(f"{what:<36} {size:>12} {rate:>8.0f} {unit:<10} (runs: {runs})")


# -- the timed operations --------------------------------------------------------------------

def _encrypt_files(pairs: list[tuple[Path, Path]], key: DataKey) -> None:
    for src, dst in pairs:
        encrypt_file(src, dst, key)


def _decrypt_files(pairs: list[tuple[Path, Path]], key: DataKey) -> None:
    for src, dst in pairs:
        decrypt_file(src, dst, key)


def _open_files(paths: list[Path], key: DataKey) -> None:
    for path in paths:
        open_decrypted(path, key)


def _encrypt_n(data: bytes, key: DataKey, n: int) -> None:
    for _ in range(n):
        encrypt_bytes(data, key)


def _decrypt_n(blob: bytes, key: DataKey, n: int) -> None:
    for _ in range(n):
        decrypt_bytes(blob, key)


def _append_n(log: AuditLog, objects: list[ParticipantObject], n: int) -> None:
    for i in range(n):
        log.access(f"user{i % 7}", objects, source_ip="10.0.0.1")


def _verify(path: Path, key: bytes | None) -> None:
    result = verify(path, key)
    if not result.ok:
        raise SystemExit(f"audit verify failed: {result}")


def _deidentify(src: Path, out_root: Path, config: DeidConfig, expected: int) -> None:
    report = deidentify_path(src, tempfile.mkdtemp(dir=out_root), config)  # a fresh folder each run
    if len(report.written) != expected:
        raise SystemExit(f"de-identification wrote {report.to_json()['counts']}, expected {expected}")


# -- the three parts ---------------------------------------------------------------------------

def bench_crypto(work: Path, sizes_mb: list[float], min_mb: float, repeat: int) -> None:
    key = DataKey.generate()
    for size_mb in sizes_mb:
        n = max(1, round(min_mb / size_mb))
        d = work / f"crypto-{size_mb:g}"
        d.mkdir(parents=True)
        data = os.urandom(int(size_mb * MB))
        plain = [d / f"plain-{i}.bin" for i in range(n)]
        for p in plain:
            p.write_bytes(data)
        enc = [d / f"enc-{i}.bin" for i in range(n)]
        dec = [d / f"dec-{i}.bin" for i in range(n)]
        total, size = n * size_mb, f"{size_mb:g} MB x{n}"
        row("encrypt_file (fsync'ed)", size, "MB/s",
            median_rate(total, repeat, _encrypt_files, list(zip(plain, enc, strict=True)), key))
        row("decrypt_file (fsync'ed)", size, "MB/s",
            median_rate(total, repeat, _decrypt_files, list(zip(enc, dec, strict=True)), key))
        if dec[-1].read_bytes() != data:
            raise SystemExit("decrypt_file did not give the plaintext back")
        row("open_decrypted (into memory)", size, "MB/s", median_rate(total, repeat, _open_files, enc, key))
        row("encrypt_bytes (no file I/O)", size, "MB/s", median_rate(total, repeat, _encrypt_n, data, key, n))
        blob = encrypt_bytes(data, key)
        row("decrypt_bytes (no file I/O)", size, "MB/s", median_rate(total, repeat, _decrypt_n, blob, key, n))
        shutil.rmtree(d)


def bench_audit(work: Path, records: int, repeat: int) -> None:
    objects = [ParticipantObject.study("1.2.826.0.1.3680043.8.498.12345678901234567890"),
               ParticipantObject.patient("LL0123456789ABCD")]
    for keyed in (None, os.urandom(32)):
        kind = "HMAC" if keyed else "SHA-256"
        path = work / f"audit-{kind}.jsonl"
        log = AuditLog(path, key=keyed)
        row(f"audit append, fsync ({kind})", f"{records} rec", "records/s",
            median_rate(records, repeat, _append_n, log, objects, records))
        total = records * repeat  # the log now holds every run's records
        row(f"audit verify ({kind})", f"{total} rec", "records/s", median_rate(total, repeat, _verify, path, keyed))


def bench_deid(work: Path, slices: int, size: int, repeat: int) -> None:
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    t0 = time.perf_counter()
    ph = generate_ct(7, CTPhantomConfig(matrix=(size, size), n_slices=slices))
    folder = write_ct_study(ph, work / "study")
    files = sorted(folder.glob("CT_*.dcm"))
    for extra in set(folder.iterdir()) - set(files):  # truth.json etc.: images only
        if extra.is_file():
            extra.unlink()
    mb = sum(f.stat().st_size for f in files) / MB
    print(f"(generated {len(files)} CT slices of {size}x{size}, {mb:.1f} MB, in {time.perf_counter() - t0:.1f} s)")
    key = DeidKey(os.urandom(32), source="bench")
    for label, options in (("basic", ()), ("3 options", DEID_OPTIONS)):
        out_root = work / f"deid-{len(options)}"
        out_root.mkdir()
        rate, rates = median_rate(len(files), repeat, _deidentify, folder, out_root,
                                  DeidConfig.build(key, options), len(files))
        row(f"deidentify_path ({label})", f"{len(files)} inst", "inst/s", (rate, rates))
        row(f"deidentify_path ({label})", f"{mb:.1f} MB", "MB/s",
            (rate * mb / len(files), [r * mb / len(files) for r in rates]))
        shutil.rmtree(out_root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.5, 50.0], help="file sizes in MB")
    ap.add_argument("--min-mb", type=float, default=50.0, help="MB encrypted per run and size (many small files)")
    ap.add_argument("--audit-records", type=int, default=1000)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work-privacy"))
    ap.add_argument("--keep", action="store_true", help="keep --workdir afterwards")
    ap.add_argument("--skip", nargs="*", default=[], choices=["crypto", "audit", "deid"])
    args = ap.parse_args()
    work = args.workdir.absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"cpus {os.cpu_count()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, workdir {work}")
    print(f"{'what':<36} {'size':>12} {'median':>8} {'unit':<10}")
    try:
        if "crypto" not in args.skip:
            bench_crypto(work, args.sizes, args.min_mb, args.repeat)
        if "audit" not in args.skip:
            bench_audit(work, args.audit_records, args.repeat)
        if "deid" not in args.skip:
            bench_deid(work, args.slices, args.size, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

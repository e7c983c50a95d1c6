"""Correctness of ingest's fast paths: raw-value records, native pixel layouts from the scan,
decoding straight into the volume, and the worker pool (scan + decode). Not timed."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from series_factory import SeriesSpec, hu_slice, make_slice, write_series

from lesionlens.dicom import read_study, scan
from lesionlens.dicom import study as study_mod
from lesionlens.dicom.io import read_header
from lesionlens.dicom.scan import SCAN_TAGS, fast_record, record_from_header
from lesionlens.dicom.study import _native_fast, _native_params, _resolve_workers, load_series
from lesionlens.dicom.write import save_dataset
from lesionlens.errors import LesionLensError


def _dicom_files(*folders: Path) -> list[Path]:
    return [p for d in folders for p in sorted(d.rglob("*")) if p.is_file() and p.suffix.lower() in ("", ".dcm")]


def _same_volumes(a: list, b: list) -> None:  # type: ignore[type-arg]
    assert len(a) == len(b)
    for va, vb in zip(a, b):
        assert va.pixels.dtype == vb.pixels.dtype and np.array_equal(va.pixels, vb.pixels)
        assert np.array_equal(va.affine, vb.affine)
        assert va.sources == vb.sources
        # codec messages may name object addresses: compare what each problem is about
        assert [(p.severity, p.code, p.path) for p in va.problems] == [(p.severity, p.code, p.path) for p in vb.problems]
        assert va.display == vb.display and va.metadata == vb.metadata


def test_fast_record_equals_converting_record(pydicom_files: Path, tmp_path: Path) -> None:
    write_series(SeriesSpec(seed="a", n_slices=3), tmp_path / "a")
    write_series(SeriesSpec(seed="b", n_slices=3, transfer_syntax=ImplicitVRLittleEndian), tmp_path / "b")
    checked = 0
    for f in _dicom_files(pydicom_files, tmp_path):
        try:
            hr = read_header(str(f), specific_tags=SCAN_TAGS)
        except LesionLensError:  # not DICOM, truncated...: no record to compare
            continue
        fast = fast_record(hr.dataset, str(f), hr.pixel is not None)
        slow_hr = read_header(str(f), specific_tags=SCAN_TAGS)
        assert fast == record_from_header(slow_hr.dataset, str(f), slow_hr.pixel is not None), f
        checked += 1
    assert checked > 50


def test_fast_record_falls_back_for_non_ascii_and_multi_values(tmp_path: Path) -> None:
    ds = make_slice(SeriesSpec(), 0)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.SeriesDescription = "A\\B"
    ds.InstanceNumber = "7"
    path = save_dataset(ds, tmp_path / "x.dcm")
    hr = read_header(str(path), specific_tags=SCAN_TAGS)
    rec = fast_record(hr.dataset, str(path), True)
    assert rec.patient_name == "Müller^Jürgen"
    assert rec == record_from_header(read_header(str(path), specific_tags=SCAN_TAGS).dataset, str(path), True)


def test_native_layout_equals_converting_one(pydicom_files: Path) -> None:
    for f in _dicom_files(pydicom_files):
        try:
            hr = read_header(str(f), specific_tags=SCAN_TAGS)
        except LesionLensError:  # not DICOM, truncated...: no record to compare
            continue
        assert _native_fast(hr) == _native_params(read_header(str(f), specific_tags=SCAN_TAGS)), f


@pytest.mark.parametrize(
    "spec",
    [
        SeriesSpec(seed="plain"),
        SeriesSpec(seed="unsigned", pixel_representation=0, intercept=-1024.0),
        SeriesSpec(seed="slope", extra={"RescaleSlope": 0.5, "RescaleIntercept": -1000.5}),
        SeriesSpec(seed="implicit", transfer_syntax=ImplicitVRLittleEndian),
        SeriesSpec(seed="deflate", transfer_syntax=DeflatedExplicitVRLittleEndian),
    ],
)
def test_read_study_matches_decode_source(tmp_path: Path, spec: SeriesSpec) -> None:
    write_series(spec, tmp_path)
    (vol,) = read_study(tmp_path, workers=1).volumes
    for k, src in enumerate(vol.sources):
        ref = study_mod.decode_source(src)
        assert ref.problem is None
        assert np.array_equal(vol.pixels[k], ref.pixels[0])  # type: ignore[index]
    if "RescaleSlope" not in spec.extra:
        assert np.array_equal(vol.pixels[0], hu_slice(spec, 0))


def test_pool_gives_the_same_study_with_problems(tmp_path: Path) -> None:
    spec = SeriesSpec(seed="pool", n_slices=20)
    paths = write_series(spec, tmp_path, shuffle_names=False)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 100])  # pixel data cut short
    (tmp_path / "notes.txt").write_text("not dicom")
    one = read_study(tmp_path, workers=1)
    two = read_study(tmp_path, workers=2)
    _same_volumes(one.volumes, two.volumes)
    assert one.problems == two.problems
    assert [r.source for r in one.catalog.skipped] == [r.source for r in two.catalog.skipped]
    assert any(p.code == "missing-slice" for p in two.problems)
    assert one.volumes[0].pixels.shape == (19, spec.rows, spec.columns)


def test_compressed_series_decoded_by_workers(tmp_path: Path) -> None:
    from pydicom.pixels import get_decoder

    if not get_decoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 decoder installed")
    spec = SeriesSpec(seed="j2k", n_slices=8, transfer_syntax=JPEG2000Lossless)
    paths = write_series(spec, tmp_path, shuffle_names=False)
    data = bytearray(paths[3].read_bytes())
    soc = data.find(b"\xff\x4f\xff\x51")
    data[soc : soc + 60] = bytes(range(60))  # no J2K codestream any more: fails in a worker
    paths[3].write_bytes(bytes(data))
    (series,) = scan(tmp_path).series
    one, two = load_series(series, workers=1), load_series(series, workers=2)
    _same_volumes(one, two)
    assert np.array_equal(two[0].pixels[0], hu_slice(spec, 0))
    assert two[0].pixels.shape[0] == 7
    assert [p.code for p in two[0].problems if p.path == str(paths[3])] == ["pixel-decode"]


def test_auto_stays_in_process_for_small_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _resolve_workers("auto", study_mod.AUTO_POOL_MIN_FILES - 1) == 1
    assert _resolve_workers(4, 2) == 2
    write_series(SeriesSpec(seed="small", n_slices=5), tmp_path)

    def no_pool(workers: int) -> None:
        assert workers <= 1, "a process pool was started for a tiny input"

    monkeypatch.setattr(study_mod, "_executor", no_pool)
    assert read_study(tmp_path).volumes[0].pixels.shape[0] == 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to patch the workers")
def test_dead_worker_becomes_problems_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if threading.active_count() > 1 or "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("the pool would not fork (patched code would not reach the workers)")
    from pydicom.pixels import get_decoder

    if not get_decoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 decoder installed")
    write_series(SeriesSpec(seed="dead", n_slices=6, transfer_syntax=JPEG2000Lossless), tmp_path)
    (series,) = scan(tmp_path).series
    parent = os.getpid()
    real = study_mod._decode_into

    def crash(source, native, out, limits):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            os._exit(3)
        return real(source, native, out, limits)

    monkeypatch.setattr(study_mod, "_decode_into", crash)
    from lesionlens.errors import SeriesAssemblyError

    with pytest.raises(SeriesAssemblyError, match="worker"):
        load_series(series, workers=2)

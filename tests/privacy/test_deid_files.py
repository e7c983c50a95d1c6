"""De-identification of folders: every pydicom-data / pydicom test file without a crash and
without new dciodvfy errors; a CT study with SR/SEG/GSPS keeps every reference resolvable;
same key → byte-identical output; the CLI's exit codes and report."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import typer
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from lesionlens.cli.deid_cmd import register
from lesionlens.privacy.deid_files import REPORT_NAME, DeidReport, deidentify_path
from lesionlens.privacy.deid_options import DeidConfig
from lesionlens.privacy.uidmap import KEY_ENV, DeidKey
from lesionlens.reports.dicom_common import read_sources
from lesionlens.reports.gsps import write_gsps
from lesionlens.reports.seg import write_seg
from lesionlens.reports.sr import write_sr
from tests.conftest import pydicom_data_dir, pydicom_test_files_dir, require_tool
from tests.pipeline.phantom_results import phantom_study

KEY = DeidKey(b"k" * 32, source="test")
OTHER_KEY = DeidKey(b"o" * 32, source="test")


def _errors(dciodvfy: str, path: str) -> int | None:
    """Number of "Error" lines; None when dciodvfy itself aborts (no count to compare)."""
    proc = subprocess.run([dciodvfy, path], capture_output=True, text=True, timeout=60)
    if proc.returncode < 0 or "Assertion" in proc.stderr:
        return None
    return sum(1 for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[DeidReport, Path]]:
    out = []
    for name, src in (("data", pydicom_data_dir()), ("tests", pydicom_test_files_dir())):
        dst = tmp_path_factory.mktemp(f"deid-{name}")
        out.append((deidentify_path(src, dst, DeidConfig(KEY)), dst))
    return out


def test_every_sample_file_is_written_quarantined_or_a_typed_error(sweep) -> None:
    for report, dst in sweep:
        assert report.written
        assert [f for f in report.failed if f[1] == "internal"] == []
        assert {f[1] for f in report.failed} <= {"not-dicom", "dicom-read", "deid", "output", "duplicate"}
        saved = json.loads((dst / REPORT_NAME).read_text())
        assert saved["counts"] == {"written": len(report.written), "quarantined": len(report.quarantined),
                                   "failed": len(report.failed)}
        for _, output in report.written[:40]:
            ds = pydicom.dcmread(output, stop_before_pixels=True)
            assert ds.PatientIdentityRemoved == "YES" and not any(t.is_private for t in ds.keys())
            assert Path(output).name == f"{ds.SOPInstanceUID}.dcm"


def test_outputs_have_no_more_dciodvfy_errors_than_inputs(sweep) -> None:
    tool = require_tool("dciodvfy")
    by_syntax: dict[str, list[tuple[str, str]]] = {}
    for report, _ in sweep:
        for src, out in report.written:
            ts = str(pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            by_syntax.setdefault(ts, []).append((src, out))
    compared: list[tuple[str, int, int]] = []
    while len(compared) < 20 and any(by_syntax.values()):
        for pairs in by_syntax.values():
            if pairs and len(compared) < 20:
                src, out = pairs.pop(0)
                before = _errors(tool, src)
                if before is not None:  # inputs dciodvfy cannot read give no baseline
                    after = _errors(tool, out)
                    assert after is not None, out
                    compared.append((src, before, after))
    assert len(compared) == 20 and len(by_syntax) >= 4
    assert [c for c in compared if c[2] > c[1]] == []


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    ps = phantom_study(root / "ct")
    series = ps.result.series[0]
    sources = read_sources(series)
    write_sr(ps.result, series, root / "ct" / "reports" / "sr.dcm", sources=sources)
    assert write_seg(ps.result, series, root / "ct" / "reports" / "seg.dcm", sources=sources)
    assert write_gsps(ps.result, series, root / "ct" / "reports" / "gsps.dcm", sources=sources)
    return root / "ct"


def _walk(ds: Dataset, depth: int = 0) -> Iterator[tuple[str, str, int]]:
    """(keyword, value, depth) for every UI element at any depth."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item, depth + 1)
        elif elem.VR == "UI" and elem.value:
            yield (elem.keyword, str(elem.value), depth)


def _outputs(report: DeidReport) -> dict[str, Dataset]:
    return {out: pydicom.dcmread(out, stop_before_pixels=True) for _, out in report.written}


def test_study_references_resolve_and_keys_are_deterministic(study: Path, tmp_path: Path) -> None:
    one = deidentify_path(study, tmp_path / "one", DeidConfig(KEY))
    two = deidentify_path(study, tmp_path / "two", DeidConfig(KEY))
    other = deidentify_path(study, tmp_path / "other", DeidConfig(OTHER_KEY))
    assert not one.quarantined and all(not f[0].endswith(".dcm") for f in one.failed)  # truth.json
    assert len(one.written) >= 4
    datasets = _outputs(one)
    sops = {ds.SOPInstanceUID for ds in datasets.values()}
    series = {ds.SeriesInstanceUID for ds in datasets.values()}
    studies = {ds.StudyInstanceUID for ds in datasets.values()}
    frames = {ds.FrameOfReferenceUID for ds in datasets.values() if "FrameOfReferenceUID" in ds}
    modalities = {ds.Modality for ds in datasets.values()}
    assert {"CT", "SR", "SEG", "PR"} <= modalities and len(studies) == 1
    known = {"ReferencedSOPInstanceUID": sops, "SeriesInstanceUID": series, "StudyInstanceUID": studies,
             "FrameOfReferenceUID": frames, "ReferencedFrameOfReferenceUID": frames}
    originals = {v for p in study.rglob("*.dcm") for _, v, _ in _walk(pydicom.dcmread(p, stop_before_pixels=True))}
    checked = 0
    for ds in datasets.values():
        for keyword, value, depth in _walk(ds):
            if keyword in known and (depth > 0 or keyword.startswith("Referenced")):
                assert value in known[keyword], (ds.Modality, keyword)
                checked += 1
            if keyword not in ("SOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID"):
                assert value not in originals or value.startswith("1.2.840.10008"), keyword
    assert checked >= 10
    rel = sorted(str(Path(o).relative_to(tmp_path / "one")) for _, o in one.written)
    assert rel == sorted(str(Path(o).relative_to(tmp_path / "two")) for _, o in two.written)
    for r in rel:
        assert (tmp_path / "one" / r).read_bytes() == (tmp_path / "two" / r).read_bytes()
    assert sops.isdisjoint({ds.SOPInstanceUID for ds in _outputs(other).values()})


def test_cli_exit_codes_and_report(study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    runner = CliRunner()
    one_file = next(study.rglob("sr.dcm"))
    res = runner.invoke(app, ["deid", str(one_file), str(tmp_path / "o0")])
    assert res.exit_code == 2 and "no default key" in res.output.replace("\n", " ")
    key = tmp_path / "k.key"
    assert runner.invoke(app, ["deid", "--make-key", str(key)]).exit_code == 0
    assert runner.invoke(app, ["deid", str(one_file), str(tmp_path / "o1"), "--option", "bogus",
                               "--key-file", str(key)]).exit_code == 2
    res = runner.invoke(app, ["deid", str(one_file), str(tmp_path / "o1"), "--key-file", str(key),
                              "--option", "retain-long-modified-dates"])
    assert res.exit_code == 0, res.output
    mixed = tmp_path / "mixed"
    shutil.copytree(one_file.parent, mixed)
    (mixed / "notes.txt").write_text("Doe^Jane not dicom")
    monkeypatch.setenv(KEY_ENV, key.read_bytes().hex())
    res = runner.invoke(app, ["deid", str(mixed), str(tmp_path / "o2")])
    assert res.exit_code == 1
    report = json.loads((tmp_path / "o2" / REPORT_NAME).read_text())
    assert report["counts"] == {"written": 3, "quarantined": 0, "failed": 1}
    assert report["failed"][0]["source"].endswith("notes.txt") and report["failed"][0]["code"] == "not-dicom"
    assert key.read_bytes().hex() not in res.output

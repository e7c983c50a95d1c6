"""De-identified SR/SEG/GSPS stay valid: a small phantom CT study with its SR, SEG and GSPS is
de-identified together with its images; dciodvfy finds no more errors in any output than in its
input, and every reference inside the de-identified SR/SEG/GSPS resolves to a de-identified image."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from lesionlens.privacy.deid_files import DeidReport, deidentify_path
from lesionlens.privacy.deid_options import DeidConfig
from lesionlens.privacy.uidmap import DeidKey
from lesionlens.reports.dicom_common import read_sources
from lesionlens.reports.gsps import write_gsps
from lesionlens.reports.seg import write_seg
from lesionlens.reports.sr import write_sr
from tests.pipeline.phantom_results import phantom_study
from tests.reports.test_sr import dciodvfy_problems

KEY = DeidKey(b"v" * 32, source="test")
RESULT_MODALITIES = {"SR", "SEG", "PR"}
OPTION_SETS = {
    "basic": (),
    "options": ("retain-long-modified-dates", "clean-descriptors", "clean-structured-content"),
}


@dataclass(frozen=True)
class Deidentified:
    source: Path
    report: DeidReport
    inputs: dict[str, Dataset]  # output path → de-identified dataset (no pixels)
    sources: dict[str, str]  # output path → input path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 phantom CT slices and their SR, SEG and GSPS (written from the truth lesions)."""
    root = tmp_path_factory.mktemp("valid") / "ct"
    ps = phantom_study(root, n_slices=12)
    series = ps.result.series[0]
    assert series.lesions
    sources = read_sources(series)
    assert write_sr(ps.result, series, root / "reports" / "sr.dcm", sources=sources)
    assert write_seg(ps.result, series, root / "reports" / "seg.dcm", sources=sources)
    assert write_gsps(ps.result, series, root / "reports" / "gsps.dcm", sources=sources)
    return root


@pytest.fixture(scope="module", params=sorted(OPTION_SETS))
def deidentified(request: pytest.FixtureRequest, study: Path, tmp_path_factory: pytest.TempPathFactory) -> Deidentified:
    out = tmp_path_factory.mktemp(f"deid-{request.param}")
    report = deidentify_path(study, out, DeidConfig.build(KEY, OPTION_SETS[request.param]))
    assert not report.quarantined
    assert [f for f in report.failed if f[0].endswith(".dcm")] == []  # only truth.json fails
    datasets = {o: pydicom.dcmread(o, stop_before_pixels=True) for _, o in report.written}
    return Deidentified(study, report, datasets, {o: s for s, o in report.written})


def _results(d: Deidentified) -> dict[str, str]:
    """Modality → output path of the de-identified SR, SEG and GSPS."""
    found = {ds.Modality: o for o, ds in d.inputs.items() if ds.Modality in RESULT_MODALITIES}
    assert set(found) == RESULT_MODALITIES
    return found


def _referenced(ds: Dataset, keyword: str) -> Iterator[str]:
    """Every value of ``keyword`` at any depth of ``ds``."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _referenced(item, keyword)
        elif elem.keyword == keyword and elem.value:
            yield str(elem.value)


def test_no_new_dciodvfy_errors(deidentified: Deidentified) -> None:
    results = _results(deidentified)
    images = sorted(o for o, ds in deidentified.inputs.items() if ds.Modality == "CT")
    checked = []
    for out in [*results.values(), images[0], images[-1]]:
        before, _ = dciodvfy_problems(Path(deidentified.sources[out]))
        after, _ = dciodvfy_problems(Path(out))
        checked.append((deidentified.inputs[out].Modality, len(before), after))
    assert [c for c in checked if len(c[2]) > c[1]] == []
    assert {c[0] for c in checked} == RESULT_MODALITIES | {"CT"}


def test_no_dangling_references(deidentified: Deidentified) -> None:
    images = {o: ds for o, ds in deidentified.inputs.items() if ds.Modality == "CT"}
    image_sops = {ds.SOPInstanceUID for ds in images.values()}
    image_series = {ds.SeriesInstanceUID for ds in images.values()}
    frames = {ds.FrameOfReferenceUID for ds in images.values()}
    (study_uid,) = {ds.StudyInstanceUID for ds in deidentified.inputs.values()}
    originals = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in deidentified.source.rglob("*.dcm")}
    assert image_sops.isdisjoint(originals) and len(images) == 12
    for modality, out in _results(deidentified).items():
        ds = deidentified.inputs[out]
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID == study_uid
        refs = set(_referenced(ds, "ReferencedSOPInstanceUID"))
        assert refs and refs <= image_sops, (modality, refs - image_sops)
        assert set(_referenced(ds, "SeriesInstanceUID")) - {ds.SeriesInstanceUID} <= image_series, modality
        assert set(_referenced(ds, "FrameOfReferenceUID")) | set(_referenced(ds, "ReferencedFrameOfReferenceUID")) \
            <= frames, modality
    sr = deidentified.inputs[_results(deidentified)["SR"]]
    evidence = set(_referenced(sr.CurrentRequestedProcedureEvidenceSequence[0], "ReferencedSOPInstanceUID"))
    assert evidence == image_sops  # the SR's evidence is the whole de-identified series

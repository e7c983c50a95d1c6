"""``lesionlens pacs process --deid`` against a real Orthanc: a research pull.

A synthetic CT study carrying PHI sentinels (patient name and ID, accession number, birth date,
institution) sits in the source Orthanc (sent with dcmtk's storescu). The command retrieves it
(C-FIND + C-GET), de-identifies it with a key file, detects, and stores the SR/SEG/GSPS into a
second Orthanc (``--store-to``). Checked: no result object (every byte, fetched back from the
destination) and no file under ``--out`` carries a sentinel; the results say PatientIdentityRemoved
YES, carry the keyed StudyInstanceUID and pseudonymous PatientID, and reference the de-identified
images only; the same key gives the same pseudonyms (the re-run overwrites, the destination keeps
3 objects), another key others; and without ``--store-to`` nothing goes back into the source.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from integration.orthanc import OrthancServer, find_orthanc
from lesionlens.privacy.uidmap import DeidKey
from tests.conftest import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT_MODALITIES = {"SR", "SEG", "PR"}
SENTINELS = {
    "PatientName": "ZQXSENTINEL^PATIENTNAME",
    "PatientID": "ZQXPID73310",
    "AccessionNumber": "ZQXACC90210",
    "PatientBirthDate": "19230405",
    "InstitutionName": "ZQX SENTINEL INSTITUTE",
}
SENTINEL_BYTES = [v.encode() for v in SENTINELS.values()] + [b"ZQXSENTINEL", b"ZQXPID", b"ZQXACC"]
_PDF_STREAM = re.compile(rb"/Length (\d+)[^>]*>>\s*stream\r?\n")


@dataclass(frozen=True)
class Study:
    files: list[Path]
    study_uid: str
    sop_uids: frozenset[str]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """32 CT slices of 512×512 with two 10–16 mm nodules (the default model finds them), whose
    headers carry the sentinels and no de-identification marks (a clinical study)."""
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    cfg = CTPhantomConfig(matrix=(512, 512), n_slices=32, slice_spacings_mm=(2.5,), n_nodules=(2, 2),
                          p_no_nodules=0.0, nodule_diameter_mm=(10.0, 16.0), small_nodule_fraction=0.0)
    ph = generate_ct(7, cfg)
    folder = write_ct_study(ph, tmp_path_factory.mktemp("phi-study"))
    files = sorted(folder.glob("CT_*.dcm"))
    sops = set()
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword, value in SENTINELS.items():
            setattr(ds, keyword, value)
        for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
            delattr(ds, keyword)
        ds.save_as(f)
        sops.add(ds.SOPInstanceUID)
    assert all(s in files[0].read_bytes() for s in SENTINEL_BYTES)
    return Study(files, ph.uids["study"], frozenset(sops))


def _orthanc(workdir: Path) -> OrthancServer:
    if find_orthanc() is None:
        pytest.skip("Orthanc is not installed (make sysdeps installs it when run as root)")
    return OrthancServer(workdir).start()


@pytest.fixture
def source(tmp_path: Path, study: Study) -> Iterator[OrthancServer]:
    """The PACS holding the study (loaded with storescu, as a modality would)."""
    server = _orthanc(tmp_path / "source")
    try:
        r = subprocess.run([require_tool("storescu"), "-aet", "SCANNER", "-aec", server.ae_title, server.host,
                            str(server.dicom_port), *map(str, study.files)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(server.instances()) == len(study.files)
        yield server
    finally:
        server.stop(graceful=False)


@pytest.fixture
def research(tmp_path: Path) -> Iterator[OrthancServer]:
    """The research archive the de-identified results go to."""
    server = _orthanc(tmp_path / "research")
    try:
        yield server
    finally:
        server.stop(graceful=False)


def _key(path: Path, fill: bytes) -> tuple[Path, DeidKey]:
    path.write_bytes(fill * 32)
    return path, DeidKey(fill * 32)


def _pacs_process(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "lesionlens.cli.main", "pacs", "process", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _stored(pacs: OrthancServer) -> dict[str, bytes]:
    """Orthanc ID → the stored file's bytes, for every instance."""
    return {i: httpx.get(f"{pacs.url}/instances/{i}/file", timeout=30).content for i in pacs.instances()}


def _inflated(data: bytes) -> bytes:
    """``data`` plus, for a PDF, its Flate-compressed streams inflated (where the text is)."""
    if not data.startswith(b"%PDF"):
        return data
    parts = [data]
    for m in _PDF_STREAM.finditer(data):
        try:
            parts.append(zlib.decompress(data[m.end():m.end() + int(m.group(1))]))
        except zlib.error:  # images (DCTDecode) and other filters
            pass
    return b"\n".join(parts)


def _sentinels_in(data: bytes) -> list[bytes]:
    data = _inflated(data)
    return [s for s in SENTINEL_BYTES if s in data]


def _walk(ds: Dataset, keyword: str) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item, keyword)
        elif elem.keyword == keyword and elem.value:
            yield str(elem.value)


def _check_results(datasets: list[Dataset], key: DeidKey, study: Study) -> tuple[str, str]:
    """The checks every de-identified result set must pass; returns (StudyInstanceUID, PatientID)."""
    assert {ds.Modality for ds in datasets} == RESULT_MODALITIES and len(datasets) == 3
    pseudonym = key.pseudonym(SENTINELS["PatientID"])
    image_sops = {key.map_uid(u) for u in study.sop_uids}
    for ds in datasets:
        assert ds.PatientIdentityRemoved == "YES", ds.Modality
        assert ds.StudyInstanceUID == key.map_uid(study.study_uid) != study.study_uid
        assert ds.PatientID == pseudonym
        refs = set(_walk(ds, "ReferencedSOPInstanceUID"))
        assert refs and refs <= image_sops and refs.isdisjoint(study.sop_uids), ds.Modality
    sr = next(ds for ds in datasets if ds.Modality == "SR")
    evidence = set(_walk(sr.CurrentRequestedProcedureEvidenceSequence[0], "ReferencedSOPInstanceUID"))
    assert evidence == image_sops  # the SR's evidence: every de-identified image
    seg = next(ds for ds in datasets if ds.Modality == "SEG")
    (ref_series,) = seg.ReferencedSeriesSequence
    seg_refs = {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence}
    evidence_series = {s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0]
                       .ReferencedSeriesSequence}
    assert seg_refs <= image_sops and evidence_series == {ref_series.SeriesInstanceUID}
    return ds.StudyInstanceUID, ds.PatientID


def _local_files_without_sentinels(out: Path, key: DeidKey, study: Study) -> int:
    """No file under ``out`` (work/ included) holds a sentinel or an original UID (the pull
    report and the de-identification report included); the number of files checked."""
    files = [p for p in out.rglob("*") if p.is_file()]
    leaks = {str(p.relative_to(out)): _sentinels_in(p.read_bytes()) for p in files}
    assert {k: v for k, v in leaks.items() if v} == {}
    originals = [u.encode() for u in (study.study_uid, *study.sop_uids)]
    uid_leaks = {str(p.relative_to(out)) for p in files if any(u in _inflated(p.read_bytes()) for u in originals)}
    assert uid_leaks == set()
    assert key.map_uid(study.study_uid).encode() in (out / "pull-report.json").read_bytes()
    pseudonym = key.pseudonym(SENTINELS["PatientID"]).encode()
    for name in ("report.pdf", "report.html", "findings.json"):  # the grep sees the patient text there
        assert pseudonym in _inflated((out / name).read_bytes()), name
    return len(files)


def test_deid_pull_stores_clean_results_to_store_to(source: OrthancServer, research: OrthancServer, study: Study,
                                                    tmp_path: Path) -> None:
    key_file, key = _key(tmp_path / "deid.key", b"a")
    args = (study.study_uid, "--from", source.peer, "--deid", "--key-file", str(key_file),
            "--store-to", research.peer, "--threads", "2")
    r = _pacs_process(*args, "--out", str(tmp_path / "one"))
    assert f"{len(study.files)} instances" in r.stdout and f"{research.peer}: delivered" in r.stdout
    assert len(source.instances()) == len(study.files)  # nothing went back to the source
    stored = _stored(research)
    assert {i: _sentinels_in(b) for i, b in stored.items() if _sentinels_in(b)} == {}
    datasets = [pydicom.dcmread(DicomBytesIO(b)) for b in stored.values()]
    first = _check_results(datasets, key, study)
    assert _local_files_without_sentinels(tmp_path / "one", key, study) >= 3 + len(study.files)
    # the same key again: the same pseudonymous study and patient, the same result objects
    _pacs_process(*args, "--out", str(tmp_path / "two"))
    again = [pydicom.dcmread(DicomBytesIO(b)) for b in _stored(research).values()]
    assert _check_results(again, key, study) == first
    assert sorted(ds.SOPInstanceUID for ds in again) == sorted(ds.SOPInstanceUID for ds in datasets)


def test_deid_pull_without_store_to_stores_nothing_back(source: OrthancServer, study: Study, tmp_path: Path) -> None:
    before = source.instances()
    key_file, key = _key(tmp_path / "other.key", b"b")
    out = tmp_path / "pull"
    r = _pacs_process(study.study_uid, "--from", source.peer, "--deid", "--key-file", str(key_file),
                      "--out", str(out), "--threads", "2")
    assert "delivered" not in r.stdout
    assert source.instances() == before  # default with --deid: no store-back
    results = [pydicom.dcmread(out / n) for n in ("sr.dcm", "seg.dcm", "gsps.dcm")]
    study_uid, patient_id = _check_results(results, key, study)
    _local_files_without_sentinels(out, key, study)
    other = DeidKey(b"a" * 32)  # the first test's key: other pseudonyms
    assert study_uid != other.map_uid(study.study_uid) and patient_id != other.pseudonym(SENTINELS["PatientID"])

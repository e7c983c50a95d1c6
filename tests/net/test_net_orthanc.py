"""Our SCU and DICOMweb client against a real Orthanc (skipped only when Orthanc is missing)."""

from __future__ import annotations

import threading

import pytest

from lesionlens.dicom.io import read_dataset
from lesionlens.errors import ConfigError
from lesionlens.net.address import Peer
from lesionlens.net.dicomweb import qido_studies, stow, wado_study
from lesionlens.net.errors import AssociationError, DicomWebError, DimseError
from lesionlens.net.scu import ScuOptions, echo, find_studies, retrieve_study, send_files

pytestmark = pytest.mark.integration

FAST = ScuOptions(connect_timeout_s=2, acse_timeout_s=10, dimse_timeout_s=30, network_timeout_s=30,
                  retries=0, retry_delay_s=0.1)


def _uids(files) -> dict[str, bytes]:
    """SOPInstanceUID → PixelData of each file."""
    return {ds.SOPInstanceUID: ds.PixelData for ds in map(read_dataset, files)}


@pytest.fixture(scope="module")
def pacs(orthanc_module, ct_study):
    """Module Orthanc holding ``ct_study``, sent with our C-STORE SCU (the first test checks it)."""
    report = send_files(orthanc_module.peer, ct_study.files, calling_ae="LESIONLENS", options=FAST)
    return orthanc_module, report


def test_scu_stores_into_orthanc(pacs, ct_study):
    orthanc, report = pacs
    assert report.all_ok and report.associations == 1, report.failed
    assert all(r.status == 0x0000 for r in report.results)
    assert set(_uids(ct_study.files)) <= orthanc.sop_instance_uids()
    assert echo(orthanc.peer, options=FAST) == 0x0000


def test_c_find_finds_the_study(pacs, ct_study):
    orthanc, _ = pacs
    patient_id = read_dataset(ct_study.files[0]).PatientID
    (match,) = find_studies(orthanc.peer, StudyInstanceUID=ct_study.study_uid, options=FAST)
    assert match["StudyInstanceUID"] == ct_study.study_uid
    assert match["PatientID"] == patient_id
    assert match["NumberOfStudyRelatedInstances"] == str(len(ct_study.files))
    assert [m["StudyInstanceUID"] for m in find_studies(orthanc.peer, PatientID=patient_id, options=FAST)] == [
        ct_study.study_uid]
    assert find_studies(orthanc.peer, PatientID="NO-SUCH-PATIENT", options=FAST) == []
    with pytest.raises(ConfigError, match="NotAKeyword"):
        find_studies(orthanc.peer, NotAKeyword="x", options=FAST)


def test_c_get_retrieves_into_dest_dir(pacs, ct_study, tmp_path):
    orthanc, _ = pacs
    report = retrieve_study(orthanc.peer, ct_study.study_uid, tmp_path / "got", method="get", options=FAST)
    assert report.ok and report.completed == len(ct_study.files) and report.failed == 0
    assert {i.sop_instance_uid: read_dataset(i.path).PixelData for i in report.stored} == _uids(ct_study.files)
    assert all(i.path.is_relative_to(tmp_path / "got" / ct_study.study_uid) for i in report.stored)
    assert {i.source for i in report.stored} == {"c-get:ORTHANC"}


def test_c_move_to_our_listener(pacs, ct_study, make_listener, tmp_path):
    orthanc, _ = pacs
    listener = make_listener(tmp_path / "moved", ae_title="LLMOVE")
    orthanc.add_modality("llmove", "LLMOVE", "127.0.0.1", listener.port)
    report = retrieve_study(orthanc.peer, ct_study.study_uid, method="move", move_destination="LLMOVE", options=FAST)
    assert report.ok and report.completed == len(ct_study.files)
    assert report.stored == []  # they landed in the listener's store
    assert {i.sop_instance_uid: read_dataset(i.path).PixelData for i in listener.received} == _uids(ct_study.files)
    assert {i.source for i in listener.received} == {"c-store:ORTHANC"}
    with pytest.raises(DimseError) as info:
        retrieve_study(orthanc.peer, ct_study.study_uid, method="move", move_destination="UNKNOWNAE", options=FAST)
    assert info.value.status not in (None, 0x0000)  # Orthanc answers 0xC000 for an unknown destination


def test_dicomweb_stow_qido_wado_round_trip(orthanc_module, ct_study_rle, tmp_path):
    url = orthanc_module.dicomweb_url
    report = stow(url, ct_study_rle.files)
    assert report.status_code == 200 and report.all_ok, report.failed
    assert set(_uids(ct_study_rle.files)) <= orthanc_module.sop_instance_uids()

    patient_id = read_dataset(ct_study_rle.files[0]).PatientID
    (study,) = qido_studies(url, StudyInstanceUID=ct_study_rle.study_uid)
    assert study["StudyInstanceUID"] == ct_study_rle.study_uid and study["PatientID"] == patient_id
    assert ct_study_rle.study_uid in {s["StudyInstanceUID"] for s in qido_studies(url, PatientID=patient_id)}
    assert qido_studies(url, PatientID="NO-SUCH-PATIENT") == []
    with pytest.raises(ConfigError):
        qido_studies(url, NotAKeyword="1")

    stored = wado_study(url, ct_study_rle.study_uid, tmp_path / "wado")
    assert {i.sop_instance_uid for i in stored} == set(_uids(ct_study_rle.files))
    for inst in stored:
        assert inst.source == "wado-rs"
        src = next(f for f in ct_study_rle.files if read_dataset(f).SOPInstanceUID == inst.sop_instance_uid)
        assert (read_dataset(inst.path).pixel_array == read_dataset(src).pixel_array).all()

    with pytest.raises(DicomWebError) as info:
        wado_study(url, "1.2.3.4.5.6.7.8.9", tmp_path / "none")
    assert info.value.status_code == 404


def test_stow_reports_unreadable_files(orthanc_module, ct_study, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"no")
    report = stow(orthanc_module.dicomweb_url, [junk, ct_study.files[0]])
    assert [r.ok for r in report.results] == [False, True]
    assert report.results[0].reason


def test_orthanc_stop_start_keeps_data_and_scu_retries(orthanc, ct_study):
    peer = Peer.parse(orthanc.peer)
    assert send_files(peer, ct_study.files[:2], options=FAST).all_ok
    before = orthanc.sop_instance_uids()
    orthanc.stop()
    assert not orthanc.running
    with pytest.raises(AssociationError) as info:
        send_files(peer, ct_study.files[2:4], options=FAST)
    assert info.value.report is not None and info.value.report.ok_count == 0
    # the PACS comes back while we retry
    restarter = threading.Timer(0.5, orthanc.start)
    restarter.start()
    try:
        report = send_files(peer, ct_study.files[2:4],
                            options=ScuOptions(connect_timeout_s=2, retries=6, retry_delay_s=0.25))
    finally:
        restarter.join()
    assert report.all_ok
    assert orthanc.running
    after = orthanc.sop_instance_uids()
    assert before <= after and len(after) == 4

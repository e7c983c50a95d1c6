"""Our SCU against our own listener (no PACS needed): send, echo, failures, fallbacks."""

from __future__ import annotations

import time

import pytest
from integration.orthanc import free_port
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from lesionlens.dicom.io import read_dataset
from lesionlens.errors import ConfigError
from lesionlens.net.address import Peer
from lesionlens.net.errors import AssociationError
from lesionlens.net.scp import STATUS_OUT_OF_RESOURCES
from lesionlens.net.scu import ScuOptions, echo, retrieve_study, send_files
from lesionlens.net.storage import InstanceStore

FAST = ScuOptions(connect_timeout_s=2, acse_timeout_s=5, dimse_timeout_s=10, network_timeout_s=10,
                  retries=1, retry_delay_s=0.05)


def _peer(listener) -> Peer:
    return Peer(listener.ae_title, "127.0.0.1", listener.port)


def test_echo(make_listener):
    listener = make_listener()
    assert echo(_peer(listener), options=FAST) == 0x0000
    assert echo(f"LESIONLENS@127.0.0.1:{listener.port}", options=FAST) == 0x0000


def test_send_files_one_association_per_file_status(make_listener, ct_study, ct_study_rle, tmp_path):
    listener = make_listener()
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"definitely not DICOM")
    files = [*ct_study.files, junk, *ct_study_rle.files]
    report = send_files(_peer(listener), files, calling_ae="SENDER", options=FAST)
    assert report.associations == 1
    assert [r.path for r in report.results] == files
    assert report.ok_count == len(files) - 1 and not report.all_ok
    (bad,) = report.failed
    assert bad.path == junk and bad.status is None and "not DICOM" in bad.error
    stored = {i.sop_instance_uid: i for i in listener.received}
    for src in [*ct_study.files, *ct_study_rle.files]:
        orig = read_dataset(src)
        inst = stored[orig.SOPInstanceUID]
        assert inst.source == "c-store:SENDER"
        assert read_dataset(inst.path).PixelData == orig.PixelData
    # compressed files travel compressed when the peer accepts the syntax
    assert {stored[read_dataset(f).SOPInstanceUID].transfer_syntax_uid for f in ct_study_rle.files} == {RLELossless}


def test_compressed_falls_back_to_uncompressed(make_listener, ct_study_rle):
    listener = make_listener(transfer_syntaxes=(ExplicitVRLittleEndian, ImplicitVRLittleEndian))
    report = send_files(_peer(listener), ct_study_rle.files, options=FAST)
    assert report.all_ok, report.failed
    for inst in listener.received:
        assert inst.transfer_syntax_uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        src = next(f for f in ct_study_rle.files if read_dataset(f).SOPInstanceUID == inst.sop_instance_uid)
        assert (read_dataset(inst.path).pixel_array == read_dataset(src).pixel_array).all()


def test_refused_files_are_reported_not_raised(make_listener, ct_study):
    listener = make_listener(accepting=lambda: False)
    report = send_files(_peer(listener), ct_study.files[:3], options=FAST)
    assert [r.status for r in report.results] == [STATUS_OUT_OF_RESOURCES] * 3
    assert all("0xA700" in r.error for r in report.results)
    assert list(listener.store.iter_instances()) == []


def test_association_failure_raises_with_report(ct_study):
    peer = Peer("NOBODY", "127.0.0.1", free_port())
    t0 = time.perf_counter()
    with pytest.raises(AssociationError, match="NOBODY") as info:
        send_files(peer, ct_study.files[:2], options=FAST)
    assert time.perf_counter() - t0 < 10
    report = info.value.report
    assert report is not None and len(report.results) == 2 and report.ok_count == 0
    with pytest.raises(AssociationError):
        echo(peer, options=FAST)


def test_rejected_association_raises(make_listener, ct_study):
    listener = make_listener(allow_ae=["FRIEND"])
    with pytest.raises(AssociationError, match="rejected"):
        send_files(_peer(listener), ct_study.files[:1], calling_ae="STRANGER", options=FAST)
    assert send_files(_peer(listener), ct_study.files[:1], calling_ae="FRIEND", options=FAST).all_ok


def test_retrieve_argument_checks(tmp_path):
    peer = Peer("X", "127.0.0.1", 104)
    with pytest.raises(ConfigError, match="dest_dir"):
        retrieve_study(peer, "1.2.3", None, method="get")
    with pytest.raises(ConfigError, match="move_destination"):
        retrieve_study(peer, "1.2.3", None, method="move")
    with pytest.raises(ConfigError, match="dest_dir=None"):
        retrieve_study(peer, "1.2.3", InstanceStore(tmp_path), method="move", move_destination="ME")
    with pytest.raises(Exception, match="study_uid"):
        retrieve_study(peer, "../etc", tmp_path)

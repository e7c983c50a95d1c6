"""The DICOM listener against real senders: dcmtk's storescu/echoscu and pynetdicom."""

from __future__ import annotations

import io
import logging
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE
from pynetdicom.dsutils import encode

from lesionlens.dicom.io import read_dataset
from lesionlens.errors import ConfigError
from lesionlens.net.errors import NetworkError
from lesionlens.net.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_INTERNAL,
    STATUS_INVALID_UID,
    STATUS_NOT_AUTHORIZED,
    STATUS_NOT_QUEUED,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SOP_CLASS_MISMATCH,
    STATUS_STORE_FAILED,
    STATUS_UID_MISMATCH,
    DicomListener,
    DicomListenerConfig,
    ListenerStats,
    StoreHandler,
)
from lesionlens.net.storage import InstanceStore


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _files_under(base: Path) -> set[Path]:
    return {p for p in base.rglob("*") if p.is_file()}


def _pynetdicom_store(port: int, datasets, calling_ae: str = "PYNETDICOM") -> list[tuple[int, str]]:
    """Send datasets over one association; (status, ErrorComment) per dataset."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="LESIONLENS")
    assert assoc.is_established
    out = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            out.append((int(rsp.Status), str(rsp.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return out


def test_echoscu(make_listener, dcmtk):
    listener = make_listener()
    r = _run([dcmtk("echoscu"), "-aec", "LESIONLENS", "127.0.0.1", str(listener.port)])
    assert r.returncode == 0, r.stderr


def test_storescu_stores_every_file_durably(make_listener, dcmtk, ct_study, tmp_path):
    listener = make_listener(tmp_path / "store")
    r = _run([dcmtk("storescu"), "-aet", "SCANNER", "-aec", "LESIONLENS", "127.0.0.1", str(listener.port),
              *map(str, ct_study.files)])
    assert r.returncode == 0, r.stderr
    stored = sorted(listener.store.iter_instances())
    assert len(stored) == len(ct_study.files) == len(listener.received) == listener.stats.stored
    by_uid = {read_dataset(p).SOPInstanceUID: p for p in stored}
    for src in ct_study.files:
        orig = read_dataset(src)
        path = by_uid[orig.SOPInstanceUID]
        assert path == tmp_path / "store" / orig.StudyInstanceUID / orig.SeriesInstanceUID / f"{orig.SOPInstanceUID}.dcm"
        back = read_dataset(path)  # a valid Part 10 file ...
        assert path.read_bytes()[128:132] == b"DICM"
        assert back.file_meta.MediaStorageSOPInstanceUID == orig.SOPInstanceUID
        assert back.PixelData == orig.PixelData  # ... with the pixels as sent
        assert back.PatientID == orig.PatientID
        # storescu sends the dataset exactly as in the file: the stored dataset bytes are the same
        assert path.read_bytes().endswith(src.read_bytes()[-len(orig.PixelData):])
    sources = {inst.source for inst in listener.received}
    assert sources == {"c-store:SCANNER"}
    assert not [p for p in _files_under(tmp_path / "store") if p.name.startswith(".")]


def test_resending_is_idempotent(make_listener, dcmtk, ct_study):
    listener = make_listener()
    files = [str(f) for f in ct_study.files[:3]]
    for _ in range(2):
        assert _run([dcmtk("storescu"), "-aec", "LESIONLENS", "127.0.0.1", str(listener.port), *files]).returncode == 0
    assert len(list(listener.store.iter_instances())) == 3
    assert [i.replaced for i in listener.received] == [False] * 3 + [True] * 3


def test_compressed_transfer_syntax_is_kept(make_listener, dcmtk, ct_study_rle):
    listener = make_listener()
    # -xr: propose RLE Lossless (storescu proposes only uncompressed syntaxes by default)
    r = _run([dcmtk("storescu"), "-xr", "-aec", "LESIONLENS", "127.0.0.1", str(listener.port),
              *map(str, ct_study_rle.files)])
    assert r.returncode == 0, r.stderr
    assert {i.transfer_syntax_uid for i in listener.received} == {RLELossless}
    for inst in listener.received:
        back = read_dataset(inst.path)
        assert back.file_meta.TransferSyntaxUID == RLELossless
        assert back.pixel_array.shape == (64, 64)


def test_calling_ae_not_allowed_is_rejected_and_nothing_stored(make_listener, dcmtk, ct_study, tmp_path, caplog):
    listener = make_listener(tmp_path / "store", allow_ae=["MODALITY1"])
    with caplog.at_level(logging.WARNING, logger="lesionlens.net.scp"):
        r = _run([dcmtk("storescu"), "-aet", "INTRUDER", "-aec", "LESIONLENS", "127.0.0.1", str(listener.port),
                  *map(str, ct_study.files)])
    assert r.returncode != 0
    assert "Calling AE Title Not Recognized" in r.stderr
    assert _files_under(tmp_path / "store") == set()
    assert any("INTRUDER" in rec.getMessage() and "allow_ae" in rec.getMessage() for rec in caplog.records)
    # the allowed AE still gets in
    r = _run([dcmtk("storescu"), "-aet", "MODALITY1", "-aec", "LESIONLENS", "127.0.0.1", str(listener.port),
              str(ct_study.files[0])])
    assert r.returncode == 0, r.stderr
    assert len(_files_under(tmp_path / "store")) == 1


def test_any_ae_allowed_logs_a_warning(make_listener, caplog):
    with caplog.at_level(logging.WARNING, logger="lesionlens.net.scp"):
        make_listener()
    assert any("ANY calling AE" in rec.getMessage() for rec in caplog.records)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_malicious_uids_fail_and_nothing_escapes(make_listener, ct_study, tmp_path):
    root = tmp_path / "net"
    listener = make_listener(root / "store")
    good = read_dataset(ct_study.files[0])
    evil_sop = read_dataset(ct_study.files[1])
    evil_sop.SOPInstanceUID = "../../x"
    evil_sop.file_meta.MediaStorageSOPInstanceUID = "../../x"
    evil_study = read_dataset(ct_study.files[2])
    evil_study.StudyInstanceUID = "../../../evil"
    statuses = _pynetdicom_store(listener.port, [evil_sop, evil_study, good])
    assert statuses[0][0] == STATUS_INVALID_UID and "SOPInstanceUID" in statuses[0][1]
    assert statuses[1][0] == STATUS_INVALID_UID and "StudyInstanceUID" in statuses[1][1]
    assert statuses[2][0] == 0x0000  # the association survived the bad ones
    files = _files_under(tmp_path)
    assert files == {listener.store.path_for(good.StudyInstanceUID, good.SeriesInstanceUID, good.SOPInstanceUID)}
    assert listener.stats.failed == 2 and listener.stats.stored == 1


def _fake_store_event(raw: bytes, meta, calling: str = "X"):
    """What pynetdicom hands a C-STORE handler: request (with DataSet), assoc.requestor, file_meta."""
    req = SimpleNamespace(AffectedSOPInstanceUID=meta.MediaStorageSOPInstanceUID, DataSet=io.BytesIO(raw))
    requestor = SimpleNamespace(ae_title=calling, address="127.0.0.1", port=1234)
    return SimpleNamespace(request=req, assoc=SimpleNamespace(requestor=requestor), file_meta=meta)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_handler_maps_errors_to_statuses(tmp_path, ct_study):
    ds = read_dataset(ct_study.files[0])
    raw = encode(ds, False, True)  # Explicit VR Little Endian, as it would arrive
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"  # the request names another instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    handler = StoreHandler(InstanceStore(tmp_path / "store"), allow_ae=["X", "Y"])
    assert handler(_fake_store_event(raw, meta)).Status == STATUS_UID_MISMATCH
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR, but the data set is CT
    assert handler(_fake_store_event(raw, meta)).Status == STATUS_SOP_CLASS_MISMATCH
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    assert handler(_fake_store_event(b"\xff" * 64, meta)).Status == STATUS_CANNOT_UNDERSTAND
    assert handler(_fake_store_event(raw, meta, calling="Z")).Status == STATUS_NOT_AUTHORIZED
    assert _files_under(tmp_path / "store") == set()
    assert handler(_fake_store_event(raw, meta, calling="Y")) == 0x0000
    assert handler.stats == ListenerStats(stored=1, refused=1, failed=3)
    assert handler(SimpleNamespace()).Status == STATUS_INTERNAL  # never raises


def test_back_pressure_refuses_with_a700(make_listener, dcmtk, ct_study, tmp_path):
    open_ = threading.Event()
    listener = make_listener(tmp_path / "store", accepting=open_.is_set)
    r = _run([dcmtk("storescu"), "-v", "-aec", "LESIONLENS", "127.0.0.1", str(listener.port), str(ct_study.files[0])])
    assert r.returncode != 0
    assert "OutOfResources" in r.stderr + r.stdout
    statuses = _pynetdicom_store(listener.port, [read_dataset(ct_study.files[1])])
    assert statuses[0][0] == STATUS_OUT_OF_RESOURCES
    assert _files_under(tmp_path / "store") == set()
    assert listener.stats.refused == 2
    open_.set()
    assert _pynetdicom_store(listener.port, [read_dataset(ct_study.files[1])])[0][0] == 0x0000


def test_failing_callback_reports_not_queued_but_keeps_file(make_listener, ct_study):
    def boom(_inst):
        raise RuntimeError("queue is down")

    listener = make_listener(on_stored=boom)
    statuses = _pynetdicom_store(listener.port, [read_dataset(ct_study.files[0]), read_dataset(ct_study.files[1])])
    assert [s for s, _ in statuses] == [STATUS_NOT_QUEUED] * 2
    assert len(list(listener.store.iter_instances())) == 2  # durable anyway; a resend is harmless


def test_port_zero_lifecycle_and_config_validation(tmp_path):
    listener = DicomListener(tmp_path / "s", DicomListenerConfig(port=0))
    with pytest.raises(NetworkError):
        _ = listener.port
    with listener:
        port = listener.port
        assert port > 0 and listener.running
        other = DicomListener(tmp_path / "s2", DicomListenerConfig(port=port))
        with pytest.raises(NetworkError, match="cannot listen"):
            other.start()
    assert not listener.running
    listener.stop()  # idempotent
    with pytest.raises(ConfigError, match="ae_title"):
        DicomListenerConfig(ae_title="WAY_TOO_LONG_AE_TITLE")
    with pytest.raises(ConfigError, match="allow_ae"):
        DicomListenerConfig(allow_ae=["BAD\\AE"])
    with pytest.raises(ConfigError, match="port"):
        DicomListenerConfig(port=70000)


def test_storage_failure_is_out_of_resources_and_association_survives(make_listener, ct_study, tmp_path):
    listener = make_listener(tmp_path / "store")
    first = read_dataset(ct_study.files[0])
    (tmp_path / "store" / first.StudyInstanceUID).write_text("a file where the study folder should be")
    other = read_dataset(ct_study.files[1])
    other.StudyInstanceUID = "1.2.3.999"  # another study: stores fine on the same association
    statuses = _pynetdicom_store(listener.port, [first, other])
    assert statuses[0][0] == STATUS_STORE_FAILED and statuses[0][0] & 0xFF00 == 0xA700
    assert statuses[1][0] == 0x0000
    assert [i.study_uid for i in listener.received] == ["1.2.3.999"]

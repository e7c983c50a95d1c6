from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from lesionlens.dicom.io import read_dataset
from lesionlens.net.errors import InvalidInstanceError, InvalidUIDError, StorageError
from lesionlens.net.storage import InstanceStore, validate_uid

_PART10_HEADER = 128 + 4


def _all_files(base: Path) -> set[Path]:
    return {p for p in base.rglob("*") if p.is_file()}


def _split(path: Path) -> tuple[bytes, FileMetaDataset]:
    """The raw dataset bytes after the file meta, and that meta, as a network receiver sees them."""
    ds = read_dataset(path, stop_before_pixels=True)
    data = path.read_bytes()
    # file meta group length tells where the dataset starts
    group_len = int(ds.file_meta.FileMetaInformationGroupLength)
    start = _PART10_HEADER + 12 + group_len
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    return data[start:], meta


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "2.25.1234", "1", "1.2.3\x00", "1.2.3 "])
def test_validate_uid_accepts(uid):
    assert validate_uid(uid) == uid.rstrip("\x00 ")


@pytest.mark.parametrize(
    "uid", ["", None, "../../x", "1.2/3", "1..2", ".1.2", "1.2.", "1.2.a", "1" + ".1" * 40, "..", "1.2\\3"]
)
def test_validate_uid_rejects(uid):
    with pytest.raises(InvalidUIDError):
        validate_uid(uid, field="SOPInstanceUID")


def test_put_part10_bytes_layout_and_idempotence(tmp_path, ct_study):
    store = InstanceStore(tmp_path / "store")
    src = ct_study.files[0]
    data = src.read_bytes()
    first = store.put(data, source="test")
    ds = read_dataset(src, stop_before_pixels=True)
    assert first.path == tmp_path / "store" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert first.path.read_bytes() == data  # byte for byte as received
    assert (first.replaced, first.size, first.source) == (False, len(data), "test")
    assert first.transfer_syntax_uid == ExplicitVRLittleEndian
    again = store.put(data)
    assert again.path == first.path and again.replaced
    assert _all_files(tmp_path / "store") == {first.path}  # no temporary files left
    assert list(store.iter_instances()) == [first.path]
    assert list(store.iter_instances(ds.StudyInstanceUID)) == [first.path]


def test_put_raw_dataset_with_meta_is_a_valid_part10_file(tmp_path, ct_study):
    store = InstanceStore(tmp_path / "store")
    raw, meta = _split(ct_study.files[1])
    inst = store.put(raw, meta, source="c-store:X")
    back = read_dataset(inst.path)
    orig = read_dataset(ct_study.files[1])
    assert back.SOPInstanceUID == orig.SOPInstanceUID == inst.sop_instance_uid
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.PixelData == orig.PixelData
    assert inst.path.read_bytes().endswith(raw)


def test_put_dataset(tmp_path, ct_study):
    store = InstanceStore(tmp_path / "store")
    ds = read_dataset(ct_study.files[2])
    inst = store.put(ds)
    assert read_dataset(inst.path).SOPInstanceUID == ds.SOPInstanceUID
    assert inst.sop_class_uid == CTImageStorage


@pytest.mark.parametrize(
    ("field", "value"),
    [("SOPInstanceUID", "../../x"), ("StudyInstanceUID", "../../../etc"), ("SeriesInstanceUID", "1.2/../../3"),
     ("StudyInstanceUID", "")],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_malicious_uids_never_reach_the_filesystem(tmp_path, ct_study, field, value):
    ds = read_dataset(ct_study.files[0])
    setattr(ds, field, value)
    if field == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = value
    store = InstanceStore(tmp_path / "store")
    with pytest.raises(InvalidUIDError, match=field):
        store.put(ds)
    assert _all_files(tmp_path) == set()


def test_meta_mismatch_and_garbage_rejected(tmp_path, ct_study):
    store = InstanceStore(tmp_path / "store")
    raw, meta = _split(ct_study.files[0])
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    with pytest.raises(InvalidInstanceError, match="differs"):
        store.put(raw, meta)
    with pytest.raises(InvalidInstanceError):
        store.put(b"\x00" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(InvalidInstanceError):
        store.put(b"not dicom at all")
    assert _all_files(tmp_path) == set()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_write_failure_is_a_storage_error(tmp_path, ct_study):
    store = InstanceStore(tmp_path / "store")
    (tmp_path / "store").chmod(0o500)
    try:
        with pytest.raises(StorageError):
            store.put(ct_study.files[0].read_bytes())
    finally:
        (tmp_path / "store").chmod(0o700)


def test_storage_error_when_folder_is_a_file(tmp_path, ct_study):
    """Works as root too: the study folder's name is taken by a file."""
    store = InstanceStore(tmp_path / "store")
    ds = read_dataset(ct_study.files[0], stop_before_pixels=True)
    (tmp_path / "store" / ds.StudyInstanceUID).write_text("in the way")
    with pytest.raises(StorageError):
        store.put(ct_study.files[0].read_bytes())


def test_remove_incomplete(tmp_path, ct_study):
    store = InstanceStore(tmp_path / "store")
    inst = store.put(ct_study.files[0].read_bytes())
    stale = inst.path.parent / ".incoming-abc.part"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    assert store.remove_incomplete(older_than_s=60) == 1
    assert _all_files(tmp_path / "store") == {inst.path}

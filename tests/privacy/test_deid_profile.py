"""PS3.15 Table E.1-1 on a synthetic instance holding every attribute of the table (also in
sequences at depths 1-3, a private sequence, overlays and curves): no sentinel byte survives;
each option changes exactly the attributes its column names; keys and dates behave."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from lesionlens.dicom.write import save_dataset
from lesionlens.errors import ConfigError
from lesionlens.privacy.deid import Deidentifier, Quarantined
from lesionlens.privacy.deid_options import DeidConfig, MaskRegion, clean_text
from lesionlens.privacy.deid_table import OPTION_INFO, DeidOption, load_profile_table, parse_options
from lesionlens.privacy.uidmap import KEY_ENV, DeidKey, make_key_file, resolve_key

KEY = DeidKey(b"k" * 32, source="test")
OTHER_KEY = DeidKey(b"o" * 32, source="test")
SENTINELS = [b"QZX", b"1.2.999.777", b"19770707", b"070707.777", b"077Y", b"770770"]
_NUMERIC_BINARY = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}


def _value(vr: str, n: int) -> object:
    text = f"QZX{n:04d}"
    return {
        "DA": "19770707",
        "TM": "070707.777",
        "DT": "19770707070707.777",
        "UI": f"1.2.999.777.{n}",
        "AS": "077Y",
        "IS": "770770770",
        "DS": "770770.77",
        "UR": f"http://qzx.example/{text}",
        "CS": text,
        "AE": text,
        "SH": text,
        "PN": f"{text}^QZXGIVEN",
    }.get(vr, b"QZXBIN" + f"{n:04d}".encode() if vr in ("OB", "OW", "UN", "OF", "OD", "OL") else (
        7707 if vr in _NUMERIC_BINARY else f"{text} free text"))


def _item(depth: int, n: int) -> Dataset:
    """A sequence item with identifying table attributes, nesting down to depth 3, plus a private tag."""
    item = Dataset()
    item.PersonName = f"QZXI{depth}{n:03d}^X"
    item.InstitutionName = f"QZXI{depth} hospital"
    item.ReferencedSOPInstanceUID = f"1.2.999.777.{depth}.{n}"
    item.StudyDate = "19770707"
    item.add_new(0x00091010, "LO", f"QZXP{depth}")
    if depth < 3:
        item.ContentSequence = Sequence([_item(depth + 1, n)])
    return item


def sentinel_dataset() -> Dataset:
    """Every plain row of Table E.1-1 with a sentinel value of its VR, plus overlays/curves."""
    ds = Dataset()
    for i, row in enumerate(load_profile_table().rows):
        if row.tag is None or row.tag >> 16 in (0x0000, 0x0002):
            continue
        if row.vr == "SQ":
            item = _item(1, i)
            if row.tag in (0x00401101, 0x00080082):  # identity code sequences: the code itself identifies
                item.CodeValue = f"QZXC{i:04d}"
                item.CodingSchemeDesignator = "99QZX"
                item.CodeMeaning = "QZX person"
            ds.add_new(row.tag, "SQ", Sequence([item]))
        else:
            ds.add_new(row.tag, row.vr, _value(row.vr, i))
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BurnedInAnnotation = "NO"
    ds.SpecificCharacterSet = "ISO_IR 100"
    priv = Dataset()
    priv.add_new(0x00110010, "LO", "QZX CREATOR 2")
    priv.add_new(0x00111001, "LO", "QZX private nested")
    ds.add_new(0x00290010, "LO", "QZX CREATOR")
    ds.add_new(0x00291010, "SQ", Sequence([priv]))
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000022, "LO", "QZX overlay description")
    ds.add_new(0x60003000, "OW", b"QZXOVL01")
    ds.add_new(0x50000022, "LO", "QZX curve description")
    ds.add_new(0x50003000, "OB", b"QZXCRV01")
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(16, dtype="<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.SourceApplicationEntityTitle = "QZXAE"
    return ds


def _run(options: tuple[str, ...] = (), key: DeidKey = KEY, ds: Dataset | None = None) -> Dataset:
    out = Deidentifier(DeidConfig.build(key, options)).deidentify_dataset(ds or sentinel_dataset())
    assert isinstance(out, Dataset)
    return out


def test_table_is_complete_and_well_formed() -> None:
    table = load_profile_table()
    assert len(table) >= 600
    basics = {r.basic for r in table.rows}
    assert basics == {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    tags = {r.tag_text for r in table.rows}
    assert {"00100010", "00100020", "0020000d", "00080018", "00081155", "00200052", "50xxxxxx",
            "60xx3000", "ggggeeee"} <= tags
    assert all(r.vr for r in table.rows if r.tag is not None)
    assert all(r.options.get("retain_uids") == "K" for r in table.rows if r.basic == "U" and r.tag != 0x04000100)


def test_no_sentinel_survives_in_the_written_file(tmp_path: Path) -> None:
    ds = _run()
    path = save_dataset(ds, tmp_path / "out.dcm")
    data = path.read_bytes()
    found = {s.decode(): data.count(s) for s in SENTINELS if s in data}
    assert found == {}
    assert ds.PatientIdentityRemoved == "YES"
    assert not any(t.is_private for t in ds.keys())
    assert not any((t.group & 0xFF00) in (0x5000, 0x6000) for t in ds.keys())
    for row in load_profile_table().rows:
        if row.tag is not None and row.vr in _NUMERIC_BINARY and row.tag in ds:
            assert ds[row.tag].value != 7707, row.keyword
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100"] and ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert ds.PatientID.startswith("LL") and ds.PatientName == f"ANON^{ds.PatientID}"


def test_nested_references_are_remapped_consistently() -> None:
    src = sentinel_dataset()
    original = src.ReferencedImageSequence[0].ContentSequence[0].ReferencedSOPInstanceUID
    out = _run(ds=src)
    nested = out.ReferencedImageSequence[0].ContentSequence[0]
    assert nested.ReferencedSOPInstanceUID == KEY.map_uid(original)
    assert nested.PersonName == "ANONYMOUS" and nested.StudyDate in ("", None) and 0x00091010 not in nested
    assert out.PersonIdentificationCodeSequence[0].CodeValue == "ANONYMIZED"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in out.file_meta


_DUMMY_VALUES = {"", "ANONYMIZED", "ANONYMOUS", "19000101", "000000", "19000101000000", "0"}


def _top_changes(before: Dataset, after: Dataset, cleaned: frozenset[int] = frozenset()) -> set[int]:
    """Top-level, non-sequence, non-binary input attributes whose value changed or vanished; for
    ``cleaned`` tags (option C: text cleaned) only removal, emptying or a dummy counts."""
    out = set()
    for elem in before:
        if elem.VR == "SQ" or elem.VR in _NUMERIC_BINARY or elem.tag.is_private or elem.tag.group >= 0x5000:
            continue
        new = after.get(elem.tag)
        if new is None:
            out.add(int(elem.tag))
        elif int(elem.tag) in cleaned:
            if new.is_empty or str(new.value) in _DUMMY_VALUES:
                out.add(int(elem.tag))
        elif new.value != elem.value:
            out.add(int(elem.tag))
    return out


@pytest.mark.parametrize("option", [o for o in DeidOption if o not in (
    DeidOption.RETAIN_LONG_MODIFIED_DATES, DeidOption.RETAIN_SAFE_PRIVATE, DeidOption.CLEAN_STRUCTURED_CONTENT)])
def test_each_option_keeps_exactly_its_column(option: DeidOption) -> None:
    src = sentinel_dataset()
    basic = _top_changes(src, _run(ds=sentinel_dataset()))
    column = OPTION_INFO[option][0]
    cleaned = frozenset(r.tag for r in load_profile_table().rows if r.tag and r.options.get(column) == "C")
    with_option = _top_changes(src, _run((option.value,), ds=sentinel_dataset()), cleaned)
    expected = {r.tag for r in load_profile_table().rows if r.tag in basic and (
        r.options.get(column) == "K" or (r.options.get(column) == "C" and not r.vr.startswith("O")))}  # OB: removed
    assert expected, option
    assert with_option <= basic
    assert basic - with_option == expected
    out = _run((option.value,))
    assert OPTION_INFO[option][1] in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def _study(patient: str, day: str, uid: str) -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.PatientName = patient, "Doe^Jane"
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = CTImageStorage, uid, uid + ".1"
    ds.StudyDate, ds.SeriesDate, ds.StudyTime = day, day, "101500"
    ds.AcquisitionDateTime = day + "101500.5"
    ds.PatientBirthDate = "19600101"
    return ds


def test_modified_dates_keep_every_interval_to_the_day() -> None:
    opts = ("retain-long-modified-dates",)
    a = _run(opts, ds=_study("P1", "20200115", "1.2.3.1"))
    b = _run(opts, ds=_study("P1", "20210310", "1.2.3.2"))
    c = _run(opts, ds=_study("P2", "20200115", "1.2.3.3"))

    def d(v: str) -> date:
        return date(int(v[:4]), int(v[4:6]), int(v[6:8]))

    assert (d(b.StudyDate) - d(a.StudyDate)).days == (date(2021, 3, 10) - date(2020, 1, 15)).days
    assert a.StudyDate != "20200115" and a.SeriesDate == a.StudyDate and a.StudyTime == "101500"
    assert a.AcquisitionDateTime == a.StudyDate + "101500.5"
    assert c.StudyDate != a.StudyDate  # another patient, another shift (keyed)
    assert a.PatientBirthDate in ("", None)  # Z in every option column
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"


def test_retain_uids_and_keys() -> None:
    src = sentinel_dataset()
    kept = _run(("retain-uids",), ds=sentinel_dataset())
    assert kept.SOPInstanceUID == src.SOPInstanceUID and kept.FrameOfReferenceUID == src.FrameOfReferenceUID
    one, two, other = _run(), _run(), _run(key=OTHER_KEY)
    assert one.SOPInstanceUID == two.SOPInstanceUID == KEY.map_uid(src.SOPInstanceUID)
    assert one.SOPInstanceUID.startswith("2.25.") and len(one.SOPInstanceUID) <= 64
    assert other.SOPInstanceUID != one.SOPInstanceUID and other.PatientID != one.PatientID


def test_safe_private_and_clean_structured_content() -> None:
    ds = _study("P1", "20200115", "1.2.3.9")
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019100C, "IS", "1000")
    ds.add_new(0x0019100D, "CS", "DIRECTIONAL")
    ds.add_new(0x00191008, "CS", "QZX")
    item = Dataset()
    item.ValueType, item.TextValue = "TEXT", "Jane Doe nodule 12 mm seen 2020-01-15"
    ds.ContentSequence = Sequence([item])
    out = _run(("retain-safe-private", "clean-structured-content"), ds=ds)
    assert out[0x0019100C].value == "1000" and out[0x00190010].value == "SIEMENS MR HEADER"
    assert 0x00191008 not in out
    assert out.ContentSequence[0].TextValue == "* * nodule 12 mm seen *"
    basic = _run(ds=_study("P1", "20200115", "1.2.3.9"))
    assert not any(t.is_private for t in basic.keys())


def test_burned_in_quarantine_and_mask() -> None:
    ds = sentinel_dataset()
    ds.BurnedInAnnotation = "YES"
    assert isinstance(Deidentifier(DeidConfig(KEY)).deidentify_dataset(ds), Quarantined)
    us = sentinel_dataset()
    del us.BurnedInAnnotation
    us.Modality = "US"
    assert isinstance(Deidentifier(DeidConfig(KEY)).deidentify_dataset(us), Quarantined)
    cfg = DeidConfig(KEY, mask_regions=(MaskRegion.parse("1,0,3,2"),))
    out = Deidentifier(cfg).deidentify_dataset(ds)
    assert isinstance(out, Dataset) and out.BurnedInAnnotation == "NO"
    arr = out.pixel_array
    assert (arr[0:2, 1:3] == 0).all() and arr[3, 3] == 15 and arr[0, 0] == 0 and arr[0, 3] == 3
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]


def test_key_handling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match="no default key"):
        resolve_key(None)
    path = make_key_file(tmp_path / "k.key")
    assert len(path.read_bytes()) >= 32 and (path.stat().st_mode & 0o077) == 0
    with pytest.raises(ConfigError, match="already exists"):
        make_key_file(path)
    key = resolve_key(path)
    assert "secret" not in repr(key) and path.read_bytes().hex() not in repr(key)
    assert resolve_key(None, env={KEY_ENV: path.read_bytes().hex()}).secret == key.secret
    with pytest.raises(ConfigError, match="too short"):
        resolve_key(None, env={KEY_ENV: "00" * 8})
    with pytest.raises(ConfigError, match="unknown option"):
        parse_options(["retain-everything"])
    with pytest.raises(ConfigError, match="exclude"):
        parse_options(["retain-long-full-dates", "retain-long-modified-dates"])


def test_clean_text() -> None:
    assert clean_text("CT chest for DOE JOHN 0123456 on 2020/01/02", ["Doe", "John"]) == "CT chest for * * * on *"

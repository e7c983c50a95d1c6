"""``--deid`` on the way out: ``data convert --from dicom --to yolo`` and ``convert --to png|nifti``.

Tiny synthetic CT series carry PHI sentinels (Patient ID/Name, Accession Number, birth and study
dates, institution, referring physician, folder names, a notes file); the outputs must hold none
of them and none of the original UIDs, in any byte of any file, while the truth still matches.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from typer.testing import CliRunner

from lesionlens.cli.convert_cmd import DEID_WORK_PREFIX
from lesionlens.cli.main import app
from lesionlens.dicom.write import save_dataset, uid_from_seed
from lesionlens.privacy.uidmap import DeidKey
from lesionlens.synth.truth import SCHEMA, write_truth

# notes.txt read by the de-identifier (force=True) makes pydicom warn before it is reported not-DICOM
pytestmark = pytest.mark.filterwarnings("ignore:Expected implicit VR:UserWarning")

K, R, C = 12, 40, 40
DZ, DXY = 2.5, 1.0
KEY_A, KEY_B = bytes(range(32)), bytes(range(100, 132))
BIRTH, STUDY_DATE = "19230405", "20200102"
COMMON_SENTINELS = [BIRTH, STUDY_DATE, "PHIHOSPITAL", "PHIDOC", "PHIROOT", "PHINOTE", "PHINAME"]

# (folder, patient index, series index, nodule): patient 0 has two series (two studies)
CASES = [("PHINAME-a", 0, 0, True), ("PHINAME-b", 0, 1, True), ("c2", 2, 2, True),
         ("c3", 3, 3, True), ("c4", 4, 4, True), ("c5", 5, 5, False)]
N_POSITIVES = 5 * 3  # five series with a 10 mm sphere on slice 6 of 2.5 mm slices → slices 5, 6, 7


def pid(p: int) -> str:
    return f"PHIPID{p:03d}"


def uids(s: int) -> dict[str, str]:
    return {r: str(uid_from_seed("test-deid-export", s, r)) for r in ("study", "series", "for")}


def sop_uid(s: int, k: int) -> str:
    return str(uid_from_seed("test-deid-export", s, "sop", k))


def _slice(p: int, s: int, k: int, hu: np.ndarray) -> Dataset:
    u = uids(s)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid(s, k)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = u["study"], u["series"], u["for"]
    ds.PatientID, ds.PatientName, ds.AccessionNumber = pid(p), f"PHINAME^ALICE{p}", f"PHIACC{s:04d}"
    ds.PatientBirthDate, ds.StudyDate, ds.SeriesDate = BIRTH, STUDY_DATE, STUDY_DATE
    ds.InstitutionName, ds.ReferringPhysicianName = "PHIHOSPITAL", "PHIDOC^BOB"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-20.0, -20.0, k * DZ]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [DXY, DXY], DZ
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = R, C, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = hu[k].tobytes()
    return ds


def write_series(folder: Path, p: int, s: int, nodule: bool) -> None:
    """A 12×40×40 lung-like CT series (+ a 10 mm, 50 HU sphere) with truth.json and a notes file."""
    centre = np.array([-20.0 + 20 * DXY, -20.0 + 18 * DXY, 6 * DZ])
    zz, yy, xx = np.meshgrid(np.arange(K) * DZ, np.arange(R) * DXY - 20.0, np.arange(C) * DXY - 20.0, indexing="ij")
    hu = np.full((K, R, C), -850, np.int16)
    if nodule:
        hu[np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2) <= 5.0] = 50
    for k in range(K):
        save_dataset(_slice(p, s, k, hu), folder / f"PHINAME_{k:02d}.dcm")
    nodules = [{"id": 1, "type": "solid", "center_lps_mm": centre.tolist(), "diameter_mm": 10.0}] if nodule else []
    u = uids(s)
    write_truth({"schema": SCHEMA, "patient_id": pid(p), "patient_name": f"PHINAME^ALICE{p}",
                 "study_instance_uid": u["study"], "series_instance_uid": u["series"],
                 "frame_of_reference_uid": u["for"], "nodules": nodules}, folder)
    (folder / "notes.txt").write_text(f"PHINOTE {pid(p)} PHINAME^ALICE{p}\n")


def sentinels(cases: list[tuple[str, int, int, bool]] = CASES) -> list[str]:
    out = list(COMMON_SENTINELS)
    for _, p, s, _ in cases:
        out += [pid(p), f"ALICE{p}", f"PHIACC{s:04d}", *uids(s).values(), *(sop_uid(s, k) for k in range(K))]
    return out


def leaks(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """needle → files under ``root`` whose bytes (gunzipped too) contain it."""
    found: dict[str, list[str]] = {}
    files = [f for f in root.rglob("*") if f.is_file()]
    assert files, f"nothing written under {root}"
    for f in files:
        blobs = [f.read_bytes()]
        if f.name.endswith(".gz"):
            blobs.append(gzip.decompress(blobs[0]))
        blobs.append(str(f.relative_to(root)).encode())
        for n in needles:
            if any(n.encode() in b for b in blobs):
                found.setdefault(n, []).append(str(f.relative_to(root)))
    return found


def work_folders(out: Path) -> list[str]:
    return [p.name for p in out.absolute().parent.iterdir() if p.name.startswith(DEID_WORK_PREFIX)]


def run(*args: object) -> tuple[int, str, BaseException | None]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    text = res.output + (res.stderr if res.stderr_bytes is not None and res.stderr not in res.output else "")
    return res.exit_code, text, res.exception


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    (root / "a.key").write_bytes(KEY_A)
    (root / "b.key").write_bytes(KEY_B)
    (root / "short.key").write_bytes(b"0123456789")
    return {"a": root / "a.key", "b": root / "b.key", "short": root / "short.key"}


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("PHIROOT")
    for folder, p, s, nodule in CASES:
        write_series(root / folder, p, s, nodule)
    return root


@pytest.fixture(scope="module")
def builds(ct_root: Path, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """The training set without --deid, twice with key A, once with key B."""
    out: dict[str, tuple[Path, str]] = {}
    base = tmp_path_factory.mktemp("sets")
    for name, extra in [("plain", []), ("a1", ["--deid", "--key-file", keys["a"]]),
                        ("a2", ["--deid", "--key-file", keys["a"]]), ("b", ["--deid", "--key-file", keys["b"]])]:
        target = base / name
        code, text, exc = run("data", "convert", "--from", "dicom", "--to", "yolo", ct_root, "--out", target,
                              "--ratios", "0.5,0.25,0.25", "--seed", "3", *extra)
        assert code == 0, (text, exc)
        out[name] = (target, text)
    return out


def test_trainset_with_deid_holds_no_phi_and_no_original_uid(builds: dict[str, tuple[Path, str]]) -> None:
    needles = sentinels()
    plain, _ = builds["plain"]
    assert {pid(0), uids(0)["series"]} <= set(leaks(plain, needles))  # the scan does see identifiers
    for name in ("a1", "a2", "b"):
        out, _ = builds[name]
        assert leaks(out, needles) == {}, name
        assert work_folders(out) == []


def test_trainset_with_deid_keeps_every_box(builds: dict[str, tuple[Path, str]]) -> None:
    plain, deid = manifest(builds["plain"][0]), manifest(builds["a1"][0])

    def boxes(m: dict) -> list[list[float]]:
        return sorted(b for e in m["images"] for b in e["boxes"])

    assert sum(e["positive"] for e in plain["images"]) == N_POSITIVES
    assert sum(e["positive"] for e in deid["images"]) == N_POSITIVES
    assert boxes(deid) == boxes(plain) and len(boxes(deid)) == N_POSITIVES
    assert sorted(e["slice_index"] for e in deid["images"] if e["positive"]) == sorted([5, 6, 7] * 5)
    text = builds["a1"][1]
    # 6 series × 12 slices written; the 6 notes files are not DICOM (the truth files do not count)
    assert "de-identified: 72 file(s) written, 0 quarantined, 0 failed; 6 non-DICOM file(s) not copied" in text


def test_patient_split_groups_the_pseudonymous_patient(builds: dict[str, tuple[Path, str]]) -> None:
    key = DeidKey(KEY_A)
    images = manifest(builds["a1"][0])["images"]
    by_series: dict[str, set[tuple[str, str]]] = {}
    for e in images:
        by_series.setdefault(e["series_instance_uid"], set()).add((e["patient_id"], e["split"]))
    first, second = key.map_uid(uids(0)["series"]), key.map_uid(uids(1)["series"])
    assert by_series[first] == by_series[second] == {(key.pseudonym(pid(0)), next(iter(by_series[first]))[1])}
    assert len({e["patient_id"] for e in images}) == 5  # six series, five patients
    for e in images:
        assert Path(e["image"]).name.startswith(e["patient_id"] + "__")
        assert e["image"].startswith(f"images/{e['split']}/")


def test_same_key_same_identifiers_other_key_other_ones(builds: dict[str, tuple[Path, str]]) -> None:
    def ids(name: str) -> tuple[list[tuple[str, ...]], str]:  # (rows, fingerprint)
        m = manifest(builds[name][0])
        rows = sorted(tuple(str(e[k]) for k in ("image", "patient_id", "study_instance_uid", "series_instance_uid",
                                                 "sop_instance_uid")) for e in m["images"])
        return rows, str(m["fingerprint"])

    a1, a2, b = ids("a1"), ids("a2"), ids("b")
    assert a1 == a2
    assert a1[1] != b[1]
    for col in range(1, 5):
        assert not {r[col] for r in a1[0]} & {r[col] for r in b[0]}, col
    assert {r[1] for r in b[0]} == {DeidKey(KEY_B).pseudonym(pid(p)) for _, p, _, _ in CASES}


def test_flags_without_deid_and_bad_keys_are_one_line_user_errors(ct_root: Path, keys: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LESIONLENS_DEID_KEY", raising=False)
    data = ["data", "convert", "--from", "dicom", "--to", "yolo", ct_root, "--out", tmp_path / "o"]
    conv = ["convert", ct_root / "c2", "--out", tmp_path / "p"]
    for cmd in (data, conv):
        for extra in (["--deid-option", "retain-uids"], ["--key-file", keys["a"]]):
            code, text, _ = run(*cmd, *extra)
            assert code == 2 and "--deid-option and --key-file only apply with --deid" in text, text
        code, text, exc = run(*cmd, "--deid", "--key-file", tmp_path / "missing.key")
        assert code == 2 and "missing.key" in text and "cannot read key file" in text, text
        assert isinstance(exc, SystemExit) and "Traceback" not in text
        code, text, _ = run(*cmd, "--deid", "--key-file", keys["short"])
        assert code == 2 and "short.key" in text and "too short" in text, text
        code, text, _ = run(*cmd, "--deid")
        assert code == 2 and "no de-identification key" in text, text
        code, text, _ = run(*cmd, "--deid", "--key-file", keys["a"], "--deid-option", "retain-everything")
        assert code == 2 and "--deid-option: unknown option 'retain-everything'" in text, text
    code, text, _ = run("data", "convert", "--from", "luna16", "--to", "yolo", ct_root, "--out", tmp_path / "l",
                        "--deid", "--key-file", keys["a"])
    assert code == 2 and "--from dicom" in text
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists() and work_folders(tmp_path / "o") == []


def test_work_folder_is_removed_when_the_build_fails(keys: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "bad"
    write_series(src / "case", 7, 7, True)
    truth = json.loads((src / "case" / "truth.json").read_text())
    truth["series_instance_uid"] = "1.2.3.999"  # names a series that is not there
    (src / "case" / "truth.json").write_text(json.dumps(truth))
    out = tmp_path / "set"
    code, text, exc = run("data", "convert", "--from", "dicom", "--to", "yolo", src, "--out", out,
                          "--deid", "--key-file", keys["a"])
    assert code == 2 and "truth.json" in text and "1.2.3.999" in text, text
    assert isinstance(exc, SystemExit)
    assert work_folders(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def _screenshot(folder: Path, p: int) -> Path:
    """A Secondary Capture-like CT image (ImageType SECONDARY): quarantined by --deid."""
    ds = _slice(p, 90, 0, np.zeros((1, R, C), np.int16))
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uids(90)["series"], sop_uid(90, 0)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    return save_dataset(ds, folder / "PHINAME_dose_screen.dcm")


def test_quarantined_files_are_named_and_not_used(keys: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "PHIROOT"
    write_series(src / "case", 3, 3, True)
    shot = _screenshot(src / "case", 3)
    needles = sentinels([("case", 3, 3, True), ("case", 3, 90, False)])
    out = tmp_path / "set"
    code, text, _ = run("data", "convert", "--from", "dicom", "--to", "yolo", src, "--out", out,
                        "--ratios", "1,0,0", "--deid", "--key-file", keys["a"])
    assert code == 1, text
    assert f"quarantined (not used) {shot}" in text and "ImageType SECONDARY" in text
    assert "12 file(s) written, 1 quarantined, 0 failed" in text
    m = manifest(out)
    assert sum(e["positive"] for e in m["images"]) == 3
    assert {e["series_instance_uid"] for e in m["images"]} == {DeidKey(KEY_A).map_uid(uids(3)["series"])}
    assert leaks(out, needles) == {} and work_folders(out) == []

    png = tmp_path / "png"
    code, text, _ = run("convert", src, "--out", png, "--deid", "--key-file", keys["a"])
    assert code == 1 and f"quarantined (not used) {shot}" in text, text
    assert len(manifest(png)["outputs"]) == K and manifest(png)["deid"]["quarantined"] == 1
    assert leaks(png, needles) == {} and work_folders(png) == []


@pytest.mark.parametrize("to", ["png", "nifti"])
def test_convert_with_deid_names_and_manifest_carry_no_phi(ct_root: Path, keys: dict[str, Path], tmp_path: Path,
                                                           to: str) -> None:
    src = ct_root / "PHINAME-a"
    needles = sentinels(CASES[:1])
    key = DeidKey(KEY_A)
    code, text, _ = run("convert", src, "--out", tmp_path / "plain", "--to", to)
    assert code == 0, text
    assert pid(0) not in text  # header text never reaches the console either
    plain = manifest(tmp_path / "plain")
    assert uids(0)["series"] in leaks(tmp_path / "plain", needles)  # the scan sees what --deid removes

    archive = tmp_path / "PHIROOT.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"PHINAME/{f.name}")
    for name, source in (("deid", src), ("deid-zip", archive)):
        out = tmp_path / name
        code, text, _ = run("convert", source, "--out", out, "--to", to, "--deid", "--key-file", keys["a"])
        assert code == 0, text
        assert "de-identified: 12 file(s) written, 0 quarantined, 0 failed; 2 non-DICOM file(s) not copied" in text
        m = manifest(out)
        assert m["input"] is None and m["deid"] == {"written": 12, "quarantined": 0, "failed": 0, "not_dicom": 2}
        assert m["skipped"] == [] and m["errors"] == []  # the work copy holds the de-identified DICOM only
        assert len(m["outputs"]) == len(plain["outputs"]) == (K if to == "png" else 1)
        assert {o["series_instance_uid"] for o in m["outputs"]} == {key.map_uid(uids(0)["series"])}
        first = m["outputs"][0]["path"]
        assert first.startswith(key.map_uid(uids(0)["series"])), first
        if to == "png":
            assert all(o["source"].startswith(key.map_uid(uids(0)["study"]) + "/") for o in m["outputs"])
            assert sorted(Path(o["path"]).name for o in m["outputs"]) == [f"{k + 1:05d}.png" for k in range(K)]
        assert leaks(out, needles) == {}, name
        assert work_folders(out) == []

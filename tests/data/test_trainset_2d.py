"""``lesionlens data convert --from dicom --to yolo --kind 2d``: MG/DX DICOM folders with
``*.truth.json`` into a 1-channel training set (src/lesionlens/data/trainset_2d.py).

Small synthetic studies (256 × 192): MG and DX, MONOCHROME1 and MONOCHROME2, one negative, two
images of one patient, a MONOCHROME1/MONOCHROME2 twin of one phantom, an image whose truth is
missing and a truncated DICOM file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from lesionlens.cli.main import app
from lesionlens.data.formats.dicom_truth import read_truth_2d
from lesionlens.dicom.write import uid_from_seed
from lesionlens.engine.dataset import read_dataset_yaml
from lesionlens.synth.dicom2d import CLASS_NAMES_2D, write_2d_study
from lesionlens.synth.mammo import MammoConfig, generate_mammogram
from lesionlens.synth.xray import ChestXrayConfig, generate_chest_xray

runner = CliRunner()
ROWS, COLS = 256, 192


def _mg(seed: int, photometric: str = "MONOCHROME2", **kw: object):  # type: ignore[no-untyped-def]
    return generate_mammogram(seed, MammoConfig(rows=ROWS, cols=COLS, photometric=photometric, **kw))  # type: ignore[arg-type]


def _dx(seed: int, photometric: str = "MONOCHROME2", **kw: object):  # type: ignore[no-untyped-def]
    return generate_chest_xray(seed, ChestXrayConfig(rows=ROWS, cols=COLS, photometric=photometric, **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src2d")
    write_2d_study(_mg(11, "MONOCHROME1"), root / "PA", patient_id="PA")  # PA: two images, one MONOCHROME1
    write_2d_study(_mg(12), root / "PA", patient_id="PA")
    twin_uids = {f"{k}_instance_uid": str(uid_from_seed("twin", 11, k)) for k in ("study", "series", "sop")}
    write_2d_study(_mg(11, "MONOCHROME2"), root / "PB", filename="twin.dcm", patient_id="PB", **twin_uids)
    write_2d_study(_dx(3), root / "PC", patient_id="PC")
    write_2d_study(_dx(4, "MONOCHROME1"), root / "PD", patient_id="PD")
    write_2d_study(_mg(13, masses=0, calcification_clusters=0), root / "PE", patient_id="PE")  # negative
    for pid, seed in (("PF", 14), ("PG", 15)):
        write_2d_study(_mg(seed), root / pid, patient_id=pid)
    lost = write_2d_study(_dx(5), root / "PH", patient_id="PH")
    lost.with_name(lost.stem + ".truth.json").unlink()  # an image without truth
    good = root / "PC" / "dx-3.dcm"
    (root / "PI").mkdir()
    (root / "PI" / "broken.dcm").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])  # truncated
    return root


def _convert(src: Path, out: Path, *extra: str) -> tuple[int, str]:
    r = runner.invoke(app, ["data", "convert", str(src), "--from", "dicom", "--to", "yolo", "--out", str(out),
                            "--kind", "2d", *extra])
    text = r.output + (r.stderr if r.stderr_bytes is not None else "")
    return r.exit_code, text


@pytest.fixture(scope="module")
def built(src: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("set2d") / "ds"
    code, text = _convert(src, out, "--ratios", "0.6,0.2,0.2")
    assert code == 0, text
    return out, text


def _manifest(out: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {e["source"]: e for e in json.loads((out / "manifest.json").read_text())["images"]}


def _label_boxes(out: Path, entry: dict) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    rows = [line.split() for line in (out / entry["label"]).read_text().splitlines() if line.strip()]
    a = np.array(rows, np.float64).reshape(-1, 5)
    w, h = entry["width"], entry["height"]
    cx, cy, bw, bh = a[:, 1] * w, a[:, 2] * h, a[:, 3] * w, a[:, 4] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1), a[:, 0].astype(int)


def _truth(src: Path, source: str):  # type: ignore[no-untyped-def]
    p = src / source
    return read_truth_2d(p.with_name(p.stem + ".truth.json"))


def test_layout_labels_and_report(src: Path, built: tuple[Path, str]) -> None:
    out, text = built
    info = read_dataset_yaml(out)
    assert info.channels == 1 and info.names == list(CLASS_NAMES_2D) and info.format == "npy-gray"
    entries = _manifest(out)
    assert sorted(entries) == ["PA/mg-11.dcm", "PA/mg-12.dcm", "PB/twin.dcm", "PC/dx-3.dcm", "PD/dx-4.dcm",
                               "PE/mg-13.dcm", "PF/mg-14.dcm", "PG/mg-15.dcm"]
    n_boxes = 0
    for source, e in entries.items():
        ann, names = _truth(src, source)
        boxes, classes = _label_boxes(out, e)
        assert len(boxes) == len(ann.boxes), source
        np.testing.assert_allclose(boxes, ann.boxes, atol=1e-3)
        assert [CLASS_NAMES_2D[c] for c in classes] == [names[int(i)] for i in ann.labels]
        img = np.load(out / e["image"])
        assert img.shape == (1, ROWS, COLS) and img.dtype == np.float32
        n_boxes += len(boxes)
    assert n_boxes > 8
    assert entries["PE/mg-13.dcm"]["positive"] is False and (out / entries["PE/mg-13.dcm"]["label"]).read_text() == ""
    # patient split: both images of PA in one split; every split folder exists
    assert entries["PA/mg-11.dcm"]["split"] == entries["PA/mg-12.dcm"]["split"]
    assert all((out / "images" / s).is_dir() for s in ("train", "val", "test"))
    # skipped and broken files are named; the rest converted
    flat = " ".join(text.split())
    assert "skipped (no truth file)" in flat and "dx-5.dcm" in flat
    assert "broken.dcm" in flat
    assert not (out / "images" / "_staging").exists()


def test_monochrome1_is_negated(src: Path, built: tuple[Path, str]) -> None:
    """MG seed 11 as MONOCHROME1 (PA) and as MONOCHROME2 (PB): the same picture once both are
    dense-bright, i.e. the stored arrays agree up to an increasing affine map."""
    out, _ = built
    entries = _manifest(out)
    m1, m2 = entries["PA/mg-11.dcm"], entries["PB/twin.dcm"]
    assert m1["inverted"] is True and m2["inverted"] is False
    a = np.load(out / m1["image"]).ravel().astype(np.float64)
    b = np.load(out / m2["image"]).ravel().astype(np.float64)
    assert np.corrcoef(a, b)[0, 1] > 0.99
    stored = pydicom.dcmread(src / "PA" / "mg-11.dcm").pixel_array.astype(np.float32)
    np.testing.assert_array_equal(np.load(out / m1["image"])[0], -stored)


def test_max_side_scales_boxes(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    code, text = _convert(src, out, "--max-side", "128")
    assert code == 0, text
    for source, e in _manifest(out).items():
        img = np.load(out / e["image"])
        assert img.shape == (1, 128, 96), source
        sx, sy = e["scale"]
        assert sx == pytest.approx(0.5) and sy == pytest.approx(0.5)
        ann, _ = _truth(src, source)
        boxes, _ = _label_boxes(out, e)
        np.testing.assert_allclose(boxes, ann.boxes * np.array([sx, sy, sx, sy]), atol=1e-3)
    e = _manifest(out)["PC/dx-3.dcm"]
    full = np.asarray(pydicom.dcmread(src / "PC" / "dx-3.dcm").pixel_array, np.float64)
    np.testing.assert_allclose(np.load(out / e["image"])[0, 0, 0], full[:2, :2].mean(), rtol=1e-5)  # area mean


def test_cli_refusals(src: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["data", "convert", str(src), "--from", "dicom", "--to", "yolo", "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and "--kind 2d" in " ".join(r.output.split())
    code, text = _convert(src, tmp_path / "b", "--context-mm", "0")
    assert code != 0 and "--context-mm" in text
    r = runner.invoke(app, ["data", "convert", str(src), "--from", "dicom", "--to", "yolo", "--out", str(tmp_path / "c"),
                            "--max-side", "512"])
    assert r.exit_code != 0 and "--kind 2d" in " ".join(r.output.split())


def test_deid_2d(src: Path, tmp_path: Path) -> None:
    """--deid: the truths follow their images to the new UIDs and file names; PatientIDs pseudonymous."""
    key = tmp_path / "k.key"
    key.write_bytes(b"k" * 32)
    clean = tmp_path / "src"
    shutil.copytree(src, clean, ignore=shutil.ignore_patterns("broken.dcm"))
    out = tmp_path / "deid"
    code, text = _convert(clean, out, "--deid", "--key-file", str(key))
    assert code == 0, text
    doc = json.loads((out / "manifest.json").read_text())
    entries = doc["images"]
    assert len(entries) == 8
    assert not {e["patient_id"] for e in entries} & {"PA", "PB", "PC", "PD", "PE", "PF", "PG"}
    expected = sum(len(read_truth_2d(p)[0].boxes) for p in src.rglob("*.truth.json"))
    assert sum(len(e["boxes"]) for e in entries) == expected
    originals = {str(uid_from_seed("2d", "MG", 11, "sop"))}
    assert not originals & {e["sop_instance_uid"] for e in entries}
    assert not list(tmp_path.glob(".*"))  # the work folder is gone


def test_trains(built: tuple[Path, str], tmp_path: Path) -> None:
    from lesionlens.engine.config import load_config
    from lesionlens.engine.trainer import Trainer

    out, _ = built
    torch.set_num_threads(1)
    cfg = load_config(None, data=str(out / "dataset.yaml"), model="n", epochs=1, batch=4, imgsz=96, device="cpu",
                      out=str(tmp_path / "run"), steps_per_epoch=30, warmup_epochs=0.1, augment=False, threads=1)
    res = Trainer(cfg).fit()
    meta = json.loads((res.best / "meta.json").read_text())
    assert meta["input"]["kind"] == "gray" and meta["input"]["channels"] == 1
    assert res.history and np.isfinite(res.history[-1]["train_loss"]) and res.history[-1]["train_loss"] > 0
    assert (res.best / "model.safetensors").is_file()

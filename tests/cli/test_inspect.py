"""``lesionlens inspect``: JSON on a folder and a zip, table output, error exit."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from series_factory import SeriesSpec, make_non_image, write_series  # noqa: E402

from lesionlens.cli.main import app  # noqa: E402
from lesionlens.dicom.write import save_dataset  # noqa: E402

runner = CliRunner()


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "study"
    write_series(SeriesSpec(seed="main", n_slices=12, skip=(6,), series_number=2), d)
    write_series(
        SeriesSpec(seed="loc", n_slices=1, series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), d
    )
    save_dataset(make_non_image("sr"), d / "sr.dcm")
    (d / "readme.txt").write_text("not an image")
    return d


def _check(doc: dict, skipped_path: str) -> None:
    (study,) = doc["studies"]
    assert study["study_instance_uid"]
    series = {s["series_number"]: s for s in study["series"]}
    main, loc, sr = series[2], series[1], series[90]
    assert main["selected"] is True and "volumetric" in main["reason"]
    assert main["modality"] == "CT" and main["n_instances"] == 11
    assert (main["rows"], main["columns"], main["frames"]) == (32, 32, 11)
    assert any("missing-slice" in w for w in main["warnings"]) and main["errors"] == []
    assert loc["selected"] is False and "localizer" in loc["reason"].lower()
    assert sr["selected"] is False and "non-image" in sr["reason"] and sr["frames"] == 0
    for s in study["series"]:
        assert set(s) >= {"series_instance_uid", "modality", "n_instances", "rows", "columns", "frames",
                          "selected", "reason", "warnings", "errors"}
    assert [s["path"] for s in doc["skipped"]] == [skipped_path]
    assert "text" in doc["skipped"][0]["reason"]


def test_inspect_json_folder(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    res = runner.invoke(app, ["inspect", str(d), "--json"])
    assert res.exit_code == 0, res.output
    _check(json.loads(res.stdout), str(d / "readme.txt"))


def test_inspect_json_zip(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(d.iterdir()):
            zf.write(p, f"inner/{p.name}")
    res = runner.invoke(app, ["inspect", str(archive), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    _check(doc, f"{archive}!inner/readme.txt")


def test_inspect_table_and_missing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lesionlens.cli._common import console

    monkeypatch.setattr(console, "width", 200)  # test runners set COLUMNS=80; paths would fold
    d = _folder(tmp_path)
    res = runner.invoke(app, ["inspect", str(d)], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    # the table may fold long cells at narrow terminal widths: look for the words
    assert "CHEST" in res.stdout and "AXIAL" in res.stdout
    assert "Skipped files" in res.stdout and "readme.txt" in res.stdout
    res = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "does not exist" in res.output

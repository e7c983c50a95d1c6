"""report.pdf: rendered with poppler (pdftoppm, pdftotext) and checked for its content."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import require_tool
from PIL import Image

from lesionlens.errors import OutputError
from lesionlens.pipeline.clinical import suggest
from lesionlens.pipeline.types import NOTICE, StudyResult
from lesionlens.reports.keyimages import render_key_images
from lesionlens.reports.pdf import write_pdf

SHA = "cd34" * 16


def pdftotext(pdf: Path) -> str:
    exe = require_tool("pdftotext")
    out = subprocess.run([exe, "-enc", "UTF-8", str(pdf), "-"], capture_output=True, timeout=60, check=True)
    return out.stdout.decode("utf-8")


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyResult, Path, dict[str, dict[str, Path]]]:
    from pipeline.phantom_results import phantom_study

    root = tmp_path_factory.mktemp("pdf")
    res = phantom_study(root).result
    res.patient["PatientName"] = "Müller^Jürgen"
    res.model["sha256"] = SHA
    res.suggestions = suggest(res)
    out = root / "out"
    images = render_key_images(res.series[0].volume, res.lesions, out / "images")
    return res, write_pdf(res, out, images), images


def test_page_one_renders_and_is_not_blank(report: tuple[StudyResult, Path, dict], tmp_path: Path) -> None:
    _, pdf, _ = report
    exe = require_tool("pdftoppm")
    subprocess.run([exe, "-png", "-r", "50", str(pdf), str(tmp_path / "page")], check=True, timeout=60,
                   capture_output=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert pages and pages[0].name == "page-1.png"
    img = np.asarray(Image.open(pages[0]).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (585, 414)  # A4 at 50 dpi
    grey = img.mean(axis=-1)
    assert (grey < 128).mean() > 0.01 and grey.std() > 10  # text and rules, not an empty page
    red = (img[..., 0] > 100) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red[:80].sum() > 20  # the notice box at the top
    # the key images (large dark-grey areas) are drawn: text alone darkens ~1-3 % of a page
    dark = [float((np.asarray(Image.open(p).convert("L")) < 100).mean()) for p in pages]
    assert max(dark) > 0.05


def test_text_has_ids_sizes_category_model_and_notice(report: tuple[StudyResult, Path, dict]) -> None:
    res, pdf, _ = report
    text = pdftotext(pdf)
    one = flat(text)
    for les in res.lesions:
        m = les.measurements
        assert m is not None
        assert les.tracking_id in text
        assert f"{m.long_axis.length_mm:.1f} × {m.short_axis.length_mm:.1f}" in one
        assert f"{les.tracking_id}: solid nodule, {m.long_axis.length_mm:.1f} × " in one  # key image caption
    lr = res.suggestions[0]
    assert lr.system == "Lung-RADS v2022" and f"Lung-RADS v2022: {lr.category}" in one
    assert res.suggestions[1].management in one and "COMPUTED SUGGESTION" in one
    assert NOTICE in one
    assert SHA in one and "Müller, Jürgen" in one
    assert "Text is set in DejaVu Sans" in one or "Helvetica" in one


@pytest.mark.parametrize("name", ["Müller^Jürgen", "山田^太郎=やまだ^たろう", "Ωmega^Δ \U0001F600 <b>&amp; \x07"])
def test_non_ascii_names_never_crash(tmp_path: Path, name: str) -> None:
    res = StudyResult("1.2.3", patient={"PatientName": name, "PatientID": "ID&<1>"}, status="no-series",
                      messages=["nothing to analyse"], model={"name": "m", "version": "1", "sha256": SHA})
    text = flat(pdftotext(write_pdf(res, tmp_path, {})))
    assert "ID&<1>" in text
    if name.startswith("Müller"):
        assert "Müller, Jürgen" in text
    elif name.startswith("山田"):
        # a CJK fallback font where the system has one, else "?" and the report says so
        assert "山田, 太郎 = やまだ, たろう" in text or "shown as '?'" in text
    else:
        assert "Ωmega, Δ ? <b>&amp;" in text  # the emoji (outside the fonts' plane) is a "?"
        assert "1 character(s) that no available font covers are shown as '?'" in text


def test_no_series_study_shows_message_and_no_findings(tmp_path: Path) -> None:
    res = StudyResult("1.2.3", status="no-series", messages=["nothing to analyse: model 'default' needs a CT series"],
                      model={"name": "m", "version": "1", "sha256": SHA})
    text = flat(pdftotext(write_pdf(res, tmp_path, {})))
    assert "Not analysed" in text and "nothing to analyse: model 'default' needs a CT series" in text
    assert "Findings" not in text and "Key images" not in text and NOTICE in text


def test_missing_key_image_files_are_left_out(report: tuple[StudyResult, Path, dict], tmp_path: Path) -> None:
    res, _, images = report
    broken = {tid: {"slice": tmp_path / "gone.png", "crop": d["crop"]} for tid, d in images.items()}
    text = flat(pdftotext(write_pdf(res, tmp_path, broken)))
    assert "Key images" in text and res.lesions[0].tracking_id in text


def test_unwritable_folder_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="PDF report"):
        write_pdf(StudyResult("1"), tmp_path / "file", {})
    assert not list(tmp_path.glob(".tmp-*"))

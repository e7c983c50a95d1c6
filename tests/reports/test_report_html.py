"""report.html: opened in real headless Chromium; content, escaping, self-containment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import require_tool
from PIL import Image

from lesionlens.dicom.types import Problem
from lesionlens.errors import OutputError
from lesionlens.pipeline.clinical import suggest
from lesionlens.pipeline.types import NOTICE, StudyResult
from lesionlens.reports.html import format_date, format_person_name, report_content, write_html
from lesionlens.reports.keyimages import render_key_images

SHA = "ab12" * 16
EVIL = "Doe^John<script>document.title='pwned'</script>"
NO_SERIES_MSG = "nothing to analyse: model 'default' needs a CT series. Found: MR series 3 'T1 <axial>': not selected"


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Callable[[list[str]], str]:
    """Run headless Chromium with its profile and temporary files in a short folder of the
    test's own (its singleton socket path must stay under ~100 characters); returns stdout."""
    exe = require_tool("chromium")
    base = tmp_path_factory.mktemp("chr")
    runs = iter(range(1000))

    def run(args: list[str]) -> str:
        work = base / str(next(runs))
        work.mkdir()
        env = {**os.environ, "HOME": str(work), "TMPDIR": str(work), "XDG_CONFIG_HOME": str(work),
               "XDG_CACHE_HOME": str(work)}
        cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={work / 'p'}", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert done.returncode == 0, f"chromium exited with {done.returncode}: {done.stderr[-3000:]}"
        return done.stdout

    return run


class Tables(HTMLParser):
    """Cell texts of every table row, by table id; and the document title."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_title = False
        self.title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data


def parse(dom: str) -> Tables:
    t = Tables()
    t.feed(dom)
    return t


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyResult, Path]:
    from pipeline.phantom_results import phantom_study

    root = tmp_path_factory.mktemp("html")
    res = phantom_study(root).result
    res.patient["PatientName"] = EVIL
    res.study["AccessionNumber"] = "ACC<b>42</b>"
    res.model["sha256"] = SHA
    res.suggestions = suggest(res)
    out = root / "out"
    images = render_key_images(res.series[0].volume, res.lesions, out / "images")
    return res, write_html(res, out, images)


@pytest.fixture(scope="module")
def dom(report: tuple[StudyResult, Path], chromium: Callable[[list[str]], str]) -> str:
    _, path = report
    return chromium(["--dump-dom", path.as_uri()])


def test_dom_has_every_finding_with_its_sizes(report: tuple[StudyResult, Path], dom: str) -> None:
    res, _ = report
    rows = parse(dom).tables["findings-table"]
    assert rows[0][:6] == ["ID", "Series", "Location", "Slice", "Type", "Long × short axis (mm)"]
    body = {r[0]: r for r in rows[1:]}
    assert set(body) == {les.tracking_id for les in res.lesions} and len(body) >= 3
    for les in res.lesions:
        m = les.measurements
        assert m is not None and les.location is not None
        r = body[les.tracking_id]
        assert r[5] == f"{m.long_axis.length_mm:.1f} × {m.short_axis.length_mm:.1f}"
        assert r[6] == f"{m.mean_diameter_mm:.1f}"
        assert r[7] == f"{m.volume_mm3:,.0f}" and r[8] == f"{m.mean_hu:.0f}"
        assert r[3] == f"{les.location.slice_number} / {res.series[0].volume.pixels.shape[0]}"
        assert r[2].startswith(f"{les.location.side} lung") and r[4] == f"{m.nodule_type} nodule"
        assert r[9] == f"{les.confidence * 100:.0f} %"


def test_dom_has_notice_model_suggestions_and_images(report: tuple[StudyResult, Path], dom: str) -> None:
    res, _ = report
    assert dom.count(NOTICE) == 2  # top banner and footer
    assert SHA in dom
    tables = parse(dom).tables
    assert [r[1] for r in tables["timings"]][:2] == [f"{res.timings['read']:.2f} s", f"{res.timings['inference']:.2f} s"]
    for sg in res.suggestions:
        assert escape(f"{sg.system}: {sg.category}", quote=False) in dom and escape(sg.management, quote=False) in dom
    assert dom.count("computed suggestion") >= 2
    assert "Lung-RADS v2022" in dom and "Fleischner 2017" in dom
    # every key image is embedded: nothing outside the page is referenced
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom)) == 2 * len(res.lesions)
    assert not re.search(r'(?:src|href)="(?!data:)', dom)
    assert "The largest is L1" in dom or len(res.lesions) == 1


def test_header_values_are_escaped(dom: str) -> None:
    t = parse(dom)
    # PN "=" separates component groups, hence " = "; the script did not run (the title is not "pwned")
    assert t.title == "LesionLens report — Doe, John<script>document.title = 'pwned'</script>"
    assert "<script" not in dom  # the page has no script of its own; the name's is text
    assert "Doe, John&lt;script&gt;document.title = 'pwned'&lt;/script&gt;" in dom
    study = {r[0]: r[1] for r in t.tables["table0"]}
    assert study["Patient name"] == "Doe, John<script>document.title = 'pwned'</script>"
    assert study["Accession number"] == "ACC<b>42</b>" and "<b>42" not in dom


def test_screenshot_is_not_blank(report: tuple[StudyResult, Path], tmp_path: Path,
                                 chromium: Callable[[list[str]], str]) -> None:
    _, path = report
    shot = tmp_path / "shot.png"
    # the report folder copied elsewhere on its own still shows its images (they are inline)
    alone = tmp_path / "copy" / "report.html"
    alone.parent.mkdir()
    shutil.copy(path, alone)
    chromium([f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars", alone.as_uri()])
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (2400, 1200)
    grey = img.mean(axis=-1)
    assert grey.std() > 20 and (grey < 60).mean() > 0.02  # text and dark CT images, not a white page
    red = (img[..., 0] > 120) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red[:200].sum() > 200  # the notice banner at the top


def test_no_series_study_shows_its_message_and_no_findings(tmp_path: Path,
                                                           chromium: Callable[[list[str]], str]) -> None:
    res = StudyResult("1.2.3", patient={"PatientName": "Roe^Jane"}, status="no-series", messages=[NO_SERIES_MSG],
                      problems=[Problem("warning", "not-dicom", "not a DICOM file", "notes.txt")],
                      model={"name": "default", "version": "1", "sha256": SHA}, timings={"read": 0.05})
    path = write_html(res, tmp_path / "out", {})
    dom = chromium(["--dump-dom", path.as_uri()])
    assert "Not analysed" in dom and 'class="status status-no-series"' in dom
    assert escape(NO_SERIES_MSG, quote=False) in dom
    assert "notes.txt: not a DICOM file [not-dicom]" in dom
    assert "findings-table" not in dom and ">Findings<" not in dom and "Key images" not in dom
    assert "No analysis was performed: nothing to analyse" in dom and NOTICE in dom


def test_partial_study_shows_warnings_and_an_empty_series(tmp_path: Path) -> None:
    from pipeline.phantom_results import phantom_study

    res = phantom_study(tmp_path).result
    res.series[0].lesions = []
    res.series[0].warnings.append("slice 12 is missing: sizes across it are approximate")
    res.status = "partial"
    res.messages.append("series 1.2.9: pixel data could not be decoded")
    content = report_content(res)
    assert content.has_warnings and content.analysed and content.rows == []
    html = write_html(res, tmp_path / "out", {}).read_text(encoding="utf-8")
    assert "status status-partial" in html and "slice 12 is missing" in html and "could not be decoded" in html
    assert "No lesion was detected." in html and "findings-table" not in html
    assert "No pulmonary nodule was detected" in html and "The analysis is incomplete" in html


def test_formatting_helpers() -> None:
    assert format_person_name("Müller^Jürgen") == "Müller, Jürgen"
    assert format_person_name("山田^太郎=やまだ^たろう") == "山田, 太郎 = やまだ, たろう"
    assert format_person_name("Smith^John^Q^Dr^Jr") == "Smith, Dr John Q Jr"
    assert format_person_name("ANON") == "ANON" and format_person_name("") == ""
    assert format_date("20260101") == "2026-01-01" and format_date("20261301") == "20261301"


def test_unwritable_folder_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="HTML report"):
        write_html(StudyResult("1"), tmp_path / "file", {})


def test_partial_study_without_any_series_has_no_findings_section(tmp_path: Path) -> None:
    res = StudyResult("1.2", status="partial", messages=["series 1.2.9: pixel data could not be decoded"])
    c = report_content(res)
    assert not c.analysed and c.rows == []
    assert c.impression == ["No analysis was performed: series 1.2.9: pixel data could not be decoded.",
                            "The analysis is incomplete: see the problems listed above."]
    html = write_html(res, tmp_path, {}).read_text(encoding="utf-8")
    assert ">Findings<" not in html and "status status-partial" in html

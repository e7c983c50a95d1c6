"""The human-readable report, as one self-contained HTML page (``report.html``).

:func:`report_content` turns a :class:`~lesionlens.pipeline.types.StudyResult` into plain,
formatted strings (the same content feeds :mod:`lesionlens.reports.pdf`); :func:`write_html`
renders it with the Jinja2 template ``templates/report.html.j2``.

The page needs nothing outside itself: CSS is inline and key images are embedded as
``data:`` URIs, so it still shows everything when copied or mailed on its own. Header values
(PatientName, descriptions, …) are untrusted input: the template autoescapes everything.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from jinja2 import (
    Environment,
    PackageLoader,
    StrictUndefined,
    Template,
    TemplateError,
    select_autoescape,
)

from lesionlens.errors import OutputError
from lesionlens.pipeline.types import NOTICE, Lesion, StudyResult, Suggestion

DASH = "—"

_HEADER_FIELDS = (
    ("Patient name", "patient", "PatientName"), ("Patient ID", "patient", "PatientID"),
    ("Birth date", "patient", "PatientBirthDate"), ("Sex", "patient", "PatientSex"), ("Age", "patient", "PatientAge"),
    ("Study date", "study", "StudyDate"), ("Study time", "study", "StudyTime"),
    ("Study description", "study", "StudyDescription"), ("Accession number", "study", "AccessionNumber"),
    ("Referring physician", "study", "ReferringPhysicianName"), ("Institution", "study", "InstitutionName"),
)
_STATUS = {"ok": "Analysis complete", "partial": "Partial analysis: some series or files could not be analysed",
           "no-series": "Not analysed: nothing in this study could be analysed"}


@dataclass
class FindingRow:
    """One lesion as table cells (formatted strings)."""

    id: str
    series: str
    location: str
    slice: str
    type: str
    axes: str
    mean: str
    volume: str
    hu: str
    confidence: str
    long_mm: str


@dataclass
class KeyImage:
    """One lesion's key images: ``slice``/``crop`` are file paths (None when missing)."""

    id: str
    caption: str
    slice: Path | None
    crop: Path | None


@dataclass
class SeriesInfo:
    number: int
    modality: str
    description: str
    uid: str
    slices: int
    kept: int
    rejected: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class ReportContent:
    """Everything the report shows, already formatted; shared by the HTML and PDF writers."""

    title: str
    header: list[tuple[str, str]]
    study_uid: str
    status: str
    status_text: str
    analysed: bool
    messages: list[str]
    problems: list[str]
    series: list[SeriesInfo]
    rows: list[FindingRow]
    images: list[KeyImage]
    impression: list[str]
    suggestions: list[Suggestion]
    model: list[tuple[str, str]]
    timings: list[tuple[str, str]]
    notice: str
    generated: str

    @property
    def has_warnings(self) -> bool:
        return bool(self.messages or self.problems or any(s.warnings for s in self.series))


# ---------------------------------------------------------------------------------------------
# formatting


def format_person_name(pn: str) -> str:
    """DICOM PN "Family^Given^Middle^Prefix^Suffix" (with optional "=" groups) → "Family, Given Middle"."""
    groups = []
    for g in pn.split("="):
        parts = [p.strip() for p in g.split("^")]
        if not any(parts):
            continue
        family, rest = parts[0], " ".join(p for p in (parts[3:4] + parts[1:3] + parts[4:5]) if p)
        groups.append(f"{family}, {rest}" if family and rest else family or rest)
    return " = ".join(groups) if groups else pn.strip()


def format_date(da: str) -> str:
    """DICOM DA "YYYYMMDD" → "YYYY-MM-DD" (anything else unchanged)."""
    s = da.strip()
    if re.fullmatch(r"\d{8}", s):
        try:
            return _dt.date(int(s[:4]), int(s[4:6]), int(s[6:])).isoformat()
        except ValueError:
            return s
    return s


def format_time(tm: str) -> str:
    s = tm.strip()
    m = re.fullmatch(r"(\d{2})(\d{2})(\d{2})?(\.\d+)?", s)
    return f"{m.group(1)}:{m.group(2)}" + (f":{m.group(3)}" if m.group(3) else "") if m else s


def _fmt(v: float | None, fmt: str = ".1f") -> str:
    return DASH if v is None else format(float(v), fmt)


def _location(les: Lesion) -> str:
    loc = les.location
    if loc is None:
        return DASH
    parts = [f"{loc.side} lung" if loc.side else None, f"{loc.zone} zone" if loc.zone else None, loc.depth]
    return ", ".join(p for p in parts if p) or DASH


def _kind(les: Lesion) -> str:
    m = les.measurements
    if m is not None and m.nodule_type:
        return f"{m.nodule_type} {les.label}"
    return les.label


def _row(les: Lesion, series_no: int, n_slices: int) -> FindingRow:
    m = les.measurements
    slice_no = les.location.slice_number if les.location is not None else les.key_k + 1
    if m is not None:
        axes = f"{m.long_axis.length_mm:.1f} × {m.short_axis.length_mm:.1f}"
        mean, long_mm = f"{m.mean_diameter_mm:.1f}", f"{m.long_axis.length_mm:.1f}"
        vol = DASH if m.volume_mm3 is None else f"{m.volume_mm3:,.0f}"
        hu = _fmt(m.mean_hu, ".0f")
    else:
        axes, vol, hu = DASH, DASH, DASH
        mean = long_mm = _fmt(les.diameter_mm) + (" (detector)" if les.diameter_mm is not None else "")
    return FindingRow(id=les.tracking_id, series=str(series_no), location=_location(les),
                      slice=f"{slice_no} / {n_slices}", type=_kind(les), axes=axes, mean=mean, volume=vol, hu=hu,
                      confidence=f"{les.confidence * 100:.0f} %", long_mm=long_mm)


def _size_phrase(les: Lesion) -> str:
    m = les.measurements
    if m is not None:
        return (f"{m.long_axis.length_mm:.1f} × {m.short_axis.length_mm:.1f} mm "
                f"(mean diameter {m.mean_diameter_mm:.1f} mm)")
    return f"about {les.diameter_mm:.1f} mm (detector estimate)" if les.diameter_mm is not None else "of unknown size"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith(("s", "x")) else f"{n} {word}s"


def _impression(result: StudyResult) -> list[str]:
    if result.status == "no-series" or not result.series:
        why = result.messages[0] if result.messages else "no series could be analysed"
        out = [f"No analysis was performed: {why.rstrip('.')}."]
        if result.status == "partial":
            out.append("The analysis is incomplete: see the problems listed above.")
        return out
    lesions = result.lesions
    ct = any(s.volume.modality.upper() == "CT" for s in result.series)
    what = "pulmonary nodule" if ct else "lesion"
    out = []
    if not lesions:
        out.append(f"No {what} was detected by the computer-aided detection in "
                   f"{len(result.series)} analysed series.")
    else:
        labels = sorted({les.label for les in lesions})
        noun = labels[0] if len(labels) == 1 else "lesion"
        ids = ", ".join(les.tracking_id for les in lesions)
        out.append(f"{_plural(len(lesions), noun).capitalize()} detected by the computer-aided detection ({ids}).")

        def size(les: Lesion) -> float:
            m = les.measurements
            return m.mean_diameter_mm if m is not None else (les.diameter_mm or 0.0)

        big = max(lesions, key=size)
        where = _location(big)
        where = f" in the {where}" if where != DASH else ""
        slice_no = big.location.slice_number if big.location is not None else big.key_k + 1
        first = "The largest is" if len(lesions) > 1 else "It is"
        kind = _kind(big)
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        out.append(f"{first} {big.tracking_id}, {article} {kind}{where}, measuring {_size_phrase(big)} "
                   f"on slice {slice_no}.")
    if result.suggestions:
        cats = "; ".join(f"{sg.system} {sg.category}" for sg in result.suggestions)
        out.append(f"Computed suggestions: {cats} (see Recommendations).")
    if result.status == "partial":
        out.append("The analysis is incomplete: see the problems listed above.")
    elif result.messages or result.problems or any(s.warnings for s in result.series):
        out.append("Read the warnings above before relying on these findings.")
    return out


def _timings(result: StudyResult) -> list[tuple[str, str]]:
    rows = [(k, f"{v:.2f} s") for k, v in result.timings.items()]
    for i, s in enumerate(result.series, 1):
        rows += [(f"series {i}: {k}", f"{v:.2f} s") for k, v in s.timings.items()]
    return rows


def report_content(result: StudyResult, key_images: dict[str, dict[str, Path]] | None = None) -> ReportContent:
    """The report's content, formatted for people (sizes in mm to one decimal)."""
    key_images = key_images or {}
    header = []
    for label, where, key in _HEADER_FIELDS:
        v = (result.patient if where == "patient" else result.study).get(key, "")
        if not v:
            continue
        v = str(v)
        if key in ("PatientName", "ReferringPhysicianName"):
            v = format_person_name(v)
        elif key in ("StudyDate", "PatientBirthDate"):
            v = format_date(v)
        elif key == "StudyTime":
            v = format_time(v)
        header.append((label, v))
    series, rows, images = [], [], []
    for i, s in enumerate(result.series, 1):
        vol = s.volume
        n = int(vol.pixels.shape[0]) if vol.pixels.ndim >= 3 else 1
        series.append(SeriesInfo(i, vol.modality or "?", str(vol.metadata.get("series_description", "") or ""),
                                 vol.series_instance_uid, n, len(s.lesions), len(s.rejected), list(s.warnings)))
        for les in s.lesions:
            rows.append(_row(les, i, n))
            paths = key_images.get(les.tracking_id, {})
            images.append(KeyImage(les.tracking_id, f"{les.tracking_id}: {_kind(les)}, {_size_phrase(les)}, "
                                   f"{_location(les)}, slice {rows[-1].slice}", paths.get("slice"), paths.get("crop")))
    name = result.patient.get("PatientName", "")
    model = [(k.capitalize() if k != "sha256" else "SHA-256", result.model.get(k) or "unknown")
             for k in ("name", "version", "sha256")]
    return ReportContent(
        title="LesionLens report" + (f" — {format_person_name(name)}" if name else ""),
        header=header, study_uid=result.study_instance_uid or DASH, status=result.status,
        status_text=_STATUS.get(result.status, result.status),
        analysed=result.status != "no-series" and bool(result.series),
        messages=list(result.messages), problems=[str(p) for p in result.problems], series=series, rows=rows,
        images=images, impression=_impression(result), suggestions=list(result.suggestions), model=model,
        timings=_timings(result), notice=NOTICE,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))


# ---------------------------------------------------------------------------------------------
# HTML


@lru_cache(maxsize=1)
def _template() -> Template:
    env = Environment(loader=PackageLoader("lesionlens.reports", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2")


def _image_src(path: Path | None, out_dir: Path, inline: bool) -> str | None:
    if path is None:
        return None
    p = Path(path) if Path(path).is_absolute() else out_dir / path
    if not inline:
        try:
            return p.resolve().relative_to(out_dir.resolve()).as_posix()
        except ValueError:
            pass  # outside the report folder: embed it
    try:
        data = p.read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_html(result: StudyResult, key_images: dict[str, dict[str, Path]] | None = None, *,
                out_dir: str | Path = ".", inline_images: bool = True) -> str:
    """The report page as a string (see :func:`write_html`)."""
    content = report_content(result, key_images)
    root = Path(out_dir)
    srcs = {im.id: {"slice": _image_src(im.slice, root, inline_images), "crop": _image_src(im.crop, root, inline_images)}
            for im in content.images}
    try:
        return _template().render(c=content, srcs=srcs)
    except TemplateError as exc:
        raise OutputError(f"report template failed: {exc}") from exc


def write_html(result: StudyResult, out_dir: str | Path, key_images: dict[str, dict[str, Path]] | None = None, *,
               inline_images: bool = True) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    key_images: tracking_id → {"slice": path, "crop": path} from
    :func:`lesionlens.reports.keyimages.render_key_images`. With ``inline_images`` (default)
    they are embedded as data URIs; otherwise linked relative to ``out_dir`` (images outside
    it are still embedded). Raises :class:`OutputError` when the file cannot be written.
    """
    root = Path(out_dir)
    page = render_html(result, key_images, out_dir=root, inline_images=inline_images)
    path = root / "report.html"
    tmp = root / ".tmp-report.html"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the HTML report: {exc.strerror or exc}", path=path) from exc
    return path


__all__ = ["FindingRow", "KeyImage", "ReportContent", "SeriesInfo", "format_date", "format_person_name",
           "render_html", "report_content", "write_html"]

"""The report as a PDF (``report.pdf``), with reportlab's platypus: the same content as the
HTML page (:func:`lesionlens.reports.html.report_content`).

Fonts: text is set in DejaVu Sans (matplotlib ships it; a system copy is used otherwise), which
covers Latin, Greek and Cyrillic. Characters it lacks (e.g. CJK in "山田^太郎") are set in a
fallback font found on the system (Droid Sans Fallback, WenQuanYi, Noto Sans CJK in TrueType
form, …) when there is one. Characters no available font covers are printed as "?" and the
report says how many. Without any TrueType font the standard Helvetica is used (Latin-1 only).
The report states which fonts were used, so a reader knows what "?" means.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image as PILImage
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.doctemplate import LayoutError
from reportlab.platypus.flowables import Flowable

from lesionlens.errors import OutputError
from lesionlens.pipeline.types import StudyResult
from lesionlens.reports.html import KeyImage, ReportContent, report_content

_MAIN_CANDIDATES = ("DejaVuSans.ttf",)
_SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
                     "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")
_FALLBACK_FILES = (  # (path, index in a collection, label)
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0, "Droid Sans Fallback"),
    ("/usr/share/fonts/google-droid-sans-fonts/DroidSansFallbackFull.ttf", 0, "Droid Sans Fallback"),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0, "WenQuanYi Zen Hei"),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0, "WenQuanYi Micro Hei"),
    ("/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc", 0, "WenQuanYi Zen Hei"),
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0, "AR PL UMing"),
    ("/usr/share/fonts/truetype/unfonts-core/UnDotum.ttf", 0, "UnDotum"),
    ("/System/Library/Fonts/Supplemental/Arial Unicode.ttf", 0, "Arial Unicode MS"),
    ("C:/Windows/Fonts/msgothic.ttc", 0, "MS Gothic"),
)

JPEG_QUALITY = 92
RED = colors.HexColor("#9b1c1c")
LINE = colors.HexColor("#c8ced6")
HEAD_BG = colors.HexColor("#eef2f6")


@dataclass(frozen=True)
class _Font:
    name: str
    label: str
    chars: frozenset[int]


@dataclass(frozen=True)
class Fonts:
    """The fonts a report is set in: ``main`` (+ ``bold``) and fallbacks for missing characters."""

    main: _Font
    bold: str
    fallbacks: tuple[_Font, ...]

    def describe(self) -> str:
        s = f"Text is set in {self.main.label}"
        if self.fallbacks:
            s += ", with " + ", ".join(f.label for f in self.fallbacks) + " for characters it lacks"
        return s + "."


_CP1252 = frozenset(i for i in range(0x20, 0x3000) if chr(i).encode("cp1252", "ignore")) | {9, 10}


def _find_main() -> tuple[Path, Path | None] | None:
    dirs: list[Path] = []
    with contextlib.suppress(ImportError):
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    dirs += [Path(d) for d in _SYSTEM_FONT_DIRS]
    for d in dirs:
        for name in _MAIN_CANDIDATES:
            p = d / name
            if p.is_file():
                bold = d / name.replace(".ttf", "-Bold.ttf")
                return p, bold if bold.is_file() else None
    return None


def _register(name: str, path: Path, index: int = 0) -> TTFont | None:
    try:
        font = TTFont(name, str(path), subfontIndex=index)
        pdfmetrics.registerFont(font)
        return font
    except Exception:  # noqa: BLE001 - reportlab raises many kinds for fonts it cannot embed (CFF, damaged)
        return None


@lru_cache(maxsize=1)
def _main_fonts() -> tuple[_Font, str]:
    found = _find_main()
    if found is not None:
        reg, bold_path = found
        font = _register("LLSans", reg)
        if font is not None:
            bold = "LLSans-Bold" if bold_path is not None and _register("LLSans-Bold", bold_path) else "LLSans"
            pdfmetrics.registerFontFamily("LLSans", normal="LLSans", bold=bold, italic="LLSans", boldItalic=bold)
            return _Font("LLSans", "DejaVu Sans", frozenset(c for c in font.face.charToGlyph if c <= 0xFFFF)), bold
    return _Font("Helvetica", "Helvetica (Latin-1 only: no TrueType font was found)", _CP1252), "Helvetica-Bold"


@lru_cache(maxsize=1)
def _fallback_fonts() -> tuple[_Font, ...]:
    for i, (path, index, label) in enumerate(_FALLBACK_FILES):
        p = Path(path)
        if p.is_file():
            font = _register(f"LLFallback{i}", p, index)
            if font is not None:
                name = f"LLFallback{i}"
                pdfmetrics.registerFontFamily(name, normal=name, bold=name, italic=name, boldItalic=name)
                return (_Font(f"LLFallback{i}", label, frozenset(c for c in font.face.charToGlyph if c <= 0xFFFF)),)
    return ()


def fonts_for(texts: list[str]) -> Fonts:
    """The fonts for these texts: fallbacks are looked for only when the main font lacks a character."""
    main, bold = _main_fonts()
    need = {ord(ch) for t in texts for ch in t} - main.chars - {9, 10, 13}
    need = {c for c in need if c >= 0x20}
    return Fonts(main, bold, _fallback_fonts() if need else ())


class _Markup:
    """Escapes text for reportlab paragraphs, switching fonts per character run; counts "?"."""

    def __init__(self, fonts: Fonts):
        self.fonts = fonts
        self.missing = 0

    def __call__(self, text: object) -> str:
        out: list[str] = []
        run: list[str] = []
        run_font: str | None = None

        def flush() -> None:
            if run:
                s = escape("".join(run))
                out.append(s if run_font is None else f'<font name="{run_font}">{s}</font>')
                run.clear()

        for ch in str(text):
            c = ord(ch)
            if c < 0x20 and ch not in "\t\n":
                continue
            font: str | None = None
            if c not in self.fonts.main.chars and ch not in "\t\n":
                # reportlab's TrueType subsetting handles the Basic Multilingual Plane only
                font = next((f.name for f in self.fonts.fallbacks if c in f.chars and c <= 0xFFFF), "?")
                if font == "?":
                    self.missing += 1
                    ch, font = "?", None
            if font != run_font:
                flush()
                run_font = font
            run.append(ch)
        flush()
        return "".join(out).replace("\n", "<br/>")


def _styles(fonts: Fonts) -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=fonts.main.name, fontSize=9, leading=12, alignment=TA_LEFT)
    return {
        "body": base,
        "small": ParagraphStyle("small", parent=base, fontSize=7.5, leading=9.5),
        "cell": ParagraphStyle("cell", parent=base, fontSize=7.5, leading=9.5),
        "muted": ParagraphStyle("muted", parent=base, fontSize=8, leading=10.5, textColor=colors.HexColor("#5b6470")),
        "title": ParagraphStyle("title", parent=base, fontName=fonts.bold, fontSize=16, leading=20, spaceAfter=4),
        "h2": ParagraphStyle("h2", parent=base, fontName=fonts.bold, fontSize=11.5, leading=15, spaceBefore=9,
                             spaceAfter=4, textColor=colors.HexColor("#0b4f8a")),
        "notice": ParagraphStyle("notice", parent=base, fontName=fonts.bold, fontSize=9.5, leading=12.5, textColor=RED),
        "status": ParagraphStyle("status", parent=base, fontName=fonts.bold, fontSize=10, leading=13),
    }


def _grid(data: list[list[Flowable | str]], widths: list[float], header: bool = True) -> Table:
    t = Table(data, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    style = [("GRID", (0, 0), (-1, -1), 0.4, LINE), ("VALIGN", (0, 0), (-1, -1), "TOP"),
             ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
             ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]
    if header:
        style.append(("BACKGROUND", (0, 0), (-1, 0), HEAD_BG))
    t.setStyle(TableStyle(style))
    return t


def _boxed(par: Paragraph, width: float, colour: colors.Color = RED) -> Table:
    t = Table([[par]], colWidths=[width], hAlign="LEFT")
    t.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.5, colour), ("BACKGROUND", (0, 0), (-1, -1),
                                                                     colors.HexColor("#fdecec")),
                           ("LEFTPADDING", (0, 0), (-1, -1), 6), ("TOPPADDING", (0, 0), (-1, -1), 4),
                           ("BOTTOMPADDING", (0, 0), (-1, -1), 5)]))
    return t


def _image(path: Path | None, out_dir: Path, max_w: float, max_h: float) -> Image | None:
    """A key image scaled into max_w × max_h, embedded as a high-quality JPEG (4:4:4): the PDF
    keeps it as is, where a PNG would be decoded and deflated again (~0.05 s per image)."""
    if path is None:
        return None
    p = Path(path) if Path(path).is_absolute() else out_dir / path
    try:
        with PILImage.open(p) as im:
            w, h = im.size
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    except (OSError, ValueError):
        return None
    buf.seek(0)
    f = min(max_w / w, max_h / h)
    return Image(buf, width=w * f, height=h * f)


def _key_image(im: KeyImage, out_dir: Path, st: dict[str, ParagraphStyle], m: _Markup) -> Flowable | None:
    sl = _image(im.slice, out_dir, 65 * mm, 65 * mm)
    cr = _image(im.crop, out_dir, 40 * mm, 40 * mm)
    if sl is None and cr is None:
        return None
    row = [x for x in (sl, cr) if x is not None]
    widths = [x.drawWidth + 6 * mm for x in row]
    widths[-1] = max(widths[-1], 60 * mm)
    t = Table([row, [Paragraph(m(im.caption), st["muted"])] + [""] * (len(row) - 1)], colWidths=widths,
              hAlign="LEFT")
    t.setStyle(TableStyle([("SPAN", (0, 1), (-1, 1)), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                           ("LEFTPADDING", (0, 0), (-1, -1), 0), ("RIGHTPADDING", (0, 0), (-1, -1), 6)]))
    return KeepTogether([t, Spacer(1, 4 * mm)])


def _story(c: ReportContent, out_dir: Path, fonts: Fonts, m: _Markup, width: float) -> list[Flowable]:
    st = _styles(fonts)

    def P(text: object, style: str = "body") -> Paragraph:
        return Paragraph(m(text), st[style])

    story: list[Flowable] = [_boxed(P(c.notice, "notice"), width), Spacer(1, 4 * mm), P("LesionLens report", "title")]
    story.append(P("Study", "h2"))
    kv = [[P(k, "muted"), P(v)] for k, v in [*c.header, ("Study Instance UID", c.study_uid)]]
    story.append(_grid(kv, [40 * mm, width - 40 * mm], header=False))

    story.append(P("Status", "h2"))
    story.append(P(f"{c.status_text} ({c.status})", "status"))
    for text in [*c.messages, *c.problems]:
        story.append(Paragraph("• " + m(text), st["body"]))
    if c.series:
        rows: list[list[Flowable | str]] = [[P(h, "cell") for h in ("Series", "Modality", "Description", "Slices",
                                                                   "Kept", "Discarded", "Series Instance UID")]]
        rows += [[P(s.number, "cell"), P(s.modality, "cell"), P(s.description, "cell"), P(s.slices, "cell"),
                  P(s.kept, "cell"), P(s.rejected, "cell"), P(s.uid, "cell")] for s in c.series]
        story += [Spacer(1, 2 * mm), _grid(rows, [12 * mm, 16 * mm, 42 * mm, 12 * mm, 11 * mm, 17 * mm,
                                                  width - 110 * mm])]
        for s in c.series:
            for w in s.warnings:
                story.append(Paragraph(f"• Series {s.number}: " + m(w), st["body"]))

    if c.analysed:
        story.append(P("Findings", "h2"))
        if c.rows:
            head = ["ID", "Series", "Location", "Slice", "Type", "Long × short (mm)", "Mean diam. (mm)",
                    "Volume (mm³)", "Mean HU", "Confidence"]
            rows = [[P(h, "cell") for h in head]]
            rows += [[P(r.id, "cell"), P(r.series, "cell"), P(r.location, "cell"), P(r.slice, "cell"),
                      P(r.type, "cell"), P(r.axes, "cell"), P(r.mean, "cell"), P(r.volume, "cell"),
                      P(r.hu, "cell"), P(r.confidence, "cell")] for r in c.rows]
            widths = [10, 11, 33, 15, 22, 23, 17, 18, 13, 18]
            story.append(_grid(rows, [w * mm * width / (180 * mm) for w in widths]))
        else:
            story.append(P("No lesion was detected."))
        figs = [f for f in (_key_image(im, out_dir, st, m) for im in c.images) if f is not None]
        if figs:
            story += [KeepTogether([  # the heading stays with the first image
                P("Key images", "h2"),
                P("Lung window (W 1500, L −600) for CT; the image's own window otherwise. Yellow box: the "
                  "lesion; cyan: other lesions on the slice; red / green: long / short axis.", "muted"),
                Spacer(1, 2 * mm), figs[0]]), *figs[1:]]

    story.append(P("Impression", "h2"))
    story += [P(line) for line in c.impression]
    if c.suggestions:
        story.append(P("Recommendations", "h2"))
        for sg in c.suggestions:
            story.append(KeepTogether([
                Paragraph(f"<b>{m(sg.system)}: {m(sg.category)}</b> — <font color='#0b4f8a'>COMPUTED SUGGESTION</font>",
                          st["body"]),
                P(sg.management), P(sg.description, "muted"), Spacer(1, 2 * mm)]))
        story.append(P("Computed suggestions from the measured findings; the reading physician decides.", "muted"))

    story.append(P("Model and processing", "h2"))
    story.append(_grid([[P(k, "muted"), P(v)] for k, v in c.model], [40 * mm, width - 40 * mm], header=False))
    if c.timings:
        story += [Spacer(1, 2 * mm), _grid([[P(k, "cell"), P(v, "cell")] for k, v in c.timings],
                                           [60 * mm, 25 * mm], header=False)]
    story += [Spacer(1, 5 * mm), _boxed(P(c.notice, "notice"), width), Spacer(1, 2 * mm),
              P(f"Generated by LesionLens on {c.generated}.", "muted")]
    return story


@contextlib.contextmanager
def _binary_streams() -> Iterator[None]:
    """Build without ASCII85 for images: reportlab's pure-Python encoder (used when its C
    accelerator is absent) takes ~0.1 s per key image; binary streams are valid PDF and smaller."""
    old = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = old


def _font_note(fonts: Fonts, missing: int) -> str:
    note = fonts.describe()
    if missing:
        note += f" {missing} character(s) that no available font covers are shown as '?'."
    return note


def write_pdf(result: StudyResult, out_dir: str | Path, key_images: dict[str, dict[str, Path]] | None = None) -> Path:
    """Write ``out_dir/report.pdf`` (A4) and return its path.

    key_images: tracking_id → {"slice": path, "crop": path}
    (:func:`lesionlens.reports.keyimages.render_key_images`); missing files are left out.
    Raises :class:`OutputError` when the PDF cannot be made or written.
    """
    root = Path(out_dir)
    c = report_content(result, key_images)
    texts = [c.title, c.study_uid, *(v for kv in c.header for v in kv), *c.messages, *c.problems, *c.impression,
             *(s.description for s in c.series), *(w for s in c.series for w in s.warnings),
             *(im.caption for im in c.images), *(f"{sg.description} {sg.management}" for sg in c.suggestions),
             *(v for kv in c.model for v in kv), *(str(v) for r in c.rows for v in vars(r).values()),
             *(k for k, _ in c.timings), c.notice, "≥×³−•—"]
    fonts = fonts_for(texts)
    path, tmp = root / "report.pdf", root / ".tmp-report.pdf"
    left = right = 15 * mm
    width = A4[0] - left - right

    def footer(canvas: object, doc: SimpleDocTemplate) -> None:
        canvas.saveState()  # type: ignore[attr-defined]
        canvas.setFont(fonts.main.name, 7)  # type: ignore[attr-defined]
        canvas.setFillColor(RED)  # type: ignore[attr-defined]
        canvas.drawString(left, 9 * mm, "Computer-aided detection output, not a diagnosis. Not for clinical use.")  # type: ignore[attr-defined]
        canvas.drawRightString(A4[0] - right, 9 * mm, f"page {doc.page}")  # type: ignore[attr-defined]
        canvas.restoreState()  # type: ignore[attr-defined]

    try:
        root.mkdir(parents=True, exist_ok=True)
        m = _Markup(fonts)
        story = _story(c, root, fonts, m, width)
        st = _styles(fonts)
        story.append(Paragraph(m(_font_note(fonts, m.missing)), st["muted"]))
        doc = SimpleDocTemplate(str(tmp), pagesize=A4, leftMargin=left, rightMargin=right, topMargin=14 * mm,
                                bottomMargin=16 * mm, title=c.title, author="LesionLens",
                                subject="Computer-aided detection report", creator="LesionLens")
        with _binary_streams():
            doc.build(story, onFirstPage=footer, onLaterPages=footer)
        os.replace(tmp, path)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, LayoutError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the PDF report: {type(exc).__name__}: {exc}", path=path) from exc
    return path


__all__ = ["Fonts", "fonts_for", "write_pdf"]

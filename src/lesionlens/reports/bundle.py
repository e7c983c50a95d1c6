"""Write every output of a ``detect`` run: findings JSON, key images, HTML/PDF report, DICOM
SR/SEG/GSPS — each writer timed, and a failing writer recorded as a message on the study
(one output that cannot be written never loses the others).

Layout: one study → everything directly in ``out_dir``; several studies → one sub-folder per
study (``study-1``, …) and one ``findings.json`` at the top listing them all::

    out_dir/findings.json
    out_dir/report.html, report.pdf
    out_dir/sr.dcm, seg.dcm, gsps.dcm          (one per analysed series; ``-2`` … for further series)
    out_dir/images/L1_slice.png, L1_crop.png
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from lesionlens.errors import LesionLensError, OutputError
from lesionlens.pipeline.types import SeriesResult, StudyResult
from lesionlens.reports.findings import findings_from_results, study_findings, write_json

OUTPUTS = ("json", "images", "html", "pdf", "sr", "seg", "gsps")


def _check(outputs: Iterable[str]) -> set[str]:
    chosen = set(outputs)
    bad = chosen - set(OUTPUTS)
    if bad:
        raise OutputError(f"unknown output(s) {sorted(bad)}; choose from {', '.join(OUTPUTS)}")
    return chosen


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()


class _Stage:
    """Times one writer into ``result.timings`` and turns its failure into a study message."""

    def __init__(self, result: StudyResult):
        self.result = result

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        except LesionLensError as exc:
            self.result.messages.append(f"{name} not written: {exc}")
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:  # library refusals
            self.result.messages.append(f"{name} not written: {type(exc).__name__}: {exc}")
        finally:
            key = f"output_{name}"
            self.result.timings[key] = self.result.timings.get(key, 0.0) + time.perf_counter() - t0
        return None


def _series_outputs(stage: _Stage, res: StudyResult, s: SeriesResult, i: int, folder: Path,
                    chosen: set[str], written: dict[str, str]) -> None:
    from lesionlens.reports.dicom_common import read_sources

    suffix = "" if i == 0 else f"-{i + 1}"
    sources = stage.run("source headers", lambda: read_sources(s)) if chosen & {"sr", "seg", "gsps"} else None
    if sources is None:
        return
    if "sr" in chosen:
        from lesionlens.reports.sr import write_sr

        p = stage.run("sr", lambda: write_sr(res, s, folder / f"sr{suffix}.dcm", sources=sources))
        if p:
            written[f"sr{suffix}"] = _rel(p, folder)
    if "seg" in chosen:
        from lesionlens.reports.seg import write_seg

        p = stage.run("seg", lambda: write_seg(res, s, folder / f"seg{suffix}.dcm", sources=sources))
        if p:
            written[f"seg{suffix}"] = _rel(p, folder)
    if "gsps" in chosen:
        from lesionlens.reports.gsps import write_gsps

        p = stage.run("gsps", lambda: write_gsps(res, s, folder / f"gsps{suffix}.dcm", sources=sources))
        if p:
            written[f"gsps{suffix}"] = _rel(p, folder)


def write_study_outputs(res: StudyResult, folder: Path, outputs: Iterable[str] = OUTPUTS) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Write one study's files into ``folder``. Returns (kind → relative path, key images by lesion)."""
    chosen = _check(outputs)
    folder.mkdir(parents=True, exist_ok=True)
    stage = _Stage(res)
    written: dict[str, str] = {}
    key_images: dict[str, dict[str, Path]] = {}
    if "images" in chosen and res.series:
        from lesionlens.reports.keyimages import render_key_images

        for s in res.series:
            if s.lesions:
                got = stage.run("images", partial(render_key_images, s.volume, s.lesions, folder / "images"))
                key_images.update(got or {})
    rel_images = {tid: {kind: _rel(p, folder) for kind, p in d.items()} for tid, d in key_images.items()}
    if "html" in chosen:
        from lesionlens.reports.html import write_html

        p = stage.run("html", lambda: write_html(res, folder, key_images))
        if p:
            written["report_html"] = _rel(p, folder)
    if "pdf" in chosen:
        from lesionlens.reports.pdf import write_pdf

        p = stage.run("pdf", lambda: write_pdf(res, folder, key_images))
        if p:
            written["report_pdf"] = _rel(p, folder)
    for i, s in enumerate(res.series):
        _series_outputs(stage, res, s, i, folder, chosen, written)
    return written, rel_images


def write_outputs(results: list[StudyResult], out_dir: str | Path, outputs: Iterable[str] = OUTPUTS) -> dict[str, Any]:
    """Write every study's outputs under ``out_dir`` and the findings document; returns it."""
    chosen = _check(outputs)
    root = Path(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder: {exc.strerror or exc}", path=root) from exc
    entries = []
    for n, res in enumerate(results, 1):
        folder = root if len(results) == 1 else root / f"study-{n}"
        written, images = write_study_outputs(res, folder, chosen)
        prefix = "" if folder == root else f"{_rel(folder, root)}/"
        entry = study_findings(res, {k: prefix + v for k, v in written.items()},
                               {t: {k: prefix + v for k, v in d.items()} for t, d in images.items()})
        entries.append(entry)
    doc = findings_from_results(results, entries)
    if "json" in chosen:
        write_json(doc, root / "findings.json")
    return doc


__all__ = ["OUTPUTS", "write_outputs", "write_study_outputs"]

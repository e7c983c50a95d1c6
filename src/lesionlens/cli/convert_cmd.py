"""``lesionlens convert PATH --out DIR --to png|nifti [--window W] [--bits 8|16]``.

Batch DICOM → image conversion, as done before training:

* ``png``: one file per frame, windowed for display (``--window`` preset, ``WL,WW`` or
  ``as-stored``; ``--bits`` 8 or 16), at ``DIR/<series UID>/<instance number>.png`` (the SOP
  Instance UID when instance numbers are missing or repeated; ``_f<frame>`` for multi-frame).
* ``nifti``: one ``DIR/<series UID>.nii.gz`` per assembled series volume, physical values
  (HU for CT) and LPS geometry converted to NIfTI's RAS; ``--window``/``--bits`` do not apply.

Names come from sanitised UIDs only, never from header text. ``DIR/manifest.json`` lists what
was written and every error. Exit 0 when every image converted, 1 otherwise (with a per-file
error list), 2 for a user error such as a nonexistent PATH.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from lesionlens.cli._common import console, err_console, error_boundary, progress
from lesionlens.dicom.display import parse_window, to_display
from lesionlens.dicom.formats import write_nifti, write_png
from lesionlens.dicom.scan import scan
from lesionlens.dicom.study import load_series
from lesionlens.dicom.types import InstanceKind, Problem, SeriesRecord, Volume
from lesionlens.errors import ConfigError, LesionLensError, UnsupportedInputError

EXIT_PARTIAL = 1


class Target(str, Enum):
    png = "png"
    nifti = "nifti"


_UNSAFE = re.compile(r"[^0-9A-Za-z.\-]")


def safe_name(uid: str, fallback: str = "unknown") -> str:
    """A file-name-safe form of a UID: only ``[0-9A-Za-z.-]``, at most 64 characters, no dot-only."""
    name = _UNSAFE.sub("_", uid.strip())[:64].strip(".")
    return name or fallback


@dataclass
class ConvertReport:
    """What a conversion wrote (paths relative to the output folder) and what failed."""

    outputs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)

    def fail(self, problem: Problem) -> None:
        if all((p.path, p.message) != (problem.path, problem.message) for p in self.errors):
            self.errors.append(problem)


def _slice_names(volume: Volume, series: SeriesRecord) -> list[str]:
    """One PNG stem per slice: zero-padded instance number, else the SOP UID; plus frame suffix."""
    numbers = {r.source: r.instance_number for r in series.instances}
    frames = Counter(volume.sources)
    inst = [numbers.get(s) for s in volume.sources]
    keys = list(zip(inst, volume.frame_numbers))
    unique = all(n is not None for n in inst) and len(set(keys)) == len(keys)
    names = []
    for k, source in enumerate(volume.sources):
        uid = volume.sop_instance_uids[k] if k < len(volume.sop_instance_uids) else f"slice{k}"
        stem = f"{inst[k]:05d}" if unique and inst[k] is not None and inst[k] >= 0 else safe_name(uid)  # type: ignore[operator]
        if frames[source] > 1:
            stem += f"_f{volume.frame_numbers[k]:04d}"
        names.append(stem)
    return names


def _write_png_volume(volume: Volume, series: SeriesRecord, out: Path, window: str, bits: int,
                      report: ConvertReport) -> None:
    images = to_display(volume, window, bits)
    folder = out / safe_name(volume.series_instance_uid or series.series_instance_uid)
    for k, stem in enumerate(_slice_names(volume, series)):
        path = folder / f"{stem}.png"
        write_png(path, images[k])
        report.outputs.append({
            "path": str(path.relative_to(out)),
            "series_instance_uid": volume.series_instance_uid,
            "sop_instance_uid": volume.sop_instance_uids[k] if k < len(volume.sop_instance_uids) else "",
            "frame": volume.frame_numbers[k] if k < len(volume.frame_numbers) else 1,
            "source": volume.sources[k] if k < len(volume.sources) else "",
            "shape": list(images[k].shape),
            "dtype": str(images[k].dtype),
        })


def _write_nifti_volume(volume: Volume, index: int, series: SeriesRecord, out: Path, report: ConvertReport) -> None:
    stem = safe_name(volume.series_instance_uid or series.series_instance_uid)
    path = out / f"{stem}{'' if index == 0 else f'_{index + 1}'}.nii.gz"
    if volume.pixels.ndim != 3:
        for src in dict.fromkeys(volume.sources):
            report.fail(Problem("error", "unsupported", "colour images cannot be written as NIfTI", src))
        return
    write_nifti(path, volume)
    report.outputs.append({
        "path": str(path.relative_to(out)),
        "series_instance_uid": volume.series_instance_uid,
        "shape": list(volume.pixels.shape),
        "spacing_mm": [round(float(s), 6) for s in volume.spacing_mm],
        "slices": len(volume.sources),
    })


def run_convert(path: Path, out: Path, to: str, window: str = "as-stored", bits: int = 8) -> ConvertReport:
    """Convert every image under ``path`` into ``out``; returns the report (never raises per file).

    Raises UnsupportedInputError when ``path`` does not exist and ConfigError for bad options.
    """
    if not path.exists():
        raise UnsupportedInputError("no such file or folder", path=path, code="not-found")
    parse_window(window)  # validate before any work
    if bits not in (8, 16):
        raise ConfigError(f"--bits must be 8 or 16, got {bits}", code="bits")
    report = ConvertReport()
    catalog = scan(path)
    for rec in catalog.skipped:
        problem = Problem("error" if rec.kind is InstanceKind.UNREADABLE else "warning",
                          "unreadable" if rec.kind is InstanceKind.UNREADABLE else "not-dicom", rec.reason, rec.source)
        (report.fail if problem.severity == "error" else report.skipped.append)(problem)
    series_list = [s for s in catalog.series if any(i.kind is InstanceKind.IMAGE for i in s.instances)]
    for s in catalog.series:
        for inst in s.instances:
            if inst.kind is InstanceKind.NON_IMAGE:
                report.skipped.append(Problem("warning", "non-image", f"{inst.modality or 'DICOM'} object without pixels",
                                              inst.source))
    out.mkdir(parents=True, exist_ok=True)
    with progress() as bar:
        task = bar.add_task(f"converting to {to}", total=len(series_list))
        for series in series_list:
            try:
                volumes = load_series(series)
            except LesionLensError as exc:
                failed = [i.source for i in series.instances if i.kind is InstanceKind.IMAGE]
                for src in failed:
                    report.fail(Problem("error", exc.code, exc.reason if exc.path == src else str(exc), src))
                bar.advance(task)
                continue
            converted: set[str] = set()
            for index, volume in enumerate(volumes):
                try:
                    if to == Target.png.value:
                        _write_png_volume(volume, series, out, window, bits, report)
                    else:
                        _write_nifti_volume(volume, index, series, out, report)
                    converted.update(volume.sources)
                except LesionLensError as exc:
                    for src in dict.fromkeys(volume.sources):
                        report.fail(Problem("error", exc.code, exc.reason, src))
                for p in volume.problems:
                    if p.severity == "error" and p.path and p.path not in converted:
                        report.fail(p)
            for inst in series.instances:  # images that no volume took up
                if (inst.kind is InstanceKind.IMAGE and inst.source not in converted
                        and not any(e.path == inst.source for e in report.errors)):
                    why = "; ".join(p.message for p in inst.problems) or "not part of any loadable volume"
                    report.fail(Problem("error", "not-converted", why, inst.source))
            bar.advance(task)
    _write_manifest(out, path, to, window, bits, report)
    return report


def _write_manifest(out: Path, path: Path, to: str, window: str, bits: int, report: ConvertReport) -> Path:
    manifest = {
        "input": str(path),
        "to": to,
        "window": parse_window(window).name if to == Target.png.value else None,
        "bits": bits if to == Target.png.value else None,
        "outputs": report.outputs,
        "errors": [p.to_dict() for p in report.errors],
        "skipped": [p.to_dict() for p in report.skipped],
    }
    target = out / "manifest.json"
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def convert(
    path: Path = typer.Argument(..., help="DICOM file, folder or zip to convert."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if missing)."),
    to: Target = typer.Option(Target.png, "--to", help="png: one image per frame; nifti: one file per series volume."),
    window: str = typer.Option(
        "as-stored", "--window", "-w",
        help="PNG window: lung, mediastinum, bone, brain, soft-tissue, as-stored, or WL,WW (e.g. -600,1500).",
    ),
    bits: int = typer.Option(8, "--bits", help="PNG grey depth: 8 or 16."),
) -> None:
    """Convert DICOM images to PNG (windowed) or NIfTI (physical values), with a manifest."""
    with error_boundary():
        report = run_convert(path, out, to.value, window, bits)
    console.print(f"wrote {len(report.outputs)} {to.value} file(s) to {out} (manifest.json)", highlight=False)
    if report.skipped:
        console.print(f"skipped {len(report.skipped)} non-image file(s)", highlight=False)
    if report.errors:
        err_console.print(f"[bold red]{len(report.errors)} file(s) not converted:[/]", highlight=False)
        for p in report.errors:
            err_console.print(f"  {p.path}: {p.message} [{p.code}]", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("convert")(convert)

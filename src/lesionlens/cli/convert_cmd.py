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

``--deid [--deid-option O ...] [--key-file K]`` (the flags of ``pacs process``) first
de-identifies the input (PS3.15 basic profile, keyed UIDs) into a private work folder beside
``DIR``, converts that copy, and deletes the work folder (also on error): names and the manifest
then carry only de-identified UIDs, and the manifest names no input path. Quarantined (burned-in
text) and failed files are listed on stderr, not converted, and make the exit status 1. The
helpers for this (:func:`deid_config`, :func:`deid_workspace`, :func:`deidentify_input`,
:func:`print_deid_report`) are shared with ``lesionlens data convert --deid``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lesionlens.cli._common import console, err_console, error_boundary, progress
from lesionlens.dicom.display import parse_window, to_display
from lesionlens.dicom.formats import write_nifti, write_png
from lesionlens.dicom.scan import scan
from lesionlens.dicom.study import load_series
from lesionlens.dicom.types import InstanceKind, Problem, SeriesRecord, Volume
from lesionlens.errors import ConfigError, LesionLensError, UnsupportedInputError

if TYPE_CHECKING:
    from lesionlens.privacy.deid_files import DeidReport
    from lesionlens.privacy.deid_options import DeidConfig

EXIT_PARTIAL = 1
DEID_WORK_PREFIX = ".lesionlens-deid-"


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


def _check_options(window: str, bits: int) -> None:
    parse_window(window)
    if bits not in (8, 16):
        raise ConfigError(f"--bits must be 8 or 16, got {bits}", code="bits")


def run_convert(path: Path, out: Path, to: str, window: str = "as-stored", bits: int = 8, *,
                deid: DeidReport | None = None) -> ConvertReport:
    """Convert every image under ``path`` into ``out``; returns the report (never raises per file).

    deid: the report of the de-identification that made ``path`` (a private work copy): the
    manifest then names no input path, gives sources relative to ``path`` and holds the
    de-identification counts instead of file names.
    Raises UnsupportedInputError when ``path`` does not exist and ConfigError for bad options.
    """
    if not path.exists():
        raise UnsupportedInputError("no such file or folder", path=path, code="not-found")
    _check_options(window, bits)  # validate before any work
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
    if deid is not None:
        _relative_sources(report, path)
    _write_manifest(out, path, to, window, bits, report, deid)
    return report


def _relative_sources(report: ConvertReport, root: Path) -> None:
    """Sources under the (temporary) de-identified copy ``root`` → paths relative to it."""

    def rel(source: str | None) -> str | None:
        if not source:
            return source
        try:
            return Path(source).relative_to(root).as_posix()
        except ValueError:
            return source

    for entry in report.outputs:
        if "source" in entry:
            entry["source"] = rel(entry["source"])
    report.errors = [replace(p, path=rel(p.path)) for p in report.errors]
    report.skipped = [replace(p, path=rel(p.path)) for p in report.skipped]


def _write_manifest(out: Path, path: Path, to: str, window: str, bits: int, report: ConvertReport,
                    deid: DeidReport | None = None) -> Path:
    manifest: dict[str, Any] = {
        "input": None if deid is not None else str(path),
        "to": to,
        "window": parse_window(window).name if to == Target.png.value else None,
        "bits": bits if to == Target.png.value else None,
        "outputs": report.outputs,
        "errors": [p.to_dict() for p in report.errors],
        "skipped": [p.to_dict() for p in report.skipped],
    }
    if deid is not None:  # counts only: the de-identification report names input files
        manifest["deid"] = deid_counts(deid)
    target = out / "manifest.json"
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


# --------------------------------------------------------------------------- --deid (shared with `data convert`)


def deid_config(deid: bool, deid_option: list[str] | None, key_file: Path | None) -> DeidConfig | None:
    """The configuration of ``--deid [--deid-option ...] [--key-file K]`` (as ``pacs process``),
    or None without ``--deid``. No key (file or ``$LESIONLENS_DEID_KEY``), an unreadable/short key
    file or an unknown option is a :class:`ConfigError`; so are options without ``--deid``."""
    if not deid:
        if deid_option or key_file:
            raise ConfigError("--deid-option and --key-file only apply with --deid")
        return None
    from lesionlens.privacy.deid_options import DeidConfig
    from lesionlens.privacy.uidmap import resolve_key

    key = resolve_key(key_file)
    try:
        return DeidConfig.build(key, list(deid_option or []))
    except ConfigError as exc:  # parse_options speaks of --option (the `deid` command's flag)
        if exc.reason.startswith("--option"):
            raise ConfigError("--deid-option" + exc.reason[len("--option"):]) from None
        raise


@contextmanager
def deid_workspace(out: Path) -> Iterator[Path]:
    """A private (mode 0700) work folder beside ``out`` for de-identified copies.

    It lives in ``out``'s parent (same disk, not the shared temp folder) under a hidden name, and
    is deleted with everything in it when the block ends, also on error or Ctrl-C.
    """
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=DEID_WORK_PREFIX, dir=parent) as work:
        yield Path(work)


def _stage_zip(archive: Path, folder: Path) -> dict[str, str]:
    """Extract the members of ``archive`` (size/ratio-checked) as numbered files in ``folder``;
    returns staged path → ``archive!member``."""
    from lesionlens.dicom.io import ZIP_SEPARATOR, iter_zip_members, read_zip_member

    folder.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for i, source in enumerate(iter_zip_members(archive)):
        staged = folder / f"{i:06d}"
        staged.write_bytes(read_zip_member(archive, source.split(ZIP_SEPARATOR, 1)[1]))
        names[str(staged)] = source
    return names


def deidentify_input(src: Path, work: Path, config: DeidConfig) -> tuple[Path, DeidReport]:
    """De-identify ``src`` (DICOM file, folder or zip) into ``work/dicom``; returns that folder
    and the report, whose sources are the input files (``archive!member`` for a zip)."""
    from lesionlens.dicom.io import is_zip
    from lesionlens.privacy.deid_files import REPORT_NAME, deidentify_path

    if not src.exists():
        raise UnsupportedInputError("no such file or folder", path=src, code="not-found")
    dicom = work / "dicom"
    if not is_zip(src):
        report = deidentify_path(src, dicom, config)
        (dicom / REPORT_NAME).unlink(missing_ok=True)  # names input files; the report is returned
        return dicom, report
    staged = work / "unzipped"
    names = _stage_zip(src, staged)
    try:
        report = deidentify_path(staged, dicom, config)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        (dicom / REPORT_NAME).unlink(missing_ok=True)
    report.written = [(names.get(s, s), o) for s, o in report.written]
    report.quarantined = [(names.get(s, s), r) for s, r in report.quarantined]
    report.failed = [(names.get(s, s), c, e) for s, c, e in report.failed]
    return dicom, report


def deid_counts(report: DeidReport, ignore: frozenset[str] = frozenset()) -> dict[str, int]:
    """``written``, ``quarantined``, ``failed`` (DICOM that could not be de-identified) and
    ``not_dicom`` (other files, never copied); sources in ``ignore`` are left out."""
    failed = [f for f in report.failed if f[0] not in ignore]
    return {
        "written": len(report.written),
        "quarantined": len(report.quarantined),
        "failed": sum(1 for f in failed if f[1] != "not-dicom"),
        "not_dicom": sum(1 for f in failed if f[1] == "not-dicom"),
    }


def print_deid_report(report: DeidReport, ignore: frozenset[str] = frozenset()) -> bool:
    """Print the de-identification counts; name every quarantined and failed file on stderr.
    Returns True when no DICOM file was held back (quarantined or failed)."""
    counts = deid_counts(report, ignore)
    console.print(
        f"de-identified: {counts['written']} file(s) written, {counts['quarantined']} quarantined, "
        f"{counts['failed']} failed; {counts['not_dicom']} non-DICOM file(s) not copied",
        highlight=False, soft_wrap=True,
    )
    for source, reason in report.quarantined:
        err_console.print(f"  quarantined (not used) {source}: {reason}", highlight=False, markup=False, soft_wrap=True)
    for source, code, error in report.failed:
        if code != "not-dicom" and source not in ignore:
            err_console.print(f"  failed (not used) {source}: {error} [{code}]", highlight=False, markup=False, soft_wrap=True)
    return not counts["quarantined"] and not counts["failed"]


def convert(
    path: Path = typer.Argument(..., help="DICOM file, folder or zip to convert."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if missing)."),
    to: Target = typer.Option(Target.png, "--to", help="png: one image per frame; nifti: one file per series volume."),
    window: str = typer.Option(
        "as-stored", "--window", "-w",
        help="PNG window: lung, mediastinum, bone, brain, soft-tissue, as-stored, or WL,WW (e.g. -600,1500).",
    ),
    bits: int = typer.Option(8, "--bits", help="PNG grey depth: 8 or 16."),
    deid: bool = typer.Option(False, "--deid", help="de-identify the input first (PS3.15 basic profile)"),
    deid_option: list[str] | None = typer.Option(None, "--deid-option", help="a PS3.15 option for --deid (repeatable)"),
    key_file: Path | None = typer.Option(None, "--key-file", help="de-identification key file (with --deid)"),
) -> None:
    """Convert DICOM images to PNG (windowed) or NIfTI (physical values), with a manifest."""
    deid_report: DeidReport | None = None
    with error_boundary():
        config = deid_config(deid, deid_option, key_file)
        if config is None:
            report = run_convert(path, out, to.value, window, bits)
        else:
            if not path.exists():
                raise UnsupportedInputError("no such file or folder", path=path, code="not-found")
            _check_options(window, bits)
            with deid_workspace(out) as work:
                dicom, deid_report = deidentify_input(path, work, config)
                report = run_convert(dicom, out, to.value, window, bits, deid=deid_report)
    deid_ok = print_deid_report(deid_report) if deid_report is not None else True
    console.print(f"wrote {len(report.outputs)} {to.value} file(s) to {out} (manifest.json)", highlight=False)
    if report.skipped:
        console.print(f"skipped {len(report.skipped)} non-image file(s)", highlight=False)
    if report.errors:
        err_console.print(f"[bold red]{len(report.errors)} file(s) not converted:[/]", highlight=False)
        for p in report.errors:
            err_console.print(f"  {p.path}: {p.message} [{p.code}]", highlight=False, soft_wrap=True, markup=False)
    if report.errors or not deid_ok:
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("convert")(convert)

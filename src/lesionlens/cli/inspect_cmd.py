"""``lesionlens inspect PATH [--json]``: what a folder/zip/file holds and what would be analysed.

Header-only: no pixel values are decoded. Geometry warnings (missing slices, tilt, splits) come
from :func:`lesionlens.dicom.assemble.plan_series`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from lesionlens.cli._common import console, error_boundary
from lesionlens.dicom.assemble import plan_series
from lesionlens.dicom.scan import scan
from lesionlens.dicom.select import select_series
from lesionlens.dicom.types import Catalog, InstanceKind, SeriesRecord


def _series_summary(se: SeriesRecord) -> dict[str, Any]:
    images = [i for i in se.instances if i.kind is InstanceKind.IMAGE]
    first = images[0] if images else (se.instances[0] if se.instances else None)
    warnings: list[str] = []
    errors: list[str] = [str(p) for p in se.problems if p.severity == "error"]
    warnings += [str(p) for p in se.problems if p.severity == "warning"]
    spacing: list[float] | None = None
    stacks: list[list[int]] = []
    if images:
        plans, problems = plan_series(se)
        seen: set[str] = set()
        for plan in plans:
            stacks.append(list(plan.shape))
            for p in plan.problems:
                if str(p) not in seen:
                    seen.add(str(p))
                    (errors if p.severity == "error" else warnings).append(str(p))
        errors += [str(p) for p in problems]
        if plans:
            spacing = [round(float(x), 4) for x in _spacing(plans[0].affine)]
    return {
        "series_instance_uid": se.series_instance_uid,
        "series_number": se.series_number,
        "modality": se.modality,
        "description": se.description,
        "n_instances": len(se.instances),
        "rows": first.rows if first else 0,
        "columns": first.columns if first else 0,
        "frames": sum(max(i.frames, 1) for i in images),
        "spacing_mm": spacing,
        "stacks": stacks,
        "transfer_syntaxes": sorted({i.transfer_syntax_uid for i in se.instances if i.transfer_syntax_uid}),
        "selected": se.selected,
        "reason": se.reason,
        "warnings": warnings,
        "errors": errors,
    }


def _spacing(affine: Any) -> list[float]:
    import numpy as np

    return list(np.linalg.norm(affine[:3, :3], axis=0))


def summarize(catalog: Catalog) -> dict[str, Any]:
    """The JSON document ``inspect --json`` prints (catalog must have been through selection)."""
    studies = []
    for patient in catalog.patients:
        for st in patient.studies:
            studies.append(
                {
                    "study_instance_uid": st.study_instance_uid,
                    "patient_id": st.patient_id,
                    "patient_name": st.patient_name,
                    "date": st.date,
                    "description": st.description,
                    "series": [_series_summary(se) for se in st.series],
                }
            )
    return {
        "studies": studies,
        "skipped": [{"path": s.source, "kind": s.kind.value, "reason": s.reason} for s in catalog.skipped],
        "problems": [p.to_dict() for p in catalog.problems],
    }


def _print_table(doc: dict[str, Any]) -> None:
    for st in doc["studies"]:
        title = f"Patient {st['patient_id'] or '?'} {st['patient_name']} — study {st['date']} {st['description']}".strip()
        table = Table(title=title, caption=st["study_instance_uid"], show_lines=False)
        for col in ("#", "Mod", "Description", "Inst", "R×C×F", "Spacing mm", "Syntax", "Selected", "Warnings / errors"):
            table.add_column(col, overflow="fold")
        for se in st["series"]:
            sp = "×".join(f"{x:g}" for x in se["spacing_mm"]) if se["spacing_mm"] else "-"
            ts = ", ".join(se["transfer_syntaxes"])
            mark = "[green]yes[/]" if se["selected"] else "[dim]no[/]"
            notes = "\n".join([f"[yellow]{w}[/]" for w in se["warnings"]] + [f"[red]{e}[/]" for e in se["errors"]])
            table.add_row(
                str(se["series_number"] if se["series_number"] is not None else ""),
                se["modality"],
                se["description"],
                str(se["n_instances"]),
                f"{se['rows']}×{se['columns']}×{se['frames']}",
                sp,
                ts,
                f"{mark}\n{se['reason']}",
                notes,
            )
        console.print(table)
    if doc["skipped"]:
        skipped = Table(title="Skipped files")
        skipped.add_column("File", overflow="fold")
        skipped.add_column("Reason", overflow="fold")
        for s in doc["skipped"]:
            skipped.add_row(s["path"], s["reason"])
        console.print(skipped)
    if not doc["studies"]:
        console.print("[yellow]no DICOM studies found[/]")


def inspect(
    path: Path = typer.Argument(..., help="A DICOM file, a folder (searched recursively) or a zip archive."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List patients, studies and series under PATH, and which series would be analysed (and why)."""
    with error_boundary():
        catalog = scan(path)
        select_series(catalog)
        doc = summarize(catalog)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _print_table(doc)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("inspect")(inspect)

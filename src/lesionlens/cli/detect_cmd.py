"""``lesionlens detect PATH --out DIR`` — the main job: a study → measured findings, report, SR/SEG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from lesionlens.cli._common import console, err_console, error_boundary
from lesionlens.errors import ConfigError


def _detect(
    path: list[Path] = typer.Argument(..., help="DICOM file(s), folder(s) or zip(s) of one or more studies."),
    out: Path = typer.Option(..., "--out", help="output folder (findings.json, report, SR/SEG/GSPS, key images)"),
    model: str = typer.Option("default", "--model", help="model name or package folder"),
    conf: float = typer.Option(0.5, "--conf", help="confidence threshold: candidates below it are not reported (the default model reaches "
                            "1 FP/scan on its held-out phantoms at about 0.34; see its model card)"),
    iou: float = typer.Option(0.5, "--iou", help="NMS IoU threshold"),
    backend: str = typer.Option("onnx", "--backend", help="onnx | torch"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    threads: int | None = typer.Option(None, "--threads", help="inference threads (default: all cores)"),
    tile: int = typer.Option(1024, "--tile", help="2D images larger than this (px) run as overlapping tiles"),
    risk: str = typer.Option("low", "--risk", help="patient risk for the Fleischner suggestion: low | high"),
    outputs: str | None = typer.Option(None, "--outputs",
                                          help="comma-separated subset of json,images,html,pdf,sr,seg,gsps"),
    no_lung_filter: bool = typer.Option(False, "--no-lung-filter", help="keep candidates outside the lung mask"),
    min_size: float | None = typer.Option(None, "--min-size", help="smallest mean diameter kept, mm (default 3)"),
    max_size: float | None = typer.Option(None, "--max-size", help="largest mean diameter kept, mm (default 30)"),
) -> None:
    """Detect, measure and report lesions; write findings.json, report.html/pdf, SR, SEG, GSPS."""
    with error_boundary():
        from lesionlens.engine.predict import PredictConfig
        from lesionlens.pipeline.detect import DetectConfig, Detector
        from lesionlens.pipeline.fpr import FPRConfig
        from lesionlens.reports.bundle import OUTPUTS, write_outputs

        chosen = OUTPUTS if outputs is None else tuple(o.strip() for o in outputs.split(",") if o.strip())
        for p in path:
            if not p.exists():
                raise ConfigError(f"input does not exist: {p}")
        fpr = FPRConfig()
        updates: dict[str, Any] = {}
        if no_lung_filter:
            updates["lung_filter"] = False
        if min_size is not None or max_size is not None:
            lo, hi = fpr.size_range_mm
            updates["size_range_mm"] = (min_size if min_size is not None else lo, max_size if max_size is not None else hi)
        if updates:
            from dataclasses import replace

            fpr = replace(fpr, **updates)
        cfg = DetectConfig(predict=PredictConfig(conf=conf, iou=iou, tile=tile, tile_overlap=min(128, tile // 4)),
                           fpr=fpr, risk=risk)  # type: ignore[arg-type]
        det = Detector(model, backend=backend, device=device, threads=threads, config=cfg)  # type: ignore[arg-type]
        results = det.detect([str(p) for p in path] if len(path) > 1 else str(path[0]))
        doc = write_outputs(results, out, chosen)
        print_summary(doc, out)
        if all(r.status == "no-series" for r in results):
            raise typer.Exit(1)


def print_summary(doc: dict[str, Any], out: Path) -> None:
    """One table of findings per study, then the suggestions, messages and where the files are."""
    m = doc["model"]
    for st in doc["studies"]:
        title = f"study {st['study_instance_uid'] or '(none)'} — {st.get('status', 'ok')}"
        table = Table(title=title, title_justify="left")
        for col in ("id", "type", "long × short mm", "volume mm³", "location", "slice", "confidence"):
            table.add_column(col)
        for se in st["series"]:
            for f in se["findings"]:
                me, loc = f.get("measurements") or {}, f.get("location") or {}
                size = f"{me['long_axis_mm']:.1f} × {me['short_axis_mm']:.1f}" if me else f"{f['diameter_mm'] or 0:.1f}"
                vol = f"{me['volume_mm3']:.0f}" if me and me.get("volume_mm3") is not None else "—"
                where = " ".join(str(loc[k]) for k in ("side", "zone", "depth") if loc.get(k)) or "—"
                table.add_row(f.get("tracking_id", ""), str(me.get("type") or "—"), size, vol, where,
                              str(loc.get("slice_number", f.get("slice_index", ""))), f"{f['confidence']:.2f}")
        if table.row_count:
            console.print(table)
        else:
            console.print(f"{title}: no findings")
        for sg in st.get("suggestions", []):
            console.print(f"[bold]{sg['system']}[/] {sg['category']}: {sg['management']} "
                          "[dim](computed suggestion)[/]", highlight=False)
        for msg in st.get("messages", []):
            err_console.print(f"[yellow]note:[/] {msg}", highlight=False)
        files = ", ".join(st.get("outputs", {}).values())
        if files:
            console.print(f"outputs: {files}", highlight=False)
    console.print(f"model {m.get('name')} {m.get('version')} — {doc.get('notice', '')}", highlight=False)
    console.print(f"findings: {out / 'findings.json'}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("detect")(_detect)

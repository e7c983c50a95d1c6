"""``lesionlens train | predict | evaluate | export`` — the model commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.table import Table

from lesionlens.cli._common import console, error_boundary, progress
from lesionlens.errors import ConfigError


def _train(
    data: str | None = typer.Option(None, "--data", help="dataset.yaml (YOLO layout)."),
    model: str | None = typer.Option(None, "--model", help="n | s | m, or a model package to fine-tune."),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch: int | None = typer.Option(None, "--batch"),
    imgsz: int | None = typer.Option(None, "--imgsz", help="training crop size (pixels, native scale)."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda | auto"),
    out: str | None = typer.Option(None, "--out", help="run folder, e.g. runs/NAME"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint."),
    attention: bool | None = typer.Option(None, "--attention/--no-attention"),
    lr: float | None = typer.Option(None, "--lr"),
    seed: int | None = typer.Option(None, "--seed"),
    mosaic: float | None = typer.Option(None, "--mosaic", help="probability of a 4-image mosaic sample."),
    copy_paste: float | None = typer.Option(None, "--copy-paste", help="probability of pasting banked lesions."),
    small_boost: float | None = typer.Option(None, "--small-boost",
                                                help="draw images with a box under --small-px (1 + this)x as often."),
    score_floor: float | None = typer.Option(None, "--score-floor",
                                              help="least class target of a box's best anchor (0 = its IoU)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of TrainConfig fields."),
    recipe: str | None = typer.Option(None, "--recipe", help="a named recipe, e.g. 'default'."),
) -> None:
    """Train a detector (defaults < --config file < flags)."""
    with error_boundary():
        from lesionlens.engine.config import load_config
        from lesionlens.engine.trainer import Trainer

        if recipe is not None:
            from lesionlens.engine.recipes import run_recipe

            run_recipe(recipe, out=out, device=device, epochs=epochs)
            return
        if data is None and config is None:
            raise ConfigError("--data is required (or --config, or --recipe)")
        cfg = load_config(config, data=data, model=model, epochs=epochs, batch=batch, imgsz=imgsz, device=device,
                          out=out, resume=resume or None, attention=attention, lr=lr, seed=seed, mosaic=mosaic,
                          copy_paste=copy_paste, small_boost=small_boost, score_floor=score_floor)

        def show(epoch: int, row: dict[str, object]) -> None:
            parts = [f"epoch {epoch}/{cfg.epochs}", f"loss {row.get('train_loss', 0):.3f}"]
            if row.get("val_ap50") is not None:
                parts.append(f"val AP50 {row['val_ap50']:.3f}")
            console.print("  ".join(parts))

        res = Trainer(cfg, on_epoch_end=[show]).fit()
        console.print(f"best fitness {res.best_fitness:.4f}; {res.images_per_s:.1f} images/s")
        console.print(f"best model: {res.best}\nlast model: {res.last}")


def _predict(
    path: list[Path] = typer.Argument(..., help="DICOM file/folder/zip, or image files."),
    out: Path = typer.Option(..., "--out", help="output folder for findings.json"),
    model: str = typer.Option("default", "--model", help="model name or package folder"),
    conf: float = typer.Option(0.25, "--conf", help="confidence threshold (near 0 returns every candidate)"),
    iou: float = typer.Option(0.5, "--iou", help="NMS IoU threshold"),
    backend: str = typer.Option("onnx", "--backend", help="onnx | torch"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    max_det: int = typer.Option(100, "--max-det"),
    rescore: bool = typer.Option(True, "--rescore/--no-rescore",
                                 help="rescore CT candidates with the model's false-positive reduction stages "
                                      "(rescorer.json, fpr.onnx, fpr_detail.onnx) when it has them"),
) -> None:
    """Detect lesions and write DIR/findings.json."""
    with error_boundary():
        from lesionlens.engine.predict import PredictConfig, Predictor
        from lesionlens.engine.results import findings_from_predictions
        from lesionlens.reports.findings import write_json

        pred = Predictor(model, backend=backend, device=device,  # type: ignore[arg-type]
                         config=PredictConfig(conf=conf, iou=iou, max_det=max_det, rescore=rescore))
        results, problems = pred.predict([str(p) for p in path])
        doc = findings_from_predictions(results, pred, problems)
        dest = write_json(doc, out / "findings.json")
        table = Table(title=f"findings ({pred.identity['name']} {pred.identity['version']})")
        for col in ("series", "label", "confidence", "diameter mm", "center mm (LPS)", "slice/frame"):
            table.add_column(col)
        for st in doc["studies"]:
            for se in st["series"]:
                for f in se["findings"]:
                    c = f["center_mm"]
                    table.add_row(se["series_instance_uid"][-12:], f["label"], f"{f['confidence']:.2f}",
                                  f"{f['diameter_mm']:.1f}" if f["diameter_mm"] is not None else "-",
                                  ", ".join(f"{v:.1f}" for v in c) if c else "-", str(f.get("slice_index", f["frame"])))
        console.print(table)
        for p in problems:
            console.print(f"[yellow]{p}[/]")
        console.print(f"wrote {dest}")


def _evaluate(
    model: str = typer.Option("default", "--model"),
    data: Path = typer.Option(..., "--data", help="CT studies with truth (folder or LUNA16 root) or dataset.yaml"),
    out: Path = typer.Option(Path("runs/eval"), "--out"),
    backend: str = typer.Option("onnx", "--backend"),
    device: str = typer.Option("cpu", "--device"),
    split: str = typer.Option("val", "--split", help="split of a dataset.yaml to evaluate"),
    conf: float = typer.Option(0.25, "--conf", help="operating threshold for P/R/F1 (2D)"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap resamples for the FROC CI"),
    rescore: bool = typer.Option(True, "--rescore/--no-rescore", help="apply the model's false-positive reduction stages"),
) -> None:
    """Evaluate a model: FROC/CPM on CT studies, or AP/mAP on a 2D dataset → metrics.json + plots."""
    with error_boundary():
        from lesionlens.engine.evaluate import evaluate_2d, evaluate_ct
        from lesionlens.engine.predict import Predictor, froc_config

        pred = Predictor(model, backend=backend, device=device,  # type: ignore[arg-type]
                         config=froc_config(model, rescore=rescore))
        if data.suffix in (".yaml", ".yml"):
            res = evaluate_2d(pred, data, out, split=split, conf=conf)
            m = res.metrics
            console.print(f"AP50 {m.get('ap50')}  mAP50-95 {m.get('map50_95')}  P {m.get('precision')}  "
                          f"R {m.get('recall')}  F1 {m.get('f1')}")
        else:
            res = evaluate_ct(pred, data, out, n_bootstrap=bootstrap)
            m = res.metrics
            cpm = f"{m['cpm']:.3f}" if m["cpm"] is not None else "n/a"
            table = Table(title=f"FROC over {m['n_scans']} scans — CPM {cpm}")
            table.add_column("FP/scan")
            table.add_column("sensitivity")
            for fp, s in m["froc"]["sensitivity_at_fps"].items():
                table.add_row(str(fp), f"{s:.3f}" if s is not None else "-")
            console.print(table)
        console.print(f"wrote {res.out_dir / 'metrics.json'}")


def _export(
    model: str = typer.Option(..., "--model", help="model name or package folder"),
    format: str = typer.Option("onnx", "--format", help="onnx"),
    out: Path | None = typer.Option(None, "--out", help="output .onnx (default: NAME-VERSION[-static<imgsz>][-fp16].onnx "
                                    "in the current folder; the package itself is never changed unless named here)"),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="symbolic batch/height/width"),
    half: bool = typer.Option(False, "--half", help="FP16 graph (GPU providers)"),
    imgsz: int = typer.Option(512, "--imgsz"),
    int8: bool = typer.Option(False, "--int8", help="static INT8 (QDQ) quantisation with calibration"),
    calib: Path | None = typer.Option(None, "--calib", help="calibration data (dataset.yaml) for --int8"),
) -> None:
    """Export a model package to ONNX (FP32, FP16 or INT8)."""
    with error_boundary():
        from lesionlens.engine.export import export_onnx
        from lesionlens.engine.predict import resolve_model
        from lesionlens.engine.trainer import load_package_model

        if format != "onnx":
            raise ConfigError(f"--format: only 'onnx' is supported, got {format!r}")
        if int8 and calib is None:
            raise ConfigError("--int8 needs --calib DATA (a dataset.yaml of representative images)")
        if int8 and half:
            raise ConfigError("--int8 quantises the FP32 graph; leave out --half")
        pkg = resolve_model(model)
        net, meta = load_package_model(pkg)
        if out is None:  # never the package's own model.onnx: its hash is the model's identity
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{meta.name}-{meta.version}")
            out = Path.cwd() / f"{stem}{'' if dynamic else f'-static{imgsz}'}{'-fp16' if half else ''}.onnx"
        with progress(transient=True) as bar:
            bar.add_task("exporting", total=None)
            path = export_onnx(net, out, imgsz=imgsz, dynamic=dynamic, half=half)
        if int8:
            from lesionlens.engine.quantize import quantize_int8

            assert calib is not None
            path = quantize_int8(path, calib, out.with_name(out.stem + "-int8.onnx"), spec=meta.input)
        typer.echo(json.dumps({"onnx": str(path)}))  # machine-readable: never wrapped or styled


def register(app: typer.Typer) -> None:
    app.command("train")(_train)
    app.command("predict")(_predict)
    app.command("evaluate")(_evaluate)
    app.command("export")(_export)

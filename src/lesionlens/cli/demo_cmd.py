"""``lesionlens demo``: make a synthetic chest CT study and run LesionLens on it.

What `make demo` runs. The study is written as a messy scanner folder would be (random file
names, a localizer and a non-image object beside the axial series), then:
``inspect`` shows what was found and selected, ``convert`` writes lung-window PNGs and a NIfTI
volume, and — when the packaged default model is installed — ``predict`` lists the findings next
to the phantom's truth.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lesionlens.cli._common import console, error_boundary


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="where the study and the outputs go"),
    seed: int = typer.Option(7, "--seed", help="phantom seed"),
) -> None:
    """Generate a sample CT study and run inspect, convert and (if a model is installed) predict on it."""
    with error_boundary():
        from lesionlens.cli.convert_cmd import run_convert
        from lesionlens.cli.inspect_cmd import _print_table, summarize
        from lesionlens.dicom.scan import scan
        from lesionlens.dicom.select import select_series
        from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

        study = out / "study"
        if not (study / "truth.json").is_file():
            console.rule("1. a synthetic chest CT (not patient data)")
            cfg = CTPhantomConfig(slice_spacings_mm=(2.5,), n_nodules=(3, 4), p_no_nodules=0.0,
                                  nodule_diameter_mm=(6.0, 25.0), small_nodule_fraction=0.5)
            ph = generate_ct(seed, cfg)
            write_ct_study(ph, study, with_localizer=True, with_non_image=True, random_names=True,
                           scramble_instance_numbers=True)
            console.print(f"wrote {ph.hu.shape[0]} slices of {ph.hu.shape[1]}×{ph.hu.shape[2]} to {study} "
                          f"(random file names, scrambled InstanceNumber, a localizer and a KO document beside them)")
        from lesionlens.synth.truth import load_truth

        truth = load_truth(study / "truth.json")

        console.rule("2. lesionlens inspect")
        catalog = scan(study)
        select_series(catalog)
        _print_table(summarize(catalog))

        console.rule("3. lesionlens convert --to png --window lung / --to nifti")
        png = run_convert(study, out / "png", "png", window="lung", bits=8)
        nii = run_convert(study, out / "nifti", "nifti")
        console.print(f"{len(png.outputs)} PNG files in {out / 'png'}; {len(nii.outputs)} NIfTI volume(s) in {out / 'nifti'}")

        console.rule("4. lesionlens predict (default model)")
        _predict(study, out, truth)
        console.print(f"\nEverything is under {out.resolve()}")


def _predict(study: Path, out: Path, truth: object) -> None:
    from lesionlens.engine.predict import PredictConfig, Predictor
    from lesionlens.engine.results import findings_from_predictions
    from lesionlens.errors import ModelError
    from lesionlens.reports.findings import write_json

    try:
        pred = Predictor("default", backend="onnx", config=PredictConfig(conf=0.5))
    except ModelError as exc:
        console.print(f"[yellow]no default model installed ({exc.reason}); skipping detection[/]")
        return
    results, problems = pred.predict(study)
    doc = findings_from_predictions(results, pred, problems)
    path = write_json(doc, out / "findings.json")
    table = Table(title=f"findings — {pred.identity['name']} (demonstration model, synthetic data, not for clinical use)")
    for col in ("label", "confidence", "diameter mm", "centre mm (LPS)", "slice", "truth"):
        table.add_column(col)
    lesions = truth.lesions  # type: ignore[attr-defined]

    def hit(centre: list[float]) -> str:
        for i, les in enumerate(lesions, 1):
            if sum((a - b) ** 2 for a, b in zip(centre, les.center_mm)) ** 0.5 <= les.diameter_mm / 2:
                return f"[green]nodule {i}[/]"
        return "[dim]false positive[/]"

    for st in doc["studies"]:
        for se in st["series"]:
            for f in se["findings"]:
                table.add_row(f["label"], f"{f['confidence']:.2f}", f"{f['diameter_mm']:.1f}",
                              ", ".join(f"{v:.1f}" for v in f["center_mm"]), str(f["slice_index"]), hit(f["center_mm"]))
    console.print(table)
    truth_table = Table(title="truth of the phantom")
    for col in ("#", "type", "diameter mm", "centre mm (LPS)"):
        truth_table.add_column(col)
    for i, les in enumerate(lesions, 1):
        truth_table.add_row(str(i), les.kind, f"{les.diameter_mm:.1f}", ", ".join(f"{v:.1f}" for v in les.center_mm))
    console.print(truth_table)
    console.print(f"findings: {path}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

"""``lesionlens demo``: make a synthetic chest CT study and run LesionLens on it.

What `make demo` runs. The study is written as a messy scanner folder would be (random file
names, a localizer and a non-image object beside the axial series), then:
``inspect`` shows what was found and selected, ``convert`` writes lung-window PNGs and a NIfTI
volume, and — when the packaged default model is installed — ``detect`` writes findings, key
images, the HTML/PDF report and DICOM SR/SEG/GSPS, and lists the findings next to the phantom's
truth.
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
    """Generate a sample CT study and run inspect, convert and (if a model is installed) detect on it."""
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

        console.rule("4. lesionlens detect (default model): findings, report, DICOM SR/SEG/GSPS")
        _detect(study, out / "detect", truth)
        console.print(f"\nEverything is under {out.resolve()}")


def _detect(study: Path, out: Path, truth: object) -> None:
    from lesionlens.cli.detect_cmd import print_summary
    from lesionlens.errors import ModelError
    from lesionlens.pipeline.detect import Detector
    from lesionlens.reports.bundle import write_outputs

    try:
        det = Detector("default", backend="onnx")
    except ModelError as exc:
        console.print(f"[yellow]no default model installed ({exc.reason}); skipping detection[/]")
        return
    results = det.detect(study)
    doc = write_outputs(results, out)
    print_summary(doc, out)
    lesions = truth.lesions  # type: ignore[attr-defined]
    truth_table = Table(title="truth of the phantom (what a perfect detector would report)", title_justify="left")
    for col in ("#", "type", "diameter mm", "centre mm (LPS)", "found as"):
        truth_table.add_column(col)
    found = [(f.get("tracking_id", ""), f["center_mm"]) for st in doc["studies"] for se in st["series"]
             for f in se["findings"] if f["center_mm"]]
    for i, les in enumerate(lesions, 1):
        hits = [tid for tid, c in found
                if sum((a - b) ** 2 for a, b in zip(c, les.center_mm)) ** 0.5 <= max(les.diameter_mm / 2, 1.5)]
        truth_table.add_row(str(i), les.kind, f"{les.diameter_mm:.1f}", ", ".join(f"{v:.1f}" for v in les.center_mm),
                            f"[green]{', '.join(hits)}[/]" if hits else "[red]missed[/]")
    console.print(truth_table)
    console.print(f"open {out.resolve() / 'report.html'} in a browser for the report")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

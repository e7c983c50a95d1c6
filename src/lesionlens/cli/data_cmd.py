"""``lesionlens data …``: synthetic studies, format conversion, patient splits, statistics.

Thin on purpose: every command parses its options, calls one function of :mod:`lesionlens.data`
or :mod:`lesionlens.synth`, and prints the result. Errors pass through the CLI error boundary.

``data convert --from dicom --to yolo --deid`` de-identifies the DICOM input into a private work
folder first (removed at the end, also on error), rewrites each ``truth.json`` to the keyed UIDs
and pseudonymous Patient ID beside its de-identified series, and builds the set from that copy.

``--kind`` picks what a DICOM folder holds: ``ct`` (the default; CT series with ``truth.json``,
:func:`lesionlens.data.trainset.build_training_set`) or ``2d`` (MG/DX/CR images with
``<name>.truth.json``, :func:`lesionlens.data.trainset_2d.build_training_set_2d`). There is no
guessing; a CT run on a folder holding only 2D truth files says to use ``--kind 2d``. With
``--deid`` each 2D truth is rewritten beside its de-identified image (new file name and UIDs,
pseudonymous Patient ID, boxes/labels/sizes only).
"""

from __future__ import annotations

import json
import shutil
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from lesionlens.cli._common import console, err_console, error_boundary, progress
from lesionlens.errors import ConfigError, DataFormatError, OutputError, UnsupportedInputError

if TYPE_CHECKING:
    from lesionlens.data.annotations import DetectionDataset
    from lesionlens.data.trainset import TrainSetConfig, TrainSetSummary
    from lesionlens.data.trainset_2d import TrainSet2DSummary
    from lesionlens.privacy.deid_files import DeidReport
    from lesionlens.privacy.deid_options import DeidConfig

EXIT_PARTIAL = 1

data_app = typer.Typer(
    name="data",
    help="Datasets: synthetic studies, conversion between formats, patient splits, statistics.",
    no_args_is_help=True,
)


class SynthKind(str, Enum):
    ct = "ct"
    mammo = "mammo"
    xray = "xray"


class SynthSize(str, Enum):
    small = "small"
    full = "full"


class FromFormat(str, Enum):
    luna16 = "luna16"
    coco = "coco"
    yolo = "yolo"
    json = "json"
    dicom = "dicom"


class ToFormat(str, Enum):
    yolo = "yolo"
    coco = "coco"


class DicomKind(str, Enum):
    ct = "ct"
    two_d = "2d"


SEED_STRIDE = 1_000_003  # study i of seed S gets S·stride + i: distinct for every (S, i < stride)


def study_seed(seed: int, index: int) -> int:
    """The seed of study ``index`` of a run with ``seed`` (distinct per (seed, index))."""
    if seed < 0 or not 0 <= index < SEED_STRIDE:
        raise ConfigError(f"--seed must be >= 0 and --studies < {SEED_STRIDE}")
    return seed * SEED_STRIDE + index


def _synth_one(kind: SynthKind, size: SynthSize, seed: int, out: Path) -> Path:
    """Generate and write one study of ``kind`` into ``out``; returns the written path."""
    if kind is SynthKind.ct:
        from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

        cfg = None
        if size is SynthSize.small:  # ~0.3 s a study: 24 slices of 96², whole chest in view
            cfg = CTPhantomConfig(
                matrix=(96, 96), n_slices=24, pixel_spacing_mm=(3.5, 4.0), slice_spacings_mm=(5.0,),
                nodule_diameter_mm=(6.0, 25.0), n_nodules=(1, 3), max_vessel_segments=300,
            )
        return write_ct_study(generate_ct(seed, cfg), out, with_label_map=True)
    from lesionlens.synth.dicom2d import write_2d_study

    if kind is SynthKind.mammo:
        from lesionlens.synth.mammo import MammoConfig, generate_mammogram

        mcfg = MammoConfig(rows=400, cols=300) if size is SynthSize.small else None
        return write_2d_study(generate_mammogram(seed, mcfg), out, patient_id=f"MG{seed:010d}")
    from lesionlens.synth.xray import ChestXrayConfig, generate_chest_xray

    xcfg = ChestXrayConfig(rows=256, cols=256) if size is SynthSize.small else None
    return write_2d_study(generate_chest_xray(seed, xcfg), out, patient_id=f"DX{seed:010d}")


@data_app.command("synth")
def synth(
    kind: SynthKind = typer.Argument(..., help="Which phantom: ct, mammo or xray."),
    studies: int = typer.Option(1, "--studies", min=1, help="Number of studies."),
    out: Path = typer.Option(..., "--out", help="Output folder (one sub-folder per study)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Run seed; each study gets its own seed from it."),
    size: SynthSize = typer.Option(SynthSize.full, "--size", help="small: tiny images for tests; full: realistic."),
) -> None:
    """Write synthetic DICOM studies with truth files (truth.json / *.truth.json)."""
    with error_boundary():
        out.mkdir(parents=True, exist_ok=True)
        with progress() as bar:
            task = bar.add_task(f"synth {kind.value}", total=studies)
            for i in range(studies):
                _synth_one(kind, size, study_seed(seed, i), out / f"{kind.value}-{i:04d}")
                bar.advance(task)
        console.print(f"wrote {studies} {kind.value} stud{'y' if studies == 1 else 'ies'} to {out}")


def _trainset_config(
    ratios: str, seed: int, context_mm: str, image_format: str, negative_ratio: float, min_box_px: float
) -> TrainSetConfig:
    from lesionlens.data.split import parse_ratios
    from lesionlens.data.trainset import TrainSetConfig

    try:
        ctx = tuple(float(v) for v in context_mm.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--context-mm: expected comma-separated mm offsets, got {context_mm!r}") from None
    return TrainSetConfig.from_mapping(
        {
            "ratios": parse_ratios(ratios, "--ratios"),
            "seed": seed,
            "context_mm": ctx,
            "image_format": image_format,
            "negative_ratio": negative_ratio,
            "min_box_px": min_box_px,
        }
    )


def _copy_images(ds: DetectionDataset, src_root: Path, out: Path) -> None:
    """Copy each image (path relative to ``src_root``) to the same relative path under ``out``."""
    for im in ds.all_images():
        rel = Path(im.image)
        if rel.is_absolute():
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src_root / rel, dst)
        except OSError as exc:
            raise OutputError(f"cannot copy image {rel}: {exc}", path=src_root / rel) from None


def _print_split_table(title: str, summary: TrainSetSummary | TrainSet2DSummary) -> None:
    """Patients, positives, negatives and boxes per split (both builders' summaries have them)."""
    table = Table(title=title)
    for col in ("split", "patients", "positives", "negatives", "boxes"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for s in ("train", "val", "test"):
        table.add_row(s, *(str(getattr(summary, f)[s]) for f in ("patients", "positives", "negatives", "boxes")))
    console.print(table)


def _print_build_summary(summary: TrainSetSummary) -> None:
    _print_split_table("training set", summary)
    console.print(f"cross-sections under the minimum size skipped: {summary.skipped_small}")
    console.print(f"fingerprint: {summary.fingerprint}")


#: The nodule fields a de-identified truth keeps (geometry and appearance only; see
#: :func:`lesionlens.synth.truth.study_truth_from_dict`). Everything else of the truth document
#: (patient name, generator, scanner, ...) is dropped.
_TRUTH_NODULE_KEYS = (
    "id", "type", "center_lps_mm", "diameter_mm", "axes_mm", "axis_directions_lps", "extent_lps_mm",
    "lobulated", "juxtapleural", "juxtavascular", "hu", "core_hu", "core_diameter_mm", "excluded",
)


def _header(path: Path, *keywords: str) -> dict[str, str]:
    """Some header values of one DICOM file ("" when missing or unreadable)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(keywords))
    except Exception:
        return dict.fromkeys(keywords, "")
    return {k: str(ds.get(k, "") or "").strip() for k in keywords}


def _deid_dicom_source(src: Path, work: Path, config: DeidConfig) -> tuple[Path, DeidReport, frozenset[str], list[str]]:
    """De-identify the DICOM studies under ``src`` into ``work`` and put a de-identified
    ``truth.json`` beside each truth's de-identified series.

    The truth's series is found among the written files of the truth's folder by its original
    Series Instance UID; the new truth takes the written Study/Series Instance UIDs, the keyed
    pseudonym of its Patient ID (so the patient split still groups a patient's series) and the
    lesion geometry only. Returns (the de-identified folder, the report, the truth files of
    ``src`` (expected non-DICOM), warnings for truths left out because none of their series'
    files was written).
    """
    from lesionlens.cli.convert_cmd import deidentify_input
    from lesionlens.data.formats.dicom_truth import read_truth_folder
    from lesionlens.synth.truth import SCHEMA, read_truth_document, write_truth

    found = read_truth_folder(src)  # validates every truth file before any work
    truths = list(zip([f for f in found.truth_files if f.name == "truth.json"], found.studies, strict=True))
    if not truths:
        raise DataFormatError("no CT series with truth (truth.json) found", path=src)
    dicom, report = deidentify_input(src, work, config)
    truth_files = frozenset(str(f) for f in found.truth_files)
    held_back = [Path(s) for s, _ in report.quarantined] + [Path(s) for s, c, _ in report.failed if c != "not-dicom"]
    by_series: dict[str, list[tuple[Path, Path]]] = {}  # original Series UID → (source, output), in order
    for s, o in report.written:  # one header read per written file, whatever the number of truths
        by_series.setdefault(_header(Path(s), "SeriesInstanceUID")["SeriesInstanceUID"], []).append((Path(s), Path(o)))
    warnings: list[str] = []
    placed: dict[Path, Path] = {}
    for truth_path, truth in truths:
        folder = truth_path.parent
        target = next((o for src_file, o in by_series.get(truth.series_instance_uid, []) if folder in src_file.parents),
                      None)
        if target is None:
            if any(folder in h.parents for h in held_back):
                warnings.append(f"{truth_path}: left out, no file of its series could be de-identified")
                continue
            raise DataFormatError(
                f"series {truth.series_instance_uid} named by the truth was not found under {folder}", path=truth_path
            )
        if target.parent in placed:
            raise DataFormatError(f"the same series as {placed[target.parent]}", path=truth_path)
        placed[target.parent] = truth_path
        new = _header(target, "StudyInstanceUID", "SeriesInstanceUID")
        doc: dict[str, Any] = read_truth_document(truth_path)
        write_truth(
            {
                "schema": SCHEMA,
                "patient_id": config.key.pseudonym(truth.patient_id) if truth.patient_id else new["SeriesInstanceUID"],
                "study_instance_uid": new["StudyInstanceUID"],
                "series_instance_uid": new["SeriesInstanceUID"],
                "nodules": [{k: n[k] for k in _TRUTH_NODULE_KEYS if k in n} for n in doc.get("nodules") or []],
            },
            target.parent,
        )
    if not placed:
        raise DataFormatError("no CT series with truth could be de-identified (see the files listed above)", path=src)
    return dicom, report, truth_files, warnings


@data_app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Input: folder (dicom, yolo, luna16) or JSON file (coco, json)."),
    from_: FromFormat = typer.Option(..., "--from", help="Input format."),
    to: ToFormat = typer.Option(..., "--to", help="Output format."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    ratios: str = typer.Option("0.7,0.15,0.15", "--ratios", help="dicom/luna16 → yolo: train,val,test by patient."),
    seed: int = typer.Option(0, "--seed", help="dicom/luna16 → yolo: split and negative sampling seed."),
    context_mm: str = typer.Option("-2.5,0,2.5", "--context-mm", help="dicom/luna16 → yolo: channel offsets (mm)."),
    image_format: str = typer.Option("npy-hu", "--image-format", help="dicom/luna16 → yolo: npy-hu or png16."),
    negative_ratio: float = typer.Option(1.0, "--negative-ratio", help="dicom/luna16 → yolo: negatives per positive."),
    min_box_px: float = typer.Option(2.0, "--min-box-px", help="dicom/luna16 → yolo: smallest box kept (px)."),
    deid: bool = typer.Option(False, "--deid", help="de-identify the DICOM input first (PS3.15 basic profile)"),
    deid_option: list[str] | None = typer.Option(None, "--deid-option", help="a PS3.15 option for --deid (repeatable)"),
    key_file: Path | None = typer.Option(None, "--key-file", help="de-identification key file (with --deid)"),
    kind: DicomKind = typer.Option(
        DicomKind.ct, "--kind", help="dicom → yolo: ct (CT series + truth.json) or 2d (MG/DX/CR images + *.truth.json)."
    ),
    max_side: int | None = typer.Option(
        None, "--max-side", help="--kind 2d: shrink images whose longer side exceeds N px (area averaging)."
    ),
) -> None:
    """Convert annotations between formats; --from dicom|luna16 --to yolo builds a detection training set
    (2D/2.5D CT slices, or with --kind 2d 1-channel radiographs/mammograms)."""
    deid_ok = True
    with error_boundary():
        from lesionlens.cli.convert_cmd import deid_config, deid_workspace, print_deid_report

        deid_cfg = deid_config(deid, deid_option, key_file)
        if deid_cfg is not None and from_ is not FromFormat.dicom:
            raise ConfigError(f"--deid de-identifies DICOM input: use it with --from dicom, not --from {from_.value}")
        if kind is DicomKind.two_d or max_side is not None:
            _check_2d_options(from_, to, kind, max_side, context_mm, image_format, negative_ratio, min_box_px)
        if kind is DicomKind.two_d:
            deid_ok = _convert_dicom_2d(src, out, ratios, seed, max_side, deid_cfg)
        elif from_ in (FromFormat.dicom, FromFormat.luna16):
            if from_ is FromFormat.dicom:
                _refuse_2d_only(src)
            if to is not ToFormat.yolo:
                raise UnsupportedInputError(f"--from {from_.value} (3D CT truth) converts only --to yolo (a 2D/2.5D training set)")
            from lesionlens.data.trainset import build_training_set, luna16_cases

            cfg = _trainset_config(ratios, seed, context_mm, image_format, negative_ratio, min_box_px)

            def build(sources: list[Any]) -> TrainSetSummary:
                with progress() as bar:
                    task = bar.add_task("reading series", total=None)

                    def tick(done: int, total: int, what: str) -> None:
                        bar.update(task, completed=done, total=total, description=what[-40:])

                    return build_training_set(sources, out, cfg, progress=tick).summary

            if deid_cfg is None:
                summary = build(luna16_cases(src) if from_ is FromFormat.luna16 else [src])
            else:
                if not src.is_dir():
                    raise DataFormatError("not a folder", path=src)
                with deid_workspace(out) as work:
                    dicom, report, truth_files, warnings = _deid_dicom_source(src, work, deid_cfg)
                    deid_ok = print_deid_report(report, ignore=truth_files)
                    for line in warnings:
                        err_console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
                    summary = build([dicom])
                deid_ok = deid_ok and not warnings
            _print_build_summary(summary)
        else:
            _convert_2d(src, from_, to, out)
    if not deid_ok:
        err_console.print("[bold yellow]some DICOM files were held back from the de-identified set (listed above)[/]",
                          highlight=False)
        raise typer.Exit(EXIT_PARTIAL)


# ----------------------------------------------------------------------- dicom --kind 2d


def _check_2d_options(
    from_: FromFormat, to: ToFormat, kind: DicomKind, max_side: int | None,
    context_mm: str, image_format: str, negative_ratio: float, min_box_px: float,
) -> None:
    """Refuse option mixes of ``--kind 2d`` that would be silently ignored."""
    if kind is not DicomKind.two_d:
        raise ConfigError("--max-side applies to --kind 2d only")
    if from_ is not FromFormat.dicom or to is not ToFormat.yolo:
        raise ConfigError(f"--kind 2d builds a training set from DICOM: use --from dicom --to yolo, not --from {from_.value} --to {to.value}")
    ct_only = {
        "--context-mm": context_mm != "-2.5,0,2.5", "--image-format": image_format != "npy-hu",
        "--negative-ratio": negative_ratio != 1.0, "--min-box-px": min_box_px != 2.0,
    }
    given = [k for k, v in ct_only.items() if v]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to --kind ct only (a 2D set keeps every image, 1 channel, npy)")


def _refuse_2d_only(src: Path) -> None:
    """A CT run on a folder with 2D truth files but no ``truth.json``: say to use ``--kind 2d``."""
    if src.is_dir() and next(src.rglob("truth.json"), None) is None and next(src.rglob("*.truth.json"), None) is not None:
        raise DataFormatError("no CT series with truth (truth.json) found, only 2D truth files (*.truth.json): "
                              "use --kind 2d", path=src)


def _deid_2d_source(src: Path, work: Path, config: DeidConfig) -> tuple[Path, DeidReport, frozenset[str], list[str]]:
    """De-identify the 2D images under ``src`` into ``work`` and write each ``*.truth.json`` anew
    beside its de-identified image: ``image`` = the new file name, the written Study/Series/SOP
    Instance UIDs and Patient ID, and the lesions' label, box and size only. Returns (the
    de-identified folder, the report, the truth files of ``src``, warnings for truths left out)."""
    from lesionlens.cli.convert_cmd import deidentify_input
    from lesionlens.data.annotations import ImageAnnotation
    from lesionlens.data.formats.dicom_truth import read_truth_2d, write_truth_2d

    if not src.is_dir():
        raise DataFormatError("not a folder", path=src)
    files = sorted(p for p in src.rglob("*.truth.json") if p.is_file())
    if not files:
        raise DataFormatError("no 2D truth file (*.truth.json) found", path=src)
    truths = [(f, *read_truth_2d(f, check_image=False)) for f in files]  # validates all before any work
    dicom, report = deidentify_input(src, work, config)
    written = {str(Path(s).resolve()): Path(o) for s, o in report.written}
    held = {str(Path(s).resolve()) for s, _ in report.quarantined}
    held |= {str(Path(s).resolve()) for s, c, _ in report.failed if c != "not-dicom"}
    warnings: list[str] = []
    for f, ann, names in truths:
        image = str((f.parent / ann.image).resolve())
        target = written.get(image)
        if target is None:
            why = "could not be de-identified" if image in held else "is not a DICOM file that was written"
            warnings.append(f"{f}: left out, its image {ann.image} {why}")
            continue
        new = _header(target, "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")
        sizes = ann.extra.get("sizes_mm") or [None] * len(ann.boxes)
        clean = ImageAnnotation(
            image=target.name, width=ann.width, height=ann.height, boxes=ann.boxes, labels=ann.labels,
            patient_id=new["PatientID"] or (config.key.pseudonym(ann.patient_id) if ann.patient_id else ""),
            study_instance_uid=new["StudyInstanceUID"], series_instance_uid=new["SeriesInstanceUID"],
            sop_instance_uid=new["SOPInstanceUID"], extra={"sizes_mm": sizes},
        )
        dst = target.with_name(target.stem + ".truth.json")
        if dst.exists():
            raise DataFormatError(f"two truths for the de-identified image {target.name}", path=f)
        write_truth_2d(clean, names, dst)
    return dicom, report, frozenset(str(f) for f in files), warnings


def _print_2d_summary(summary: TrainSet2DSummary) -> None:
    _print_split_table("training set (2D)", summary)
    console.print(f"images: {summary.images} ({summary.downscaled} downscaled)")
    for path in summary.skipped_no_truth:
        err_console.print(f"  skipped (no truth file): {path}", highlight=False, markup=False, soft_wrap=True)
    for path in summary.truth_without_image:
        err_console.print(f"  truth without its image (not used): {path}", highlight=False, markup=False, soft_wrap=True)
    for p in summary.problems:
        err_console.print(f"  {p}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"fingerprint: {summary.fingerprint}")


def _convert_dicom_2d(src: Path, out: Path, ratios: str, seed: int, max_side: int | None, deid_cfg: DeidConfig | None) -> bool:
    """``--from dicom --to yolo --kind 2d`` (optionally ``--deid``); returns False when
    de-identification held files back."""
    from lesionlens.cli.convert_cmd import deid_workspace, print_deid_report
    from lesionlens.data.split import parse_ratios
    from lesionlens.data.trainset_2d import TrainSet2DConfig, build_training_set_2d

    cfg = TrainSet2DConfig.from_mapping({"ratios": parse_ratios(ratios, "--ratios"), "seed": seed, "max_side": max_side})

    def build(source: Path) -> TrainSet2DSummary:
        with progress() as bar:
            task = bar.add_task("reading images", total=None)

            def tick(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=what[-40:])

            return build_training_set_2d([source], out, cfg, progress=tick).summary

    ok = True
    if deid_cfg is None:
        summary = build(src)
    else:
        with deid_workspace(out) as work:
            dicom, report, truth_files, warnings = _deid_2d_source(src, work, deid_cfg)
            ok = print_deid_report(report, ignore=truth_files)
            for line in warnings:
                err_console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
            summary = build(dicom)
        ok = ok and not warnings
    _print_2d_summary(summary)
    return ok


def _convert_2d(src: Path, from_: FromFormat, to: ToFormat, out: Path) -> None:
    """2D annotation formats (yolo, coco, studies json) into yolo or coco."""
    if from_.value == to.value:
        raise UnsupportedInputError(f"--from and --to are both {to.value}: nothing to convert")
    if from_ is FromFormat.yolo:
        from lesionlens.data.formats.yolo import read_yolo

        yaml_path = src / "dataset.yaml" if src.is_dir() else src
        ds = read_yolo(yaml_path)
        import yaml as _yaml

        base = Path(str((_yaml.safe_load(yaml_path.read_text()) or {}).get("path") or "."))
        src_root = base if base.is_absolute() else yaml_path.parent / base
    else:
        if from_ is FromFormat.coco:
            from lesionlens.data.formats.coco import read_coco as reader
        else:
            from lesionlens.data.formats.studies_json import read_studies_json as reader
        ds = reader(src)
        src_root = src.parent
    if to is ToFormat.yolo:
        from lesionlens.data.formats.yolo import write_yolo

        write_yolo(ds, out, image_root=src_root)
    else:
        from lesionlens.data.formats.coco import write_coco

        out.mkdir(parents=True, exist_ok=True)
        _copy_images(ds, src_root, out)
        for split in ds.splits:
            write_coco(ds, out / f"{split}.json", split=split)
    n_img, n_box = len(ds.all_images()), sum(len(im.boxes) for im in ds.all_images())
    console.print(f"converted {n_img} images, {n_box} boxes ({from_.value} → {to.value}) into {out}")


@data_app.command("split")
def split(
    root: Path = typer.Argument(..., help="Dataset folder holding dataset.yaml."),
    ratios: str = typer.Option("0.7,0.15,0.15", "--ratios", help="train,val,test weights."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
) -> None:
    """Re-split a YOLO-layout dataset by patient (no patient in two splits)."""
    from lesionlens.data.split import parse_ratios, resplit_dataset

    with error_boundary():
        assignment = resplit_dataset(root, parse_ratios(ratios, "--ratios"), seed)
        table = Table(title=f"patients per split (seed {seed})")
        table.add_column("split")
        table.add_column("patients", justify="right")
        for s in ("train", "val", "test"):
            table.add_row(s, str(sum(1 for v in assignment.values() if v == s)))
        console.print(table)


@data_app.command("stats")
def stats(
    root: Path = typer.Argument(..., help="Dataset folder holding dataset.yaml."),
    out: Path | None = typer.Option(None, "--out", help="Write the statistics as JSON here."),
    histogram: Path | None = typer.Option(
        None, "--histogram", help="Lesion-size histogram PNG (default: beside --out, else ROOT/lesion_sizes.png)."
    ),
) -> None:
    """Counts per split (images, boxes, patients, positives/negatives), class balance, lesion sizes."""
    from lesionlens.data.stats import dataset_stats, save_size_histogram

    with error_boundary():
        st = dataset_stats(root)
        hist = histogram or (out.with_name(out.stem + "_sizes.png") if out else root / "lesion_sizes.png")
        save_size_histogram(st, hist)
        doc = st.to_dict()
        doc["histogram"] = str(hist)
        table = Table(title=f"dataset {root}")
        for col in ("split", "images", "positives", "negatives", "boxes", "patients"):
            table.add_column(col, justify="left" if col == "split" else "right")
        for name, s in [*st.splits.items(), ("total", st.total)]:
            table.add_row(name, str(s.images), str(s.positives), str(s.negatives), str(s.boxes), str(s.patients))
        console.print(table)
        balance = Table(title="class balance")
        balance.add_column("class")
        balance.add_column("boxes", justify="right")
        balance.add_column("share", justify="right")
        for n in st.names:
            count = st.total.boxes_per_class.get(n, 0)
            balance.add_row(n, str(count), f"{count / st.total.boxes:.1%}" if st.total.boxes else "-")
        console.print(balance)
        size = doc["lesion_size"]
        if size["count"]:  # type: ignore[index]
            console.print(
                f"lesion size ({size['unit']}): min {size['min']:.1f}, median {size['median']:.1f}, "  # type: ignore[index]
                f"max {size['max']:.1f}; histogram: {hist}"  # type: ignore[index]
            )
        if out is not None:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(doc, indent=1))
            except OSError as exc:
                raise OutputError(f"cannot write statistics: {exc}", path=out) from None
            console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to ``app``."""
    app.add_typer(data_app, name="data")

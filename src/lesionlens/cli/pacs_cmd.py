"""``lesionlens pacs echo|find|process`` — talk to a PACS; process a study that sits in it.

``lesionlens pacs process STUDY_UID --from AET@HOST:PORT`` (C-FIND + C-GET, or ``--method move``)
or ``--from-dicomweb URL`` (QIDO-RS + WADO-RS) runs the study pipeline and stores the SR/SEG/GSPS
back into the PACS (or ``--store-to`` destinations). ``--deid`` de-identifies what was retrieved
before anything else sees it (research pulls); results then go only where ``--store-to`` says.
Exit 0 when the results were written and delivered, 1 when a destination refused them (outputs
kept in ``--out``), 2 for a user error (bad UID/peer, study not found, PACS unreachable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from lesionlens.cli._common import console, err_console, error_boundary
from lesionlens.errors import ConfigError

pacs_app = typer.Typer(help="Talk to a PACS: echo, find studies, process a study in place.", no_args_is_help=True)


@pacs_app.command("echo")
def _echo(
    peer: str = typer.Argument(..., help="AET@HOST:PORT"),
    ae_title: str = typer.Option("LESIONLENS", "--ae-title", help="our calling AE title"),
) -> None:
    """C-ECHO a DICOM peer (exit 0 when it answers Success)."""
    with error_boundary():
        from lesionlens.net.scu import echo

        status = echo(peer, calling_ae=ae_title)
        console.print(f"{peer}: C-ECHO status 0x{status:04X}")
        if status != 0:
            raise typer.Exit(1)


@pacs_app.command("find")
def _find(
    peer: str = typer.Argument(..., help="AET@HOST:PORT or a DICOMweb root URL"),
    patient_id: str | None = typer.Option(None, "--patient-id"),
    study_date: str | None = typer.Option(None, "--study-date", help="YYYYMMDD or a range A-B"),
    accession: str | None = typer.Option(None, "--accession"),
    study_uid: str | None = typer.Option(None, "--study-uid"),
    ae_title: str = typer.Option("LESIONLENS", "--ae-title"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """C-FIND / QIDO-RS studies at STUDY level."""
    with error_boundary():
        from lesionlens.service.pull import find_at

        keys: dict[str, Any] = {k: v for k, v in (("PatientID", patient_id), ("StudyDate", study_date),
                                  ("AccessionNumber", accession), ("StudyInstanceUID", study_uid)) if v}
        found = find_at(peer, ae_title, **keys)
        if as_json:
            typer.echo(json.dumps(found, indent=2))
            return
        table = Table(title=f"{len(found)} studies at {peer}", title_justify="left")
        cols = ("StudyInstanceUID", "StudyDate", "PatientID", "AccessionNumber", "ModalitiesInStudy",
                "NumberOfStudyRelatedInstances")
        for c in cols:
            table.add_column(c)
        for row in found:
            table.add_row(*(row.get(c, "") for c in cols))
        console.print(table)


@pacs_app.command("process")
def _process(
    study_uid: str = typer.Argument(..., help="Study Instance UID to process"),
    source: str | None = typer.Option(None, "--from", help="the PACS: AET@HOST:PORT (C-FIND + C-GET/C-MOVE)"),
    source_web: str | None = typer.Option(None, "--from-dicomweb", help="DICOMweb root URL (QIDO-RS + WADO-RS)"),
    out: Path = typer.Option(Path("lesionlens-pull"), "--out", help="output folder (results; work/ holds the retrieved study)"),
    method: str = typer.Option("get", "--method", help="get | move (C-MOVE to our --ae-title on --move-port)"),
    ae_title: str = typer.Option("LESIONLENS", "--ae-title", help="our AE title (calling AE; C-MOVE destination)"),
    move_port: int = typer.Option(11113, "--move-port", help="port of our temporary listener for --method move"),
    store_to: list[str] | None = typer.Option(None, "--store-to",
                                                 help="where results go (AET@HOST:PORT or STOW URL; repeatable); "
                                                      "default: the source (none with --deid)"),
    no_store: bool = typer.Option(False, "--no-store", help="keep the results local; store nothing back"),
    model: str = typer.Option("default", "--model"),
    conf: float = typer.Option(0.5, "--conf"),
    threads: int | None = typer.Option(None, "--threads"),
    deid: bool = typer.Option(False, "--deid", help="de-identify the retrieved study first (PS3.15 basic profile)"),
    deid_option: list[str] | None = typer.Option(None, "--deid-option", help="a PS3.15 option for --deid (repeatable)"),
    key_file: Path | None = typer.Option(None, "--key-file", help="de-identification key file (with --deid)"),
) -> None:
    """Retrieve a study from a PACS, detect, and store the SR/SEG/GSPS back."""
    with error_boundary():
        from lesionlens.service.pull import PullRequest, process_from_pacs

        if (source is None) == (source_web is None):
            raise ConfigError("give exactly one of --from AET@HOST:PORT and --from-dicomweb URL")
        if method not in ("get", "move"):
            raise ConfigError(f"--method must be get or move, got {method!r}")
        from lesionlens.cli.convert_cmd import deid_config

        deid_cfg = deid_config(deid, deid_option, key_file)
        store_back: list[str] | None = [] if no_store else (list(store_to) if store_to else None)
        req = PullRequest(study_uid=study_uid, source=str(source or source_web), out_dir=out, method=method,  # type: ignore[arg-type]
                          ae_title=ae_title, move_port=move_port, store_back=store_back, model=model,
                          conf=conf, threads=threads, deid=deid_cfg)
        report = process_from_pacs(req)
        (out / "pull-report.json").write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"study {report.study_uid}: {report.retrieved} instances from {report.source}, "
                      f"{report.lesions} lesion(s), status {report.status}", highlight=False, soft_wrap=True)
        for dest, ok in report.delivered.items():
            line = f"results → {dest}: " + ("delivered" if ok else f"NOT delivered ({report.errors.get(dest, '')})")
            (console if ok else err_console).print(line, highlight=False, soft_wrap=True)
        console.print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items()), highlight=False, soft_wrap=True)
        console.print(f"outputs: {out}", highlight=False, soft_wrap=True)
        if not report.ok:
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(pacs_app, name="pacs")

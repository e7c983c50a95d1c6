"""``lesionlens audit verify | export | show``: check and read the audit trail."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from lesionlens.cli._common import console, err_console, error_boundary


def _key(key_file: Path | None) -> bytes | None:
    if key_file is None:
        return None
    from lesionlens.privacy.keys import load_key_material

    return load_key_material(key_file)


def _verify(
    log: Path = typer.Argument(..., help="the audit log (JSON Lines)"),
    key_file: Path | None = typer.Option(None, "--key-file", help="HMAC key of a keyed log"),
    expect_count: int | None = typer.Option(None, "--expect-count", help="records the log must hold"),
    expect_head: str | None = typer.Option(None, "--expect-head", help="hash (or prefix) of the last record"),
    no_head_file: bool = typer.Option(False, "--no-head-file", help="ignore LOG.head"),
) -> None:
    """Check the hash chain. Exit 0 when intact (prints the count and head hash), 1 otherwise."""
    with error_boundary():
        from lesionlens.privacy.audit_export import verify

        res = verify(log, _key(key_file), expect_count=expect_count, expect_head=expect_head,
                     use_head_file=not no_head_file)
    for w in res.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    if res.ok:
        console.print(f"ok: {res.records} records, head {res.head_hash or '-'}", highlight=False, soft_wrap=True)
        return
    seq = f", seq {res.first_bad_seq}" if res.first_bad_seq is not None else ""
    console.print(f"[bold red]FAILED[/] at line {res.first_bad}{seq} ({res.records} good records "
                  f"before it): {res.reason}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _export(
    log: Path = typer.Argument(..., help="the audit log (JSON Lines)"),
    fmt: str = typer.Option("xml", "--format", help="xml | syslog"),
    out: Path | None = typer.Option(None, "--out", help="output file (default: stdout)"),
) -> None:
    """Export DICOM audit messages (PS3.15 A.5 XML) or RFC 5424 syslog lines (IHE ATNA)."""
    with error_boundary():
        from lesionlens.errors import ConfigError
        from lesionlens.privacy.audit_export import iter_records, write_syslog, write_xml

        if fmt not in ("xml", "syslog"):
            raise ConfigError(f"--format must be xml or syslog, not {fmt!r}")
        writer = write_xml if fmt == "xml" else write_syslog
        if out is None:
            n = writer(iter_records(log), sys.stdout)
        else:
            with out.open("w", encoding="utf-8") as fh:
                n = writer(iter_records(log), fh)
            console.print(f"wrote {n} audit messages to {out}", highlight=False, soft_wrap=True)


def _show(
    log: Path = typer.Argument(..., help="the audit log (JSON Lines)"),
    last: int | None = typer.Option(None, "--last", help="only the last N records"),
) -> None:
    """List records in a table (no verification: use 'audit verify')."""
    with error_boundary():
        from lesionlens.privacy.audit_export import iter_records

        records = list(iter_records(log))
    if last is not None:
        records = records[-last:] if last > 0 else []
    table = Table(title=f"{log} ({len(records)} records shown)")
    for col in ("seq", "time (UTC)", "event", "action", "outcome", "user", "from", "objects"):
        table.add_column(col, overflow="fold")
    for rec in records:
        ev = rec["event"]
        types = ", ".join(t["meaning"] for t in ev.get("types") or [])
        parts = rec.get("active_participants") or [{}]
        table.add_row(str(rec["seq"]), ev["datetime"],
                      ev["id"]["meaning"] + (f" ({types})" if types else ""), ev["action"],
                      str(ev["outcome"]), str(parts[0].get("user_id", "")),
                      str(parts[0].get("network_access_point") or ""),
                      "; ".join(f"{o['id_type']['meaning']} {o['object_id']}"
                                for o in rec.get("objects") or []))
    console.print(table)


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="The audit trail: verify, export, show.", no_args_is_help=True)
    audit_app.command("verify")(_verify)
    audit_app.command("export")(_export)
    audit_app.command("show")(_show)
    app.add_typer(audit_app, name="audit")

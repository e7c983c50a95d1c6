"""``lesionlens keys create | id | rotate``: data keys for encryption at rest.

Key bytes are never printed or logged; only key ids are.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lesionlens.cli._common import console, err_console, error_boundary


def _create(
    key_file: Path = typer.Option(..., "--key-file", help="the key file to create (refuses to overwrite)"),
) -> None:
    """Create a new 256-bit data key file (32 random bytes, mode 0600)."""
    with error_boundary():
        from lesionlens.privacy.keys import create_key_file

        key = create_key_file(key_file)
        console.print(f"created key file {key_file} (key id {key.key_id}, mode 0600)", highlight=False, soft_wrap=True)


def _id(key_file: Path = typer.Option(..., "--key-file", help="a key file")) -> None:
    """Print the id of a key (first 8 hex digits of its SHA-256), never the key."""
    with error_boundary():
        from lesionlens.privacy.keys import key_from_file

        typer.echo(key_from_file(key_file).key_id)


def _rotate(
    data_dir: Path = typer.Option(..., "--data-dir", help="folder whose encrypted files are re-encrypted"),
    old_key_file: list[Path] = typer.Option(..., "--old-key-file", help="the old key (repeatable)"),
    new_key_file: Path = typer.Option(..., "--new-key-file", help="the new (active) key"),
) -> None:
    """Re-encrypt every encrypted file under DATA_DIR to the new key (resumable, atomic per file).

    Exits 1 when some file could not be re-encrypted (each is listed with the reason).
    """
    with error_boundary():
        from lesionlens.privacy.crypto import rotate_dir
        from lesionlens.privacy.keys import KeyRing, key_from_file

        new = key_from_file(new_key_file)
        ring = KeyRing(new, [key_from_file(p) for p in old_key_file])
        report = rotate_dir(data_dir, ring)
        console.print(f"rotated {report.rotated}, already under key {new.key_id} {report.skipped}, "
                      f"not encrypted {report.not_encrypted}, failed {len(report.failed)}",
                      highlight=False, soft_wrap=True)
        for path, reason in report.failed:
            err_console.print(f"[red]failed:[/] {path}: {reason}", highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="Data keys for encryption at rest.", no_args_is_help=True)
    keys_app.command("create")(_create)
    keys_app.command("id")(_id)
    keys_app.command("rotate")(_rotate)
    app.add_typer(keys_app, name="keys")

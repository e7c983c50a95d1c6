"""Entry point of the ``lesionlens`` command.

Each command group lives in its own module exposing ``register(app)``.
"""

from __future__ import annotations

import os
import sys

import typer

from lesionlens import __version__
from lesionlens.cli import (
    audit_cmd,
    convert_cmd,
    data_cmd,
    deid_cmd,
    demo_cmd,
    detect_cmd,
    inspect_cmd,
    keys_cmd,
    model_cmd,
    pacs_cmd,
    registry_cmd,
    serve_cmd,
)

app = typer.Typer(
    name="lesionlens",
    help="LesionLens: AI-assisted lesion detection in DICOM studies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lesionlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """LesionLens command line."""


for _module in (inspect_cmd, convert_cmd, detect_cmd, data_cmd, model_cmd, demo_cmd, serve_cmd, pacs_cmd,
                registry_cmd, deid_cmd, keys_cmd, audit_cmd):
    _module.register(app)


def main() -> None:
    """Run the CLI. An unexpected error prints one line (set LESIONLENS_DEBUG=1 for the traceback)."""
    try:
        app()
    except Exception as exc:  # the last boundary: users see a line, not a traceback
        if os.environ.get("LESIONLENS_DEBUG"):
            raise
        from lesionlens.cli._common import err_console

        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                          "(set LESIONLENS_DEBUG=1 for details)", highlight=False)
        sys.exit(3)


if __name__ == "__main__":
    main()

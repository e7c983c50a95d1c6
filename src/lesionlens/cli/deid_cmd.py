"""``lesionlens deid IN OUT [--option ...] [--key-file K] [--mask-region x0,y0,x1,y1]``.

DICOM PS3.15 Basic Application Level Confidentiality Profile (see docs/privacy-deid.md).
``lesionlens deid --make-key K`` writes a new random 32-byte key file. Exit codes: 0 all written,
1 some files failed or were quarantined, 2 user error (no key, bad option, missing input).
"""

from __future__ import annotations

from pathlib import Path

import typer

from lesionlens.cli._common import console, err_console, error_boundary
from lesionlens.errors import ConfigError
from lesionlens.privacy.deid_files import REPORT_NAME, deidentify_path
from lesionlens.privacy.deid_options import DeidConfig
from lesionlens.privacy.deid_table import DeidOption
from lesionlens.privacy.uidmap import make_key_file, resolve_key

EXIT_PARTIAL = 1
_OPTIONS_HELP = ", ".join(o.value for o in DeidOption)


def deid(
    src: Path | None = typer.Argument(None, metavar="IN", help="DICOM file or folder (recursive)."),
    out: Path | None = typer.Argument(None, metavar="OUT", help="Output folder (created if missing)."),
    profile: str = typer.Option("basic", "--profile", help="Confidentiality profile: basic."),
    option: list[str] = typer.Option([], "--option", help=f"Profile option (repeatable): {_OPTIONS_HELP}."),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="Key file (>= 32 bytes); else $LESIONLENS_DEID_KEY (hex/base64)."
    ),
    mask_region: list[str] = typer.Option(
        [], "--mask-region", help="x0,y0,x1,y1 pixel box blanked on objects with burned-in text (repeatable)."
    ),
    make_key: Path | None = typer.Option(None, "--make-key", help="Write a new random key file and exit."),
) -> None:
    """De-identify DICOM (PS3.15 Annex E basic profile + options) with keyed, consistent UIDs."""
    with error_boundary():
        if make_key is not None:
            make_key_file(make_key)
            console.print(f"wrote a new key to {make_key} (keep it secret; it is not recoverable)", highlight=False, soft_wrap=True)
            return
        if src is None or out is None:
            raise ConfigError("need IN and OUT (or --make-key K)")
        if profile != "basic":
            raise ConfigError(f"--profile: unknown profile {profile!r} (valid: basic)")
        config = DeidConfig.build(resolve_key(key_file), option, mask_region)
        report = deidentify_path(src, out, config)
    console.print(
        f"wrote {len(report.written)} de-identified file(s) to {out} ({REPORT_NAME})", highlight=False
    )
    for source, reason in report.quarantined:
        err_console.print(f"  quarantined {source}: {reason}", highlight=False, markup=False, soft_wrap=True)
    for source, code, error in report.failed:
        err_console.print(f"  failed {source}: {error} [{code}]", highlight=False, markup=False, soft_wrap=True)
    if not report.ok:
        err_console.print(
            f"[bold yellow]{len(report.quarantined)} quarantined, {len(report.failed)} failed[/]", highlight=False
        )
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    """Add ``deid`` to ``app``."""
    app.command("deid")(deid)

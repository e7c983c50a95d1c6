from __future__ import annotations

import subprocess
import sys

import lesionlens
from lesionlens.errors import DicomReadError, LesionLensError, PixelDecodeError


def test_version_is_exposed_by_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lesionlens.cli.main", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"lesionlens {lesionlens.__version__}"


def test_error_names_file_and_reason() -> None:
    err = PixelDecodeError("declared length past end of file", path="/x/a.dcm")
    assert isinstance(err, DicomReadError) and isinstance(err, LesionLensError)
    assert str(err) == "/x/a.dcm: declared length past end of file"
    assert err.code == "pixel-decode"

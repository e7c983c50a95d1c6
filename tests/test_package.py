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


def test_the_package_type_checks() -> None:
    """The style guide's rule: mypy is clean on src/ (with the pydantic plugin, pyproject.toml)."""
    import shutil
    from pathlib import Path

    import pytest

    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([mypy, "src"], cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "Success: no issues found" in out.stdout

"""Shared fixtures: real DICOM files from pydicom's test data and the pydicom-data package."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def pydicom_test_files_dir() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_data_dir() -> Path:
    """Folder of the ``pydicom-data`` package's files (module ``data_store``).

    Never use ``pydicom.data.get_testdata_files`` for these: it tries to download missing files.
    """
    import data_store  # provided by the pydicom-data package

    return Path(data_store.__file__).parent / "data"


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    return pydicom_test_files_dir()


@pytest.fixture(scope="session")
def pydicom_data_files() -> Path:
    return pydicom_data_dir()


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it when run as root)")
    return path

"""Fixtures for tests under ``tests/integration``: a real Orthanc on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration.orthanc import OrthancServer, find_orthanc


@pytest.fixture
def orthanc(tmp_path) -> Iterator[OrthancServer]:
    """A running Orthanc with its own storage under ``tmp_path``; stopped afterwards."""
    if find_orthanc() is None:
        pytest.skip("Orthanc is not installed (make sysdeps installs it when run as root)")
    server = OrthancServer(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop(graceful=False)  # throw-away data: no need to wait for a clean shutdown

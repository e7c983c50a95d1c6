"""Fixtures for the networking tests: a tiny CT study, a listener factory and a real Orthanc."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from integration.orthanc import OrthancServer, find_orthanc

from lesionlens.net.scp import DicomListener, DicomListenerConfig
from lesionlens.net.storage import InstanceStore, StoredInstance
from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study


@dataclass(frozen=True)
class Study:
    folder: Path
    files: list[Path]
    study_uid: str
    series_uid: str


@pytest.fixture(scope="session")
def ct_study(tmp_path_factory) -> Study:
    """8 CT slices of 64×64 (Explicit VR Little Endian) from the synthetic phantom."""
    ph = generate_ct(11, CTPhantomConfig(matrix=(64, 64), n_slices=8, max_vessel_segments=200))
    folder = write_ct_study(ph, tmp_path_factory.mktemp("ct_study"))
    return Study(folder, sorted(folder.glob("CT_*.dcm")), ph.uids["study"], ph.uids["series"])


@pytest.fixture(scope="session")
def ct_study_rle(tmp_path_factory) -> Study:
    """The same kind of study, RLE Lossless compressed (another seed, so other UIDs)."""
    ph = generate_ct(13, CTPhantomConfig(matrix=(64, 64), n_slices=4, max_vessel_segments=200))
    folder = write_ct_study(ph, tmp_path_factory.mktemp("ct_study_rle"), transfer_syntax="1.2.840.10008.1.2.5")
    return Study(folder, sorted(folder.glob("CT_*.dcm")), ph.uids["study"], ph.uids["series"])


ListenerFactory = Callable[..., DicomListener]


@pytest.fixture
def make_listener(tmp_path) -> Iterator[ListenerFactory]:
    """Start DicomListeners on free ports (stopped at teardown).

    ``make_listener(store=None, on_stored=None, accepting=None, **config)``; the store defaults
    to ``tmp_path / "store"``; stored instances are also appended to ``listener.received``.
    """
    started: list[DicomListener] = []

    def make(store: InstanceStore | Path | None = None, *, on_stored=None, accepting=None,
             **config) -> DicomListener:
        received: list[StoredInstance] = []

        def cb(inst: StoredInstance) -> None:
            received.append(inst)
            if on_stored is not None:
                on_stored(inst)

        config.setdefault("port", 0)
        listener = DicomListener(store if store is not None else tmp_path / "store",
                                 DicomListenerConfig(**config), on_stored=cb, accepting=accepting)
        listener.received = received  # type: ignore[attr-defined]
        started.append(listener.start())
        return listener

    yield make
    for listener in started:
        listener.stop()


def _need_orthanc() -> None:
    if find_orthanc() is None:
        pytest.skip("Orthanc is not installed (make sysdeps installs it when run as root)")


@pytest.fixture(scope="module")
def orthanc_module(tmp_path_factory) -> Iterator[OrthancServer]:
    """One Orthanc for a test module (tests must use their own study UIDs or tolerate others)."""
    _need_orthanc()
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop(graceful=False)  # throw-away data: no need to wait for a clean shutdown


@pytest.fixture
def orthanc(tmp_path) -> Iterator[OrthancServer]:
    """A fresh Orthanc of its own for one test (stopped afterwards)."""
    _need_orthanc()
    server = OrthancServer(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop(graceful=False)  # throw-away data: no need to wait for a clean shutdown


@pytest.fixture
def dcmtk() -> Callable[[str], str]:
    """``dcmtk("storescu")`` → the tool's path, or skip the test when it is not installed."""
    import shutil

    def need(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            pytest.skip(f"{name} is not installed (make sysdeps installs dcmtk when run as root)")
        return path

    return need

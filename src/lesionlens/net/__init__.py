"""DICOM networking: the listener (C-ECHO/C-STORE SCP), SCU operations and a DICOMweb client.

* :class:`DicomListener` (+ :class:`DicomListenerConfig`) receives instances into an
  :class:`InstanceStore` (durable, idempotent, paths from validated UIDs only).
* :func:`send_files`, :func:`echo`, :func:`find_studies`, :func:`retrieve_study` talk to a
  PACS given as a :class:`Peer` or ``"AET@HOST:PORT"``.
* :func:`stow`, :func:`qido_studies`, :func:`wado_study` speak DICOMweb.
"""

from lesionlens.net.address import Peer, parse_peer
from lesionlens.net.dicomweb import StowReport, WebOptions, qido_studies, stow, wado_study
from lesionlens.net.errors import (
    AssociationError,
    DicomWebError,
    DimseError,
    InvalidInstanceError,
    InvalidUIDError,
    NetworkError,
    StorageError,
)
from lesionlens.net.scp import DicomListener, DicomListenerConfig, ListenerStats
from lesionlens.net.scu import (
    RetrieveReport,
    ScuOptions,
    SendReport,
    echo,
    find_studies,
    retrieve_study,
    send_files,
)
from lesionlens.net.storage import InstanceStore, StoredInstance, validate_uid

__all__ = [
    "AssociationError",
    "DicomListener",
    "DicomListenerConfig",
    "DicomWebError",
    "DimseError",
    "InstanceStore",
    "InvalidInstanceError",
    "InvalidUIDError",
    "ListenerStats",
    "NetworkError",
    "Peer",
    "RetrieveReport",
    "ScuOptions",
    "SendReport",
    "StorageError",
    "StoredInstance",
    "StowReport",
    "WebOptions",
    "echo",
    "find_studies",
    "parse_peer",
    "qido_studies",
    "retrieve_study",
    "send_files",
    "stow",
    "validate_uid",
    "wado_study",
]

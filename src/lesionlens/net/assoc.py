"""Shared SCU plumbing: :class:`ScuOptions`, making the AE, associating with retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from lesionlens.errors import ConfigError
from lesionlens.net.address import Peer, validate_ae_title
from lesionlens.net.errors import AssociationError

log = logging.getLogger("lesionlens.net.scu")

DEFAULT_CALLING_AE = "LESIONLENS"
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1…255
PENDING = {0xFF00, 0xFF01}


@dataclass(frozen=True)
class ScuOptions:
    """How an SCU connects: timeouts (seconds), retries of the association, PDU size.

    retries: further association attempts after the first fails (0 = try once), waiting
    ``retry_delay_s`` and doubling each time.
    """

    connect_timeout_s: float = 10.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    retries: int = 2
    retry_delay_s: float = 1.0
    max_pdu: int = 262_144

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.retries < 0 or self.retry_delay_s < 0:
            raise ConfigError("retries and retry_delay_s must be ≥ 0")


DEFAULT_OPTIONS = ScuOptions()



def make_ae(calling_ae: str, options: ScuOptions) -> AE:
    ae = AE(ae_title=validate_ae_title(calling_ae, field="calling_ae"))
    ae.connection_timeout = options.connect_timeout_s
    ae.acse_timeout = options.acse_timeout_s
    ae.dimse_timeout = options.dimse_timeout_s
    ae.network_timeout = options.network_timeout_s
    ae.maximum_pdu_size = options.max_pdu
    return ae


def _associate_once(ae: AE, peer: Peer, **kw: Any) -> Association:
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kw)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        why = "association rejected by the peer"
        rej = getattr(assoc.acceptor, "primitive", None)
        if rej is not None and getattr(rej, "result_str", None):
            why += f" ({rej.result_str}, {rej.source_str}, {rej.reason_str})"
    elif assoc.is_aborted:
        why = "association aborted by the peer"
    else:
        why = "no connection (peer down or unreachable?)"
    raise AssociationError(f"cannot associate with {peer}: {why}", code="association")


def associate(ae: AE, peer: Peer, options: ScuOptions, **kw: Any) -> Association:
    delay = options.retry_delay_s
    for attempt in range(options.retries + 1):
        try:
            return _associate_once(ae, peer, **kw)
        except AssociationError as exc:
            if attempt == options.retries:
                raise
            log.warning("%s; retrying in %.1f s (%d/%d)", exc, delay, attempt + 1, options.retries)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


@contextmanager
def association(ae: AE, peer: Peer, options: ScuOptions, **kw: Any) -> Iterator[Association]:
    assoc = associate(ae, peer, options, **kw)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def status_of(rsp: Dataset | None) -> int | None:
    return int(rsp.Status) if rsp is not None and "Status" in rsp else None



__all__ = ["DEFAULT_CALLING_AE", "DEFAULT_OPTIONS", "MAX_CONTEXTS", "PENDING", "ScuOptions", "associate",
           "association", "make_ae", "status_of"]

"""DICOM peers: ``AET@HOST:PORT`` → :class:`Peer` (validated, immutable).

>>> Peer.parse("ORTHANC@pacs.example.org:4242")
Peer(ae_title='ORTHANC', host='pacs.example.org', port=4242)
>>> str(Peer.parse("PACS@[::1]:104"))
'PACS@[::1]:104'
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from lesionlens.errors import ConfigError

#: Longest AE title DICOM allows (PS3.5 AE value representation).
AE_TITLE_MAX = 16
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")


def validate_ae_title(value: str, *, field: str = "AE title") -> str:
    """``value`` without surrounding spaces, or a :class:`ConfigError` naming ``field``.

    An AE title is 1–16 characters of printable ASCII, no backslash (PS3.5 VR ``AE``).
    """
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a string, got {type(value).__name__}")
    title = value.strip(" ")
    if not title:
        raise ConfigError(f"{field} is empty")
    if len(title) > AE_TITLE_MAX:
        raise ConfigError(f"{field} {title!r} is {len(title)} characters, over the {AE_TITLE_MAX}-character limit")
    bad = [c for c in title if c == "\\" or not 32 <= ord(c) < 127]
    if bad:
        raise ConfigError(f"{field} {title!r} contains a forbidden character {bad[0]!r} "
                          "(backslash, control and non-ASCII characters are not allowed)")
    return title


def validate_port(value: object, *, field: str = "port", allow_zero: bool = False) -> int:
    """An int port in 1–65535 (0 too with ``allow_zero``: "any free port")."""
    if isinstance(value, bool):
        raise ConfigError(f"{field} must be an integer, got {value!r}")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ConfigError(f"{field} {value!r} is not a number")
        value = int(value)
    if not isinstance(value, int):
        raise ConfigError(f"{field} must be an integer, got {value!r}")
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ConfigError(f"{field} {value} is out of range ({low}–65535)")
    return value


def validate_host(value: str, *, field: str = "host") -> str:
    """A hostname or an IPv4/IPv6 address (without brackets)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field} is empty")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ConfigError(f"{field} {value!r} is not a valid hostname or IP address")
    return value


@dataclass(frozen=True)
class Peer:
    """A remote DICOM application entity: AE title, host (name or IP) and TCP port."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", validate_ae_title(self.ae_title, field="peer AE title"))
        object.__setattr__(self, "host", validate_host(self.host, field="peer host"))
        object.__setattr__(self, "port", validate_port(self.port, field="peer port"))

    @classmethod
    def parse(cls, text: str) -> Peer:
        """Parse ``AET@HOST:PORT`` (IPv6 hosts in brackets: ``AET@[::1]:104``).

        Raises :class:`ConfigError` naming the part that is wrong.
        """
        if not isinstance(text, str):
            raise ConfigError(f"peer must be a string 'AET@HOST:PORT', got {type(text).__name__}")
        aet, sep, rest = text.rpartition("@")
        if not sep:
            raise ConfigError(f"peer {text!r} is not of the form AET@HOST:PORT (no '@')")
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket or not tail.startswith(":"):
                raise ConfigError(f"peer {text!r}: IPv6 host must be written [ADDR]:PORT")
            port = tail[1:]
        else:
            host, colon, port = rest.rpartition(":")
            if not colon:
                raise ConfigError(f"peer {text!r} has no port (expected AET@HOST:PORT)")
            if ":" in host:
                raise ConfigError(f"peer {text!r}: write IPv6 hosts in brackets, e.g. AET@[::1]:104")
        if not host:
            raise ConfigError(f"peer {text!r} has no host (expected AET@HOST:PORT)")
        return cls(validate_ae_title(aet, field=f"AE title of peer {text!r}"),
                   validate_host(host, field=f"host of peer {text!r}"),
                   validate_port(port, field=f"port of peer {text!r}"))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def parse_peer(text: str | Peer) -> Peer:
    """``text`` as a :class:`Peer` (a Peer is returned unchanged)."""
    return text if isinstance(text, Peer) else Peer.parse(text)


__all__ = ["AE_TITLE_MAX", "Peer", "parse_peer", "validate_ae_title", "validate_host", "validate_port"]

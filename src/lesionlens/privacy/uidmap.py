"""The de-identification key and everything derived from it with keyed HMAC-SHA256.

* UIDs: ``2.25.<int of the first 16 bytes of HMAC(key, "uid" | uid)>`` — same UID and key, same
  new UID (so references between instances keep resolving); another key, other UIDs.
* Pseudonymous patient ID/name from ``HMAC(key, "patient" | PatientID)``.
* One date shift per patient (``HMAC(key, "date-shift" | PatientID)``): 1..3650 days back.

The key never has a default: :func:`resolve_key` takes a key file (at least 32 bytes) or the
``LESIONLENS_DEID_KEY`` environment variable (hex or base64 of at least 32 bytes) and refuses
otherwise. The key is never logged; :class:`DeidKey`'s ``repr`` hides it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from dataclasses import dataclass, field
from datetime import date, timedelta
from hashlib import sha256
from pathlib import Path

from lesionlens.errors import ConfigError

KEY_ENV = "LESIONLENS_DEID_KEY"
MIN_KEY_BYTES = 32
MAX_SHIFT_DAYS = 3650


@dataclass(frozen=True)
class DeidKey:
    """A secret de-identification key (>= 32 bytes). ``source`` says where it came from (no secret)."""

    secret: bytes = field(repr=False)
    source: str = "memory"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ConfigError(f"de-identification key from {self.source} is too short: need >= {MIN_KEY_BYTES} bytes")

    def digest(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA256 of ``purpose \\0 value`` under the key (32 bytes)."""
        return hmac.new(self.secret, f"{purpose}\0{value}".encode(), sha256).digest()

    def map_uid(self, uid: str) -> str:
        """The replacement ``2.25.<decimal>`` UID for ``uid`` (<= 44 characters)."""
        return f"2.25.{int.from_bytes(self.digest('uid', uid.strip().rstrip(chr(0)))[:16], 'big')}"

    def pseudonym(self, patient_id: str) -> str:
        """Pseudonymous Patient ID (``LL`` + 14 hex digits, fits SH/LO)."""
        return "LL" + self.digest("patient", patient_id.strip()).hex()[:14].upper()

    def date_shift(self, patient_id: str) -> timedelta:
        """The one shift (1..3650 days back) applied to every date of this patient."""
        n = int.from_bytes(self.digest("date-shift", patient_id.strip())[:8], "big")
        return timedelta(days=-(1 + n % MAX_SHIFT_DAYS))


def _decode_env(text: str) -> bytes:
    text = text.strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{KEY_ENV} is neither hex nor base64") from None


def resolve_key(key_file: str | Path | None = None, env: dict[str, str] | None = None) -> DeidKey:
    """The key from ``key_file`` if given, else from ``$LESIONLENS_DEID_KEY``; no key → ConfigError."""
    if key_file is not None:
        path = Path(key_file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read key file: {exc.strerror}", path=path) from None
        return DeidKey(data, source=f"key file {path}")
    environ = os.environ if env is None else env
    if environ.get(KEY_ENV):
        return DeidKey(_decode_env(environ[KEY_ENV]), source=f"${KEY_ENV}")
    raise ConfigError(
        f"no de-identification key: pass --key-file K (make one with `lesionlens deid --make-key K`) "
        f"or set {KEY_ENV} (hex/base64, >= {MIN_KEY_BYTES} bytes); there is no default key"
    )


def make_key_file(path: str | Path, nbytes: int = MIN_KEY_BYTES) -> Path:
    """Write ``nbytes`` random bytes to a new file readable only by its owner (never overwrites)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError("key file already exists; refusing to overwrite it", path=path) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(max(nbytes, MIN_KEY_BYTES)))
    return path


def shift_da(value: str, shift: timedelta) -> str:
    """Shift a DA value (``YYYYMMDD``); a value that is not a full date becomes ``19000101``."""
    v = value.strip()
    try:
        return (date(int(v[0:4]), int(v[4:6]), int(v[6:8])) + shift).strftime("%Y%m%d")
    except (ValueError, IndexError):
        return "19000101"


def shift_dt(value: str, shift: timedelta) -> str:
    """Shift the date part of a DT value, keeping time and offset (intervals kept to the day)."""
    v = value.strip()
    if len(v) < 8:
        return "19000101"
    return shift_da(v[:8], shift) + v[8:]


__all__ = ["DeidKey", "KEY_ENV", "MIN_KEY_BYTES", "make_key_file", "resolve_key", "shift_da", "shift_dt"]

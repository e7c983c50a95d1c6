"""Data keys for encryption at rest: where they come from and the ring that holds them.

A data key is 32 random bytes (AES-256). It can come from

* a **key file** (``lesionlens keys create``): 32 raw bytes, or the same as 64 hex digits or
  base64 text;
* an **environment variable**, ``LESIONLENS_DATA_KEY`` by default, holding hex or base64;
* a **KMS hook**: ``"package.module:function"``, a callable taking no argument that returns the
  key bytes, a :class:`DataKey` (to give an explicit key id) or a whole :class:`KeyRing`.

:func:`key_from_spec` resolves one configuration string (``file:PATH``, ``env:VAR``,
``hook:module:function``) so the service can take its keys from settings.

A :class:`KeyRing` has one *active* key (new files are encrypted with it) and older keys that
are only used to decrypt files written before a rotation. Each key has an id: by default the
first 8 hex digits of SHA-256 of the key, which is what the file header records.

Key bytes are never logged, printed or put in an exception message; :class:`DataKey` hides them
from ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from lesionlens.errors import LesionLensError

log = logging.getLogger("lesionlens.privacy.keys")

KEY_BYTES = 32
DEFAULT_ENV_VAR = "LESIONLENS_DATA_KEY"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class CryptoError(LesionLensError):
    """Encryption at rest failed: bad key material, a malformed or tampered file, I/O."""

    code = "crypto"


class KeySourceError(CryptoError):
    """A key could not be loaded from its file, variable or hook (names the source, never the key)."""

    code = "key-source"


class WrongKeyError(CryptoError):
    """The file was encrypted with a key the key ring does not hold (names both key ids)."""

    code = "wrong-key"


def key_id_for(secret: bytes) -> str:
    """The default id of a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(secret).hexdigest()[:8]


class DataKey:
    """One AES-256 key and its id. ``repr`` shows the id only.

    Args:
        secret: the 32 key bytes.
        key_id: an explicit id (1-64 of ``A-Z a-z 0-9 . _ : -``); default :func:`key_id_for`.
    """

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: bytes, key_id: str | None = None):
        if not isinstance(secret, bytes | bytearray) or len(secret) != KEY_BYTES:
            n = len(secret) if isinstance(secret, bytes | bytearray) else type(secret).__name__
            raise KeySourceError(f"a data key must be {KEY_BYTES} bytes (AES-256), got {n}")
        kid = key_id if key_id is not None else key_id_for(bytes(secret))
        if not _KEY_ID_RE.match(kid):
            raise KeySourceError(f"invalid key id {kid!r}: use 1-64 characters of A-Z a-z 0-9 . _ : -")
        self._secret = bytes(secret)
        self.key_id = kid

    @property
    def secret(self) -> bytes:
        """The key bytes (handle with care: never log them)."""
        return self._secret

    @classmethod
    def generate(cls) -> DataKey:
        """A fresh random key from the OS CSPRNG."""
        return cls(secrets.token_bytes(KEY_BYTES))

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataKey) and secrets.compare_digest(self._secret, other._secret) \
            and self.key_id == other.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)


class KeyRing:
    """The active key (encrypts) plus older keys (decrypt only, during and after a rotation)."""

    def __init__(self, active: DataKey, older: Iterable[DataKey] = ()):
        self.active = active
        self._keys: dict[str, DataKey] = {active.key_id: active}
        for key in older:
            known = self._keys.get(key.key_id)
            if known is not None and known != key:
                raise KeySourceError(f"two different keys share the id {key.key_id!r}")
            self._keys.setdefault(key.key_id, key)

    @property
    def ids(self) -> tuple[str, ...]:
        """The ids of every key in the ring, the active one first."""
        return tuple(self._keys)

    def get(self, key_id: str) -> DataKey | None:
        """The key with this id, or None."""
        return self._keys.get(key_id)

    def keys(self) -> tuple[DataKey, ...]:
        """Every key in the ring, the active one first."""
        return tuple(self._keys.values())

    @classmethod
    def from_specs(cls, active: str, older: Iterable[str] = ()) -> KeyRing:
        """Build a ring from configuration strings (see :func:`resolve_spec`)."""
        first = _keys_of(resolve_spec(active))
        rest = [k for spec in older for k in _keys_of(resolve_spec(spec))]
        return cls(first[0], first[1:] + rest)

    def __repr__(self) -> str:
        return f"KeyRing(active={self.active.key_id!r}, ids={list(self.ids)!r})"


def _keys_of(got: DataKey | KeyRing) -> list[DataKey]:
    return [got] if isinstance(got, DataKey) else list(got.keys())


def as_ring(keys: KeyRing | DataKey) -> KeyRing:
    """Accept a single key where a ring is expected."""
    return keys if isinstance(keys, KeyRing) else KeyRing(keys)


# -- decoding and sources -----------------------------------------------------------------------

def decode_key_text(text: str | bytes, *, source: str) -> bytes:
    """Decode a key written as 64 hex digits or base64 (standard or URL-safe) to 32 bytes."""
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    raw = "".join(raw.split())
    if re.fullmatch(r"[0-9a-fA-F]{64}", raw):
        return bytes.fromhex(raw)
    try:
        padded = raw + "=" * (-len(raw) % 4)
        decoded = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    raise KeySourceError(f"{source}: not a {KEY_BYTES}-byte key (expected 64 hex digits or base64 "
                         f"of {KEY_BYTES} bytes, got {len(raw)} characters)")


def load_key_material(path: str | Path) -> bytes:
    """The key bytes of a key file: 32 raw bytes, or hex / base64 text. Warns on loose permissions."""
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as exc:
        raise KeySourceError(f"cannot read key file: {exc.strerror or exc}", path=p) from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s is accessible by group/others (mode %o); use chmod 600",
                    p, stat.S_IMODE(st.st_mode))
    if len(data) == KEY_BYTES:
        return data
    return decode_key_text(data, source=f"key file {p}")


def key_from_file(path: str | Path, key_id: str | None = None) -> DataKey:
    """A :class:`DataKey` read from a key file."""
    return DataKey(load_key_material(path), key_id)


def key_from_env(var: str = DEFAULT_ENV_VAR, key_id: str | None = None) -> DataKey:
    """A :class:`DataKey` from an environment variable holding hex or base64."""
    value = os.environ.get(var)
    if not value:
        raise KeySourceError(f"environment variable {var} is not set (expected a hex or base64 key)")
    return DataKey(decode_key_text(value, source=f"environment variable {var}"), key_id)


KeyHook = Callable[[], "bytes | DataKey | KeyRing"]
"""A KMS hook: called with no argument, returns the key bytes, a DataKey or a KeyRing."""


def key_from_hook(entry_point: str) -> DataKey | KeyRing:
    """Call a KMS hook named ``"package.module:function"`` and return what it gives."""
    module_name, sep, attr = entry_point.partition(":")
    if not sep or not module_name or not attr:
        raise KeySourceError(f"KMS hook {entry_point!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise KeySourceError(f"KMS hook {entry_point!r}: cannot import: {exc}") from exc
    try:
        got = fn()
    except LesionLensError:
        raise
    except Exception as exc:  # a hospital's hook may raise anything; report it, not the key
        raise KeySourceError(f"KMS hook {entry_point!r} failed: {type(exc).__name__}") from exc
    if isinstance(got, DataKey | KeyRing):
        return got
    if isinstance(got, bytes | bytearray):
        return DataKey(bytes(got))
    raise KeySourceError(f"KMS hook {entry_point!r} returned {type(got).__name__}; "
                         "expected bytes, DataKey or KeyRing")


def resolve_spec(spec: str) -> DataKey | KeyRing:
    """Resolve ``file:PATH``, ``env:VAR`` (or bare ``env``) or ``hook:module:function``."""
    kind, sep, rest = spec.partition(":")
    if kind == "file" and sep and rest:
        return key_from_file(rest)
    if kind == "env":
        return key_from_env(rest or DEFAULT_ENV_VAR)
    if kind == "hook" and sep and rest:
        return key_from_hook(rest)
    # never echo the spec: a key pasted where a spec belongs would end up in logs
    raise KeySourceError("unknown key source: expected file:PATH, env:VAR or hook:module:function "
                         "(the text given is not repeated here in case it is a key)")


def key_from_spec(spec: str) -> DataKey:
    """Like :func:`resolve_spec` but always one key (a ring's active key)."""
    got = resolve_spec(spec)
    return got.active if isinstance(got, KeyRing) else got


def create_key_file(path: str | Path) -> DataKey:
    """Write 32 random bytes to a new file of mode 0600; refuses to overwrite an existing file."""
    p = Path(path)
    key = DataKey.generate()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeySourceError("key file exists; refusing to overwrite it", path=p) from None
    except OSError as exc:
        raise KeySourceError(f"cannot create key file: {exc.strerror or exc}", path=p) from exc
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it further; never widened
        os.write(fd, key.secret)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        p.unlink(missing_ok=True)
        raise KeySourceError(f"cannot write key file: {exc.strerror or exc}", path=p) from exc
    os.close(fd)
    return key


__all__ = [
    "KEY_BYTES", "DEFAULT_ENV_VAR", "CryptoError", "KeySourceError", "WrongKeyError", "DataKey",
    "KeyRing", "KeyHook", "as_ring", "key_id_for", "decode_key_text", "load_key_material",
    "key_from_file", "key_from_env", "key_from_hook", "resolve_spec", "key_from_spec",
    "create_key_file",
]

"""Ed25519 signatures over model manifests.

What is signed is the manifest's canonical JSON: keys sorted, no whitespace (``,`` and ``:``
separators), UTF-8, non-ASCII characters kept as they are (:func:`canonical_json`). Keys are
PEM files: the private key PKCS#8 (written 0600, optionally encrypted with a passphrase), the
public key SubjectPublicKeyInfo. A signature is the 64-byte Ed25519 signature, base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lesionlens.errors import ConfigError, LesionLensError


class SignatureError(LesionLensError):
    """A signature is missing, malformed, or does not verify with any trusted key."""

    code = "signature"


def canonical_json(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def generate_keypair(private_path: str | Path, public_path: str | Path, *,
                     passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair; the private key file is created 0600 (never overwritten)."""
    priv, pub = Path(private_path), Path(public_path)
    key = Ed25519PrivateKey.generate()
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    priv.parent.mkdir(parents=True, exist_ok=True)
    pub.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError("private key file already exists; not overwriting it", path=priv) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(priv, 0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def load_private_key(path: str | Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=passphrase)
    except OSError as exc:
        raise ConfigError(f"cannot read the private key: {exc.strerror or exc}", path=p) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a usable PEM private key: {exc}", path=p) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("the private key is not an Ed25519 key", path=p)
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the public key: {exc.strerror or exc}", path=p) from None
    except ValueError as exc:
        raise ConfigError(f"not a PEM public key: {exc}", path=p) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("the public key is not an Ed25519 key", path=p)
    return key


def key_fingerprint(key: Ed25519PublicKey | str | Path) -> str:
    """First 16 hex digits of SHA-256 over the raw public key (to name keys in messages)."""
    k = key if isinstance(key, Ed25519PublicKey) else load_public_key(key)
    raw = k.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest: dict[str, Any], private_key_path: str | Path, *,
                  passphrase: bytes | None = None) -> str:
    """Base64 Ed25519 signature of ``canonical_json(manifest)``."""
    key = load_private_key(private_key_path, passphrase)
    return base64.b64encode(key.sign(canonical_json(manifest))).decode("ascii")


def verify_manifest(manifest: dict[str, Any], signature: str | bytes,
                    public_key_paths: Iterable[str | Path]) -> Path:
    """The trusted public key (path) under which ``signature`` verifies ``manifest``.

    Raises :class:`SignatureError` (code ``bad-signature`` for malformed, ``untrusted-signature``
    when no trusted key verifies it: signed by another key, or the manifest was altered).
    """
    try:
        raw = base64.b64decode(signature.strip() if isinstance(signature, (str, bytes)) else b"", validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not valid base64", code="bad-signature") from None
    if len(raw) != 64:
        raise SignatureError(f"an Ed25519 signature has 64 bytes, this one {len(raw)}", code="bad-signature")
    keys = [Path(p) for p in public_key_paths]
    if not keys:
        raise SignatureError("no trusted public keys are configured; nothing can be verified",
                             code="untrusted-signature")
    data = canonical_json(manifest)
    for p in keys:
        try:
            load_public_key(p).verify(raw, data)
            return p
        except InvalidSignature:
            continue
    names = ", ".join(f"{p.name} ({key_fingerprint(p)})" for p in keys)
    raise SignatureError(f"the signature does not verify with any trusted key ({names}): it was made "
                         "with an untrusted key or the manifest was altered", code="untrusted-signature")


__all__ = [
    "SignatureError",
    "canonical_json",
    "generate_keypair",
    "key_fingerprint",
    "load_private_key",
    "load_public_key",
    "sign_manifest",
    "verify_manifest",
]

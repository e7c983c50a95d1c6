"""Encryption at rest inside the service: what is stored under the data folder (received
instances, job outputs) is AES-GCM encrypted when a data key is configured (``data_key``).

Helpers here are the only place the service decrypts: :func:`read_result` for what the API
serves, and the worker / outbox paths for what the pipeline reads and the PACS receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_result(keyring: Any, path: str | Path) -> bytes:
    """The plaintext bytes of a stored file (as is when no key ring is configured, or when the
    file predates encryption)."""
    if keyring is None:
        return Path(path).read_bytes()
    from lesionlens.privacy.crypto import open_decrypted

    return open_decrypted(path, keyring, allow_plaintext=True)


__all__ = ["read_result"]

"""Encryption at rest: AES-256-GCM in authenticated, streamed chunks (format ``LLENC1``).

File layout (all integers big-endian)::

    header   magic      6   b"LLENC1"
             flags      1   bit 0: a logical name is bound as associated data (not stored)
             id_len     1   length of the key id
             key_id     n   ASCII key id (see keys.key_id_for)
             chunk      4   plaintext bytes per chunk (default 1 MiB)
             nonce     12   random base nonce, fresh for every file
             key_check 32   HMAC-SHA256(key, b"lesionlens/LLENC1/key-check")
    chunks   AES-GCM(ciphertext || 16-byte tag), one per ``chunk`` plaintext bytes

Chunk ``i`` is sealed with nonce ``base_nonce XOR i`` and associated data
``header || u64(i) || u8(final) [|| name]``. So the whole header is authenticated with every chunk;
swapping or reordering chunks breaks the nonce and the index; dropping the tail leaves a last
chunk not sealed as *final*; appending data makes the sealed-final chunk non-final. Every file
has at least one chunk (an empty file is one final chunk holding only a tag). Decryption to a file
writes a temporary file and renames it only when every chunk, the final one included, has
authenticated: no unauthenticated plaintext ever appears under the destination name.

The key check value commits the file to one key: a ring holding a *different* key under the same
id is reported as a wrong key (:class:`WrongKeyError`), not as tampering, and the file cannot be
made to decrypt validly under two keys (AES-GCM alone is not key-committing).

Binding a *name* (e.g. the path relative to the data folder) stops an insider from swapping two
encrypted files: decryption must be given the same name. The service binds the POSIX path
relative to its data folder, which is what :func:`rotate_dir` assumes by default.

Writes are atomic: a temporary file in the destination folder, ``fsync``, ``os.replace``, then an
``fsync`` of the folder. Output files are created with mode 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lesionlens.privacy.keys import CryptoError, DataKey, KeyRing, WrongKeyError, as_ring

MAGIC = b"LLENC1"
TAG_BYTES = 16
NONCE_BYTES = 12
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 64 << 20
TMP_PREFIX = ".llenc-tmp-"
_FLAG_BOUND = 0x01
_KEY_CHECK_LABEL = b"lesionlens/LLENC1/key-check"


class NotEncryptedError(CryptoError):
    """The file does not start with an ``LLENC1`` header."""

    code = "not-encrypted"


class TamperedError(CryptoError):
    """Authentication failed: the file was modified, truncated or extended."""

    code = "tampered"


@dataclass(frozen=True)
class FileHeader:
    """The parsed header of an encrypted file; ``raw`` is the exact bytes (the AAD prefix)."""

    key_id: str
    chunk_size: int
    nonce: bytes
    key_check: bytes
    bound: bool
    raw: bytes = field(repr=False)


def key_check_value(key: DataKey) -> bytes:
    """The 32-byte value that commits a file to ``key`` (reveals nothing about the key)."""
    return hmac.new(key.secret, _KEY_CHECK_LABEL, hashlib.sha256).digest()


def _make_header(key: DataKey, chunk_size: int, bound: bool) -> FileHeader:
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise CryptoError(f"chunk size {chunk_size} out of range 1..{MAX_CHUNK}")
    kid = key.key_id.encode("ascii")
    nonce = os.urandom(NONCE_BYTES)
    kcv = key_check_value(key)
    raw = MAGIC + bytes([_FLAG_BOUND if bound else 0, len(kid)]) + kid \
        + struct.pack(">I", chunk_size) + nonce + kcv
    return FileHeader(key.key_id, chunk_size, nonce, kcv, bound, raw)


def _parse_header(fh: BinaryIO, where: str) -> FileHeader:
    head = _read_full(fh, len(MAGIC) + 2)
    if head[: len(MAGIC)] != MAGIC:
        raise NotEncryptedError("not a LesionLens encrypted file (no LLENC1 header)", path=where)
    if len(head) < len(MAGIC) + 2:
        raise TamperedError("authentication failed: the file was truncated (in the header)", path=where)
    flags, id_len = head[len(MAGIC)], head[len(MAGIC) + 1]
    rest = _read_full(fh, id_len + 4 + NONCE_BYTES + 32)
    if len(rest) < id_len + 4 + NONCE_BYTES + 32 or flags & ~_FLAG_BOUND or id_len == 0:
        raise TamperedError("authentication failed: the file was modified or truncated "
                            "(malformed header)", path=where)
    try:
        kid = rest[:id_len].decode("ascii")
    except UnicodeDecodeError:
        raise TamperedError("authentication failed: the file was modified (bad key id in header)",
                            path=where) from None
    (chunk,) = struct.unpack(">I", rest[id_len: id_len + 4])
    if not 1 <= chunk <= MAX_CHUNK:
        raise TamperedError(f"authentication failed: the file was modified (chunk size {chunk} "
                            "in header)", path=where)
    nonce = rest[id_len + 4: id_len + 4 + NONCE_BYTES]
    kcv = rest[id_len + 4 + NONCE_BYTES:]
    return FileHeader(kid, chunk, nonce, kcv, bool(flags & _FLAG_BOUND), head + rest)


def _read_full(fh: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes, fewer only at end of file."""
    parts: list[bytes] = []
    while n > 0:
        got = fh.read(n)
        if not got:
            break
        parts.append(got)
        n -= len(got)
    return b"".join(parts)


def _nonce(base: bytes, index: int) -> bytes:
    return (int.from_bytes(base, "big") ^ index).to_bytes(NONCE_BYTES, "big")


def _aad(header: FileHeader, index: int, final: bool, name: bytes) -> bytes:
    return header.raw + struct.pack(">QB", index, 1 if final else 0) + name


def _name_bytes(name: str | None) -> bytes:
    return b"" if name is None else b"\x00name:" + name.encode("utf-8")


def _key_for(header: FileHeader, ring: KeyRing, where: str) -> DataKey:
    key = ring.get(header.key_id)
    if key is None:
        raise WrongKeyError(f"encrypted with key id {header.key_id}; the key ring has "
                            f"{', '.join(ring.ids)}", path=where)
    if not hmac.compare_digest(key_check_value(key), header.key_check):
        raise WrongKeyError(f"the key with id {header.key_id} in the key ring is not the key this "
                            "file was encrypted with (key check failed; or the header was modified)",
                            path=where)
    return key


def _encrypt_stream(read: Callable[[int], bytes], key: DataKey, name: str | None,
                    chunk_size: int) -> Iterator[bytes]:
    """Yield the header, then one sealed chunk per ``chunk_size`` bytes that ``read`` gives."""
    header = _make_header(key, chunk_size, name is not None)
    aead, nb = AESGCM(key.secret), _name_bytes(name)
    yield header.raw
    cur, index = read(chunk_size), 0
    while True:
        nxt = read(chunk_size) if len(cur) == chunk_size else b""
        final = not nxt
        yield aead.encrypt(_nonce(header.nonce, index), cur, _aad(header, index, final, nb))
        if final:
            return
        cur, index = nxt, index + 1


def _decrypt_stream(fh: BinaryIO, ring: KeyRing, name: str | None, where: str) -> Iterator[bytes]:
    """Yield authenticated plaintext chunks; raises at the first chunk that does not authenticate.

    Each yielded chunk is authentic, but the stream is only complete once the generator ends
    without error (a truncated file fails at its last remaining chunk).
    """
    header = _parse_header(fh, where)
    if header.bound and name is None:
        raise CryptoError("the file is bound to its logical name; pass the name it was encrypted "
                          "with", path=where)
    if name is not None and not header.bound:
        raise CryptoError(f"a name ({name!r}) was given but the file is not bound to a name",
                          path=where)
    key = _key_for(header, ring, where)
    aead, nb = AESGCM(key.secret), _name_bytes(name)
    size = header.chunk_size + TAG_BYTES
    cur, index = _read_full(fh, size), 0
    while True:
        nxt = _read_full(fh, size) if len(cur) == size else b""
        final = not nxt
        try:
            yield aead.decrypt(_nonce(header.nonce, index), cur, _aad(header, index, final, nb))
        except InvalidTag:
            raise TamperedError(f"authentication failed: the file was modified or truncated "
                                f"(chunk {index})", path=where) from None
        if final:
            return
        cur, index = nxt, index + 1


class _ChunkReader:
    """``read(n)`` over an iterator of byte strings (re-chunks a decrypted stream)."""

    def __init__(self, parts: Iterable[bytes]):
        self._it = iter(parts)
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            part = next(self._it, None)
            if part is None:
                break
            self._buf += part
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic_output(dst: Path) -> Iterator[BinaryIO]:
    """A temp file next to ``dst`` (mode 0600) that replaces ``dst`` only if the block succeeds."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=dst.parent)
    except OSError as exc:
        raise CryptoError(f"cannot write: {exc.strerror or exc}", path=dst) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CryptoError(f"cannot write: {exc.strerror or exc}", path=dst) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise CryptoError(f"cannot read: {exc.strerror or exc}", path=path) from exc


# -- public API --------------------------------------------------------------------------------

def encrypt_bytes(data: bytes, keys: KeyRing | DataKey, *, name: str | None = None,
                  chunk_size: int = DEFAULT_CHUNK) -> bytes:
    """Encrypt ``data`` with the ring's active key; ``name`` (optional) is bound as AAD."""
    ring = as_ring(keys)
    return b"".join(_encrypt_stream(io.BytesIO(data).read, ring.active, name, chunk_size))


def decrypt_bytes(blob: bytes, keys: KeyRing | DataKey, *, name: str | None = None,
                  where: str = "<bytes>") -> bytes:
    """Decrypt an ``LLENC1`` blob; ``where`` names it in errors (e.g. its path)."""
    return b"".join(_decrypt_stream(io.BytesIO(blob), as_ring(keys), name, where))


def encrypt_file(src: str | Path, dst: str | Path, keys: KeyRing | DataKey, *,
                 name: str | None = None, chunk_size: int = DEFAULT_CHUNK) -> Path:
    """Encrypt ``src`` into ``dst`` atomically (``dst`` may equal ``src``: encrypt in place)."""
    src, dst = Path(src), Path(dst)
    ring = as_ring(keys)
    with _open(src) as fin, _atomic_output(dst) as fout:
        for part in _encrypt_stream(fin.read, ring.active, name, chunk_size):
            fout.write(part)
    return dst


def decrypt_file(src: str | Path, dst: str | Path, keys: KeyRing | DataKey, *,
                 name: str | None = None) -> Path:
    """Decrypt ``src`` into ``dst``; ``dst`` appears only once every chunk has authenticated."""
    src, dst = Path(src), Path(dst)
    with _open(src) as fin, _atomic_output(dst) as fout:
        for part in _decrypt_stream(fin, as_ring(keys), name, str(src)):
            fout.write(part)
    return dst


def iter_decrypted(path: str | Path, keys: KeyRing | DataKey, *,
                   name: str | None = None) -> Iterator[bytes]:
    """Stream the plaintext of ``path`` chunk by chunk (e.g. for an HTTP response).

    Every chunk yielded is authentic; a truncated or altered file raises :class:`TamperedError`
    when the stream reaches the damage, so a consumer must treat the output as valid only after
    the iterator finished without error.
    """
    p = Path(path)
    with _open(p) as fh:
        yield from _decrypt_stream(fh, as_ring(keys), name, str(p))


def open_decrypted(path: str | Path, keys: KeyRing | DataKey, *, name: str | None = None,
                   allow_plaintext: bool = False) -> bytes:
    """The plaintext of an encrypted file, in memory.

    ``allow_plaintext=True`` returns a file without an ``LLENC1`` header as it is (for a store
    being migrated to encryption); by default such a file raises :class:`NotEncryptedError`.
    """
    p = Path(path)
    with _open(p) as fh:
        if allow_plaintext and fh.read(len(MAGIC)) != MAGIC:
            fh.seek(0)
            return fh.read()
        fh.seek(0)
        return b"".join(_decrypt_stream(fh, as_ring(keys), name, str(p)))


def is_encrypted(path: str | Path) -> bool:
    """True when ``path`` starts with the ``LLENC1`` magic (False if it cannot be read)."""
    try:
        with Path(path).open("rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_header(path: str | Path) -> FileHeader:
    """The header of an encrypted file (key id, chunk size, whether a name is bound)."""
    p = Path(path)
    with _open(p) as fh:
        return _parse_header(fh, str(p))


def reencrypt_file(path: str | Path, keys: KeyRing, *, name: str | None = None,
                   chunk_size: int = DEFAULT_CHUNK) -> bool:
    """Re-encrypt ``path`` in place under the ring's active key, atomically.

    Returns False (and leaves the file alone) when it is already under the active key.
    """
    p = Path(path)
    header = read_header(p)
    if header.key_id == keys.active.key_id and \
            hmac.compare_digest(header.key_check, key_check_value(keys.active)):
        return False
    with _open(p) as fin, _atomic_output(p) as fout:
        reader = _ChunkReader(_decrypt_stream(fin, keys, name, str(p)))
        for part in _encrypt_stream(reader.read, keys.active, name, chunk_size):
            fout.write(part)
    return True


@dataclass
class RotationReport:
    """What :func:`rotate_dir` did: counts and the files it could not re-encrypt (with reasons)."""

    rotated: int = 0
    skipped: int = 0
    not_encrypted: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


def relative_name(root: Path) -> Callable[[Path], str]:
    """The default name binding: the file's POSIX path relative to ``root``."""
    return lambda p: p.relative_to(root).as_posix()


def rotate_dir(data_dir: str | Path, keys: KeyRing, *,
               name_for: Callable[[Path], str] | None = None,
               on_file: Callable[[Path, str], None] | None = None) -> RotationReport:
    """Re-encrypt every encrypted file under ``data_dir`` to ``keys.active``.

    ``keys`` must hold the new key (active) and the old one(s). Each file is replaced atomically,
    so an interrupted rotation is resumed by running it again: files already under the new key are
    skipped. A file that cannot be decrypted is recorded in ``failed`` and the rotation goes on.
    Files bound to a name are re-bound to ``name_for(path)`` (default: path relative to
    ``data_dir``). ``on_file(path, outcome)`` is called after each file (``rotated``, ``skipped``,
    ``plain`` or ``failed``).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CryptoError("not a folder", path=root)
    namer = name_for or relative_name(root)
    report = RotationReport()
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.name.startswith(TMP_PREFIX):
            continue
        if not is_encrypted(path):
            report.not_encrypted += 1
            outcome = "plain"
        else:
            try:
                bound = read_header(path).bound
                done = reencrypt_file(path, keys, name=namer(path) if bound else None)
            except CryptoError as exc:
                report.failed.append((path, exc.reason))
                outcome = "failed"
            else:
                outcome = "rotated" if done else "skipped"
                if done:
                    report.rotated += 1
                else:
                    report.skipped += 1
        if on_file is not None:
            on_file(path, outcome)
    return report


__all__ = [
    "MAGIC", "DEFAULT_CHUNK", "CryptoError", "WrongKeyError", "NotEncryptedError", "TamperedError",
    "FileHeader", "RotationReport", "encrypt_bytes", "decrypt_bytes", "encrypt_file",
    "decrypt_file", "iter_decrypted", "open_decrypted", "is_encrypted", "read_header",
    "reencrypt_file", "rotate_dir", "relative_name", "key_check_value",
]

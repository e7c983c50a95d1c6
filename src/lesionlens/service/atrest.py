"""Encryption at rest inside the service: what is stored under the data folder (received
instances, job outputs) is AES-GCM encrypted when a data key is configured (``data_key``).

Helpers here are the only place the service decrypts: :func:`read_result` for what the API
serves, :func:`decrypt_inputs` for what the pipeline reads (worker) and :func:`decrypting_sender`
for what the PACS receives (outbox delivery). Plaintext exists only transiently, in private
(mode 0700) working folders in RAM (:func:`ram_workdir`), removed as soon as the work is done.

Files are encrypted without a name binding (``LLENC1`` with no name as associated data), so they
decrypt wherever they are moved to and ``lesionlens keys rotate --data-dir`` re-encrypts them as is.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Where transient plaintext working copies go first: a tmpfs, so plaintext never reaches a disk.
RAM_DIR = Path("/dev/shm")


def read_result(keyring: Any, path: str | Path) -> bytes:
    """The plaintext bytes of a stored file (as is when no key ring is configured, or when the
    file predates encryption)."""
    if keyring is None:
        return Path(path).read_bytes()
    from lesionlens.privacy.crypto import open_decrypted

    return open_decrypted(path, keyring, allow_plaintext=True)


def _ram_base() -> Path | None:
    try:
        if RAM_DIR.is_dir() and os.access(RAM_DIR, os.W_OK | os.X_OK):
            return RAM_DIR
    except OSError:
        pass
    return None


@contextmanager
def ram_workdir(prefix: str, fallback_root: str | Path) -> Iterator[Path]:
    """A new private folder (mode 0700) ``/dev/shm/<prefix><random>`` — or, where /dev/shm is
    missing or not writable, under ``fallback_root`` — deleted with everything in it on exit."""
    base = _ram_base()
    if base is None:
        base = Path(fallback_root)
        base.mkdir(parents=True, exist_ok=True)
    # the owner's pid in the name lets a restarted service remove what a killed one left behind
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}p{os.getpid()}-", dir=base))  # mkdtemp: mode 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_OWNER = re.compile(r"^lesionlens-.*-p(\d+)-[A-Za-z0-9_]+$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_ram_workdirs(*fallback_roots: str | Path) -> list[Path]:
    """Remove working folders (:func:`ram_workdir`, ``lesionlens-…-p<pid>-…``) whose owning
    process no longer runs — what a worker killed with SIGKILL or a power cut left in RAM (or
    under a fallback root). Folders of live processes, and of other users, are left alone.
    → the folders removed."""
    removed: list[Path] = []
    bases = [b for b in (_ram_base(), *(Path(r) for r in fallback_roots)) if b is not None]
    uid = os.getuid()
    for base in bases:
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for entry in entries:
            m = _OWNER.match(entry.name)
            if m is None or pid_alive(int(m.group(1))):
                continue
            try:
                if entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != uid:
                    continue
            except OSError:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


def decrypt_to(src: Path, dst: Path, keyring: Any) -> Path:
    """Plaintext of ``src`` written to ``dst`` (copied as is when ``src`` is not encrypted)."""
    from lesionlens.privacy.crypto import decrypt_file, is_encrypted

    dst.parent.mkdir(parents=True, exist_ok=True)
    if is_encrypted(src):
        return decrypt_file(src, dst, keyring)
    shutil.copyfile(src, dst)
    return dst


def decrypt_inputs(inputs: list[Path] | Path, keyring: Any, work: Path) -> list[Path] | Path:
    """The job inputs decrypted into ``work``: a list of files → the list of their plaintext
    copies (``work/<index>-<name>``, same order); a folder → ``work`` with the same tree (hidden
    files, e.g. interrupted writes, are skipped)."""
    if isinstance(inputs, list):
        return [decrypt_to(p, work / f"{i:06d}-{p.name}", keyring) for i, p in enumerate(inputs)]
    for p in sorted(inputs.rglob("*")):
        rel = p.relative_to(inputs)
        if p.is_symlink() or not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        decrypt_to(p, work / rel, keyring)
    return work


def encrypt_tree(folder: Path, keyring: Any, *, dst: Path | None = None, keep: Sequence[str] = ()) -> int:
    """Encrypt every file under ``folder`` except those named in ``keep`` (top level) → how many.

    ``dst`` None: in place (files already encrypted are left as they are); else each file goes,
    encrypted, to the same relative path under ``dst`` (``keep`` files are copied as they are).
    """
    from lesionlens.privacy.crypto import encrypt_file, is_encrypted

    n = 0
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or not p.is_file():
            continue
        out = p if dst is None else dst / p.relative_to(folder)
        if (p.parent == folder and p.name in keep) or (dst is None and is_encrypted(p)):
            if out != p:
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, out)
            continue
        encrypt_file(p, out, keyring)
        n += 1
    return n


Sender = Callable[[str, list[Path]], Any]


def decrypting_sender(send: Sender, keyring: Any, *, fallback_root: str | Path) -> Sender:
    """Wrap an outbox sender: each batch is decrypted into a RAM working folder, sent from there,
    the outcome mapped back to the stored (encrypted) paths, and the folder removed. A file that
    cannot be decrypted counts as not delivered; the rest of the batch is still sent."""

    def wrapped(destination: str, files: list[Path]) -> dict[Path, bool]:
        from lesionlens.errors import LesionLensError

        result: dict[Path, bool] = {Path(f): False for f in files}
        with ram_workdir("lesionlens-send-", fallback_root) as work:
            plain: dict[Path, Path] = {}
            for i, f in enumerate(files):
                try:
                    plain[decrypt_to(Path(f), work / f"{i:05d}-{Path(f).name}", keyring)] = Path(f)
                except LesionLensError:
                    continue  # stays False: retried (and reported) by the outbox
            if plain:
                sent = dict(send(destination, list(plain)))
                for tmp, orig in plain.items():
                    result[orig] = sent.get(tmp) is True
        return result

    return wrapped


__all__ = ["RAM_DIR", "decrypt_inputs", "decrypt_to", "decrypting_sender", "encrypt_tree",
           "ram_workdir", "read_result"]

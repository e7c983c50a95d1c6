"""The model registry: signed, verified, versioned model packages and which one is active.

Layout under ``root``::

    models/<name>/<version>/   the package files + manifest.json + manifest.sig (immutable)
    active/<name>.json         {"name", "version", "activated_at", "history": [...]} (atomic)

A manifest (:func:`build_manifest`) names the model and lists the SHA-256 and size of every
file of the package, with the model's creation time, metrics and training-data fingerprint
(from ``meta.json``). It is signed with Ed25519 (:mod:`lesionlens.service.signing`) by whoever
releases the model (:func:`sign_package`); the registry trusts only the public keys it is given.
:meth:`ModelRegistry.verify` checks the signature and every file: unsigned, altered or
untrusted packages raise :class:`ModelVerificationError` naming the file or the reason.
Nothing is activated (or loaded by :class:`ActiveModel`) without passing it.

:class:`ActiveModel` is the hot-swap holder for a serving process: requests take a
:class:`ModelHandle` with ``use()`` and keep their model object until they are done, while a new
version is loaded beside it and swapped in under a lock.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from lesionlens.engine.checkpoint import META, WEIGHTS, package_sha256, read_meta, sha256_file
from lesionlens.errors import ConfigError, DataFormatError, ModelError
from lesionlens.jsonio import read_json, write_json
from lesionlens.service.signing import SignatureError, sign_manifest, verify_manifest

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MANIFEST_FORMAT = "lesionlens-model-manifest/1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_HISTORY = 50


class ModelVerificationError(ModelError):
    """A registered model fails verification. ``code``: unsigned, bad-signature,
    untrusted-signature, bad-manifest, tampered, missing-file or unexpected-file."""

    code = "model-verification"


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"model {kind} must be letters, digits and . _ + - (not starting with one of "
                          f"these), at most 128 characters; got {value!r}")
    return value


def _package_files(package: Path) -> list[Path]:
    files = []
    for p in sorted(package.rglob("*")):
        if p.is_symlink():
            raise ModelVerificationError("symbolic links are not allowed in a model package", path=p,
                                         code="unexpected-file")
        if p.is_file() and p.relative_to(package).as_posix() not in (MANIFEST, SIGNATURE):
            files.append(p)
    return files


def build_manifest(package_dir: str | Path, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """The manifest of a package folder (deterministic: same files, same manifest)."""
    pkg = Path(package_dir)
    if not pkg.is_dir():
        raise ModelError("model package folder not found", path=pkg)
    meta = read_meta(pkg) if (pkg / META).is_file() else None
    name = name or (meta.name if meta else None)
    version = version or (meta.version if meta else None)
    if not name or not version:
        raise ConfigError("the package has no meta.json; give the model name and version", path=pkg)
    files = {p.relative_to(pkg).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in _package_files(pkg)}
    if not files:
        raise ModelError("the model package is empty", path=pkg)
    return {
        "format": MANIFEST_FORMAT,
        "name": _check_name("name", name),
        "version": _check_name("version", version),
        "created": meta.created if meta else "",
        "files": files,
        "metrics": meta.metrics if meta else {},
        "data_fingerprint": meta.data_fingerprint if meta else "",
    }


def sign_package(package_dir: str | Path, private_key_path: str | Path, *, name: str | None = None,
                 version: str | None = None, passphrase: bytes | None = None) -> tuple[dict[str, Any], str]:
    """Release side: build the manifest, sign it, write manifest.json + manifest.sig into the package."""
    pkg = Path(package_dir)
    manifest = build_manifest(pkg, name, version)
    signature = sign_manifest(manifest, private_key_path, passphrase=passphrase)
    write_json(manifest, pkg / MANIFEST)
    (pkg / SIGNATURE).write_text(signature + "\n")
    return manifest, signature


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version (``path`` is its folder in the registry)."""

    name: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def created(self) -> str:
        return str(self.manifest.get("created", ""))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics", {}))

    @property
    def sha256(self) -> str:
        """The model's SHA-256 over its prediction files' hashes in the manifest
        (:func:`~lesionlens.engine.checkpoint.package_sha256`; the ``sha256`` of the model identity
        in every output)."""
        files = self.manifest.get("files", {})
        if not isinstance(files, dict) or WEIGHTS not in files:
            return ""
        return package_sha256({n: str(e.get("sha256", "")) for n, e in files.items() if isinstance(e, dict)})

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def _check_files(folder: Path, manifest: dict[str, Any]) -> None:
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise ModelVerificationError("manifest.json lists no files", path=folder / MANIFEST, code="bad-manifest")
    present = {p.relative_to(folder).as_posix() for p in _package_files(folder)}
    for rel, entry in sorted(listed.items()):
        p = folder / rel
        if rel not in present:
            raise ModelVerificationError(f"{rel}: file listed in the manifest is missing", path=p,
                                         code="missing-file")
        if not isinstance(entry, dict) or sha256_file(p) != entry.get("sha256"):
            raise ModelVerificationError(f"{rel}: SHA-256 differs from the signed manifest (file altered)", path=p,
                                         code="tampered")
    extra = sorted(present - set(listed))
    if extra:
        raise ModelVerificationError(f"{extra[0]}: file not listed in the signed manifest", path=folder / extra[0],
                                     code="unexpected-file")


def _verify_signature(manifest: dict[str, Any], signature: str, keys: list[Path], where: Path) -> Path:
    try:
        return verify_manifest(manifest, signature, keys)
    except SignatureError as exc:
        raise ModelVerificationError(exc.reason, path=where / SIGNATURE, code=exc.code) from None


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = read_json(folder / MANIFEST)
    except DataFormatError as exc:
        raise ModelVerificationError(exc.reason, path=folder / MANIFEST, code="bad-manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelVerificationError(f"not a {MANIFEST_FORMAT} manifest", path=folder / MANIFEST, code="bad-manifest")
    return manifest


def _read_signature(folder: Path) -> str:
    p = folder / SIGNATURE
    if not p.is_file():
        raise ModelVerificationError("the model is not signed (manifest.sig missing)", path=p, code="unsigned")
    return p.read_text().strip()


class ModelRegistry:
    """``ModelRegistry(data_dir / "registry", trusted_keys=[release_public_key_pem])``."""

    def __init__(self, root: str | Path, trusted_keys: Iterable[str | Path] = ()):
        self.root = Path(root)
        self.trusted_keys = [Path(k) for k in trusted_keys]
        for k in self.trusted_keys:
            if not k.is_file():
                raise ConfigError("trusted public key file not found", path=k)

    def _folder(self, name: str, version: str) -> Path:
        return self.root / "models" / _check_name("name", name) / _check_name("version", version)

    def _pointer(self, name: str) -> Path:
        return self.root / "active" / f"{_check_name('name', name)}.json"

    # ------------------------------------------------------------------ adding
    def add(self, package_dir: str | Path, signature: str | Path | None = None, *, name: str | None = None,
            version: str | None = None, activate: bool = False) -> ModelVersion:
        """Verify and copy a package into the registry → its version.

        signature: a ``Path`` to a signature file, or the base64 text itself; None takes the
        package's own ``manifest.sig``. The manifest is the package's ``manifest.json`` when it has
        one (it must match the files), else :func:`build_manifest` (``name``/``version`` override
        meta.json). Re-adding an identical version returns it; a different package under an
        existing name/version is refused (versions are immutable).
        """
        pkg = Path(package_dir)
        manifest = _read_manifest(pkg) if (pkg / MANIFEST).is_file() else build_manifest(pkg, name, version)
        if isinstance(signature, Path):
            if not signature.is_file():
                raise ModelVerificationError("signature file not found", path=signature, code="unsigned")
            sig = signature.read_text().strip()
        else:
            sig = signature.strip() if signature else _read_signature(pkg)
        _verify_signature(manifest, sig, self.trusted_keys, pkg)
        _check_files(pkg, manifest)
        mname, mversion = str(manifest["name"]), str(manifest["version"])
        dest = self._folder(mname, mversion)
        if dest.exists():
            existing = _read_manifest(dest)
            if existing != manifest:
                raise ModelError(f"{mname} {mversion} is already registered with different content; "
                                 "give the new package a new version", path=dest)
        else:
            stage = dest.parent / f".staging-{uuid.uuid4().hex}"
            try:
                shutil.copytree(pkg, stage, ignore=shutil.ignore_patterns(MANIFEST, SIGNATURE))
                write_json(manifest, stage / MANIFEST)
                (stage / SIGNATURE).write_text(sig + "\n")
                stage.rename(dest)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        mv = self.verify(mname, mversion)
        if activate:
            self.activate(mname, mversion)
        return mv

    # ------------------------------------------------------------------ checking
    def verify(self, name: str, version: str) -> ModelVersion:
        """Signature by a trusted key, then every file's hash, no file missing or added."""
        folder = self._folder(name, version)
        if not folder.is_dir():
            raise ModelError(f"no registered model {name} {version}", path=folder)
        manifest = _read_manifest(folder)
        _verify_signature(manifest, _read_signature(folder), self.trusted_keys, folder)
        if (manifest.get("name"), manifest.get("version")) != (name, version):
            raise ModelVerificationError(f"the manifest names {manifest.get('name')} {manifest.get('version')}",
                                         path=folder / MANIFEST, code="bad-manifest")
        _check_files(folder, manifest)
        return ModelVersion(name, version, folder, manifest)

    def get(self, name: str, version: str) -> ModelVersion:
        """A registered version without verifying it (listing, display)."""
        folder = self._folder(name, version)
        if not (folder / MANIFEST).is_file():
            raise ModelError(f"no registered model {name} {version}", path=folder)
        return ModelVersion(name, version, folder, _read_manifest(folder))

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Registered versions (unverified), by name then registration time."""
        base = self.root / "models"
        dirs = [base / name] if name else sorted(p for p in base.glob("*") if p.is_dir())
        out = []
        for d in dirs:
            vs = [v for v in d.glob("*") if v.is_dir() and not v.name.startswith(".") and (v / MANIFEST).is_file()]
            for v in sorted(vs, key=lambda p: (p.stat().st_mtime, p.name)):
                out.append(ModelVersion(d.name, v.name, v, _read_manifest(v)))
        return out

    # ------------------------------------------------------------------ activation
    def _read_pointer(self, name: str) -> dict[str, Any] | None:
        p = self._pointer(name)
        if not p.is_file():
            return None
        doc = read_json(p)
        if not isinstance(doc, dict) or "version" not in doc:
            raise ModelError("active-model pointer is malformed", path=p)
        return doc

    def activate(self, name: str, version: str) -> ModelVersion:
        """Verify, then point ``name`` at ``version`` (one atomic file replace); the version it
        replaces goes onto the history for :meth:`rollback`."""
        mv = self.verify(name, version)
        cur = self._read_pointer(name)
        if cur is not None and cur["version"] == version:
            return mv
        history = list(cur.get("history", [])) if cur else []
        if cur is not None:
            history.append({"version": cur["version"], "activated_at": cur.get("activated_at", "")})
        self._write_pointer(name, version, history[-_HISTORY:])
        return mv

    def rollback(self, name: str) -> ModelVersion:
        """Re-activate the previously active version (verified first); repeated calls go further
        back. The version rolled back from is not kept in the history."""
        cur = self._read_pointer(name)
        history = list(cur.get("history", [])) if cur else []
        if not history:
            raise ModelError(f"model {name!r} has no previous active version to roll back to")
        prev = history.pop()
        mv = self.verify(name, str(prev["version"]))
        self._write_pointer(name, mv.version, history)
        return mv

    def history(self, name: str) -> list[dict[str, Any]]:
        """Earlier active versions, oldest first."""
        cur = self._read_pointer(name)
        return list(cur.get("history", [])) if cur else []

    def _write_pointer(self, name: str, version: str, history: list[dict[str, Any]]) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json({"name": name, "version": version, "activated_at": now, "activated_ns": time.time_ns(),
                    "history": history}, self._pointer(name))

    def active(self, name: str | None = None) -> ModelVersion | None:
        """The active version of ``name`` (None: the most recently activated of all names);
        None when nothing is active. Not verified here: verify before loading."""
        if name is None:
            pointers = [(self._read_pointer(p.stem), p.stem) for p in (self.root / "active").glob("*.json")]
            live = [(d, n) for d, n in pointers if d is not None]
            if not live:
                return None
            _, name = max(live, key=lambda dn: (int(dn[0].get("activated_ns", 0)), dn[1]))
        doc = self._read_pointer(name)
        return None if doc is None else self.get(name, str(doc["version"]))


# ---------------------------------------------------------------------- hot swap
T = TypeVar("T")


@dataclass(frozen=True)
class ModelHandle(Generic[T]):
    """What a request holds while it runs: the model object, its version and generation."""

    model: T
    version: ModelVersion | None
    generation: int


class _Slot(Generic[T]):
    def __init__(self, handle: ModelHandle[T]):
        self.handle = handle
        self.refs = 0
        self.retired = False


class ActiveModel(Generic[T]):
    """Holds the serving model; swaps in a new one without disturbing requests in flight.

    ``loader(version) -> model`` builds the object (e.g. ``lambda v: Detector(v.path)``).
    :meth:`swap_to` loads the new model *before* taking the lock, then replaces the pointer;
    requests already inside :meth:`use` keep the old object, which is passed to ``on_retire``
    (e.g. to free memory) when the last of them is done. A failing load leaves the old one.
    """

    def __init__(self, loader: Callable[[ModelVersion], T], *, on_retire: Callable[[T], None] | None = None):
        self._loader = loader
        self._on_retire = on_retire
        self._lock = threading.Lock()
        self._swap_lock = threading.RLock()  # one load at a time; refresh re-checks under it
        self._slot: _Slot[T] | None = None
        self._generation = 0

    @property
    def current(self) -> ModelHandle[T] | None:
        with self._lock:
            return None if self._slot is None else self._slot.handle

    def swap_to(self, version: ModelVersion) -> ModelHandle[T]:
        """Load ``version`` and make it current → its handle (raises, changing nothing, on failure)."""
        with self._swap_lock:
            model = self._loader(version)  # outside the pointer lock: requests keep running
            with self._lock:
                self._generation += 1
                new = _Slot(ModelHandle(model, version, self._generation))
                old, self._slot = self._slot, new
                retire_now = old is not None and old.refs == 0
                if old is not None:
                    old.retired = True
            if retire_now and old is not None:
                self._retire(old)
            return new.handle

    def refresh(self, registry: ModelRegistry, name: str | None = None) -> bool:
        """Swap to the registry's active version when it differs from ours (verified first) →
        whether a swap happened. Call after ``activate``/``rollback`` or periodically."""
        with self._swap_lock:
            target = registry.active(name)
            cur = self.current
            if target is None or (cur is not None and cur.version is not None
                                  and (cur.version.name, cur.version.version) == (target.name, target.version)):
                return False
            self.swap_to(registry.verify(target.name, target.version))
            return True

    @contextmanager
    def use(self) -> Iterator[ModelHandle[T]]:
        """Hold the current model for the duration of one request."""
        with self._lock:
            slot = self._slot
            if slot is None:
                raise ModelError("no model is loaded yet")
            slot.refs += 1
        try:
            yield slot.handle
        finally:
            with self._lock:
                slot.refs -= 1
                retire = slot.retired and slot.refs == 0
            if retire:
                self._retire(slot)

    def in_flight(self) -> dict[int, int]:
        """Requests in flight on the current generation ({generation: count})."""
        with self._lock:
            return {} if self._slot is None else {self._slot.handle.generation: self._slot.refs}

    def _retire(self, slot: _Slot[T]) -> None:
        if self._on_retire is not None:
            self._on_retire(slot.handle.model)


__all__ = [
    "MANIFEST",
    "SIGNATURE",
    "ActiveModel",
    "ModelHandle",
    "ModelRegistry",
    "ModelVerificationError",
    "ModelVersion",
    "build_manifest",
    "sign_package",
]

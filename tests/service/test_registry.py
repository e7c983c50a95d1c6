"""Signed model registry: Ed25519 manifests, tamper detection, activation/rollback, hot swap."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from lesionlens.engine.checkpoint import ModelMeta, identity, package_sha256, write_meta
from lesionlens.engine.predict import PACKAGED_MODELS
from lesionlens.engine.preprocess import InputSpec
from lesionlens.errors import ConfigError, LesionLensError, ModelError
from lesionlens.service.registry import (
    ActiveModel,
    ModelRegistry,
    ModelVerificationError,
    ModelVersion,
    build_manifest,
    sign_package,
)
from lesionlens.service.signing import (
    SignatureError,
    canonical_json,
    generate_keypair,
    sign_manifest,
    verify_manifest,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "release.key", d / "release.pub")
    generate_keypair(d / "other.key", d / "other.pub")
    return {"priv": d / "release.key", "pub": d / "release.pub",
            "other_priv": d / "other.key", "other_pub": d / "other.pub"}


def make_package(folder: Path, version: str = "1.0.0", weights: bytes = b"weights-v1") -> Path:
    folder.mkdir(parents=True)
    meta = ModelMeta(name="tiny", version=version, input=InputSpec(), names=["nodule"],
                     created="2026-01-02T03:04:05Z", data_fingerprint="abc123",
                     metrics={"cpm": 0.5})
    write_meta(folder, meta)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "model.json").write_text('{"width": 8}')
    (folder / "model.onnx").write_bytes(b"onnx-" + weights)
    return folder


@pytest.fixture
def reg(tmp_path: Path, keys: dict[str, Path]) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry", trusted_keys=[keys["pub"]])


def add_signed(reg: ModelRegistry, tmp_path: Path, keys: dict[str, Path], version: str,
               activate: bool = False) -> ModelVersion:
    pkg = make_package(tmp_path / f"pkg-{version}", version, weights=f"w-{version}".encode())
    sig = sign_manifest(build_manifest(pkg), keys["priv"])
    return reg.add(pkg, sig, activate=activate)


# ---------------------------------------------------------------------- signing
def test_keypair_sign_and_verify(keys: dict[str, Path]) -> None:
    assert stat.S_IMODE(os.stat(keys["priv"]).st_mode) == 0o600
    manifest = {"b": 1, "a": ["é", 2.5]}
    assert canonical_json(manifest) == '{"a":["é",2.5],"b":1}'.encode()
    sig = sign_manifest(manifest, keys["priv"])
    assert len(base64.b64decode(sig)) == 64
    assert verify_manifest({"a": ["é", 2.5], "b": 1}, sig, [keys["other_pub"], keys["pub"]]) == keys["pub"]
    with pytest.raises(SignatureError) as err:
        verify_manifest({**manifest, "b": 2}, sig, [keys["pub"]])
    assert err.value.code == "untrusted-signature"
    with pytest.raises(SignatureError) as err:
        verify_manifest(manifest, sig, [keys["other_pub"]])
    assert err.value.code == "untrusted-signature" and "other.pub" in str(err.value)
    with pytest.raises(SignatureError) as err:
        verify_manifest(manifest, "not base64!", [keys["pub"]])
    assert err.value.code == "bad-signature"
    with pytest.raises(SignatureError):
        verify_manifest(manifest, sig, [])
    with pytest.raises(ConfigError):  # never overwrites a private key
        generate_keypair(keys["priv"], keys["priv"].with_suffix(".x"))


# ---------------------------------------------------------------------- manifest / add / verify
def test_manifest_of_the_shipped_package() -> None:
    pkg = PACKAGED_MODELS / "default"
    m = build_manifest(pkg)
    meta = json.loads((pkg / "meta.json").read_text())
    assert m["name"] == meta["name"] and m["version"] == meta["version"] and m["created"] == meta["created"]
    assert m["metrics"] == meta["metrics"] and m["data_fingerprint"] == meta["data_fingerprint"]
    assert set(m["files"]) == {p.name for p in pkg.iterdir() if p.is_file()}
    assert package_sha256({n: e["sha256"] for n, e in m["files"].items()}) == identity(pkg)["sha256"]
    assert build_manifest(pkg) == m  # deterministic


def test_add_the_shipped_package_and_verify(reg: ModelRegistry, keys: dict[str, Path]) -> None:
    pkg = PACKAGED_MODELS / "default"
    mv = reg.add(pkg, sign_manifest(build_manifest(pkg), keys["priv"]), activate=True)
    assert mv.path == reg.root / "models" / mv.name / mv.version
    assert (mv.path / "manifest.json").is_file() and (mv.path / "manifest.sig").is_file()
    assert mv.identity() == identity(pkg) == identity(mv.path)
    assert reg.verify(mv.name, mv.version).manifest == mv.manifest
    assert reg.active() == mv and reg.active(mv.name) == mv


def test_add_refuses_unsigned_and_untrusted(reg: ModelRegistry, tmp_path: Path, keys: dict[str, Path]) -> None:
    pkg = make_package(tmp_path / "pkg")
    with pytest.raises(ModelVerificationError) as err:
        reg.add(pkg)
    assert err.value.code == "unsigned"
    with pytest.raises(ModelVerificationError) as err:
        reg.add(pkg, sign_manifest(build_manifest(pkg), keys["other_priv"]))
    assert err.value.code == "untrusted-signature" and isinstance(err.value, ModelError)
    assert reg.versions() == []
    empty = ModelRegistry(tmp_path / "r2", trusted_keys=[])  # no keys: nothing verifies
    with pytest.raises(ModelVerificationError):
        empty.add(pkg, sign_manifest(build_manifest(pkg), keys["priv"]))


def test_sign_package_then_add_with_its_own_signature(reg: ModelRegistry, tmp_path: Path,
                                                      keys: dict[str, Path]) -> None:
    pkg = make_package(tmp_path / "pkg")
    manifest, sig = sign_package(pkg, keys["priv"], version="2.0.0-rc1")
    assert (pkg / "manifest.sig").read_text().strip() == sig
    mv = reg.add(pkg)
    assert (mv.name, mv.version) == ("tiny", "2.0.0-rc1") and mv.manifest == manifest
    assert reg.add(pkg, pkg / "manifest.sig") == mv  # identical re-add is a no-op
    (pkg / "model.json").write_text('{"width": 9}')
    with pytest.raises(ModelVerificationError) as err:  # the package itself is checked on add
        reg.add(pkg)
    assert err.value.code == "tampered" and err.value.path == str(pkg / "model.json")


def test_same_version_with_other_content_is_refused(reg: ModelRegistry, tmp_path: Path,
                                                    keys: dict[str, Path]) -> None:
    add_signed(reg, tmp_path, keys, "1.0.0")
    other = make_package(tmp_path / "other", "1.0.0", weights=b"different")
    with pytest.raises(ModelError, match="already registered"):
        reg.add(other, sign_manifest(build_manifest(other), keys["priv"]))


@pytest.mark.parametrize("target", ["model.safetensors", "model.json", "model.onnx", "meta.json",
                                    "manifest.json", "manifest.sig"])
def test_any_flipped_byte_is_detected(reg: ModelRegistry, tmp_path: Path, keys: dict[str, Path],
                                      target: str) -> None:
    mv = add_signed(reg, tmp_path, keys, "1.0.0")
    p = mv.path / target
    data = bytearray(p.read_bytes())
    i = len(data) // 2
    data[i] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ModelVerificationError) as err:
        reg.verify("tiny", "1.0.0")
    if target.startswith("manifest"):
        assert err.value.code in ("bad-manifest", "bad-signature", "untrusted-signature")
    else:
        assert err.value.code == "tampered" and err.value.path == str(p)
    with pytest.raises(ModelVerificationError):
        reg.activate("tiny", "1.0.0")
    assert reg.active("tiny") is None


def test_missing_added_and_unsigned_files_are_detected(reg: ModelRegistry, tmp_path: Path,
                                                       keys: dict[str, Path]) -> None:
    mv = add_signed(reg, tmp_path, keys, "1.0.0")
    (mv.path / "extra.bin").write_bytes(b"x")
    with pytest.raises(ModelVerificationError) as err:
        reg.verify("tiny", "1.0.0")
    assert err.value.code == "unexpected-file" and "extra.bin" in str(err.value)
    (mv.path / "extra.bin").unlink()
    (mv.path / "model.onnx").unlink()
    with pytest.raises(ModelVerificationError) as err:
        reg.verify("tiny", "1.0.0")
    assert err.value.code == "missing-file" and "model.onnx" in str(err.value)
    shutil.copy(tmp_path / "pkg-1.0.0" / "model.onnx", mv.path / "model.onnx")
    reg.verify("tiny", "1.0.0")
    (mv.path / "manifest.sig").unlink()
    with pytest.raises(ModelVerificationError) as err:
        reg.verify("tiny", "1.0.0")
    assert err.value.code == "unsigned"


def test_activate_rollback_history(reg: ModelRegistry, tmp_path: Path, keys: dict[str, Path]) -> None:
    v1 = add_signed(reg, tmp_path, keys, "1.0.0", activate=True)
    v2 = add_signed(reg, tmp_path, keys, "1.1.0")
    assert reg.active("tiny") == v1  # add does not activate unless asked
    reg.activate("tiny", "1.1.0")
    assert reg.active("tiny") == v2
    assert reg.activate("tiny", "1.1.0") == v2 and len(reg.history("tiny")) == 1  # no-op
    v3 = add_signed(reg, tmp_path, keys, "2.0.0", activate=True)
    assert reg.active("tiny") == v3
    assert [h["version"] for h in reg.history("tiny")] == ["1.0.0", "1.1.0"]
    assert reg.rollback("tiny") == v2 and reg.active("tiny") == v2
    assert reg.rollback("tiny") == v1
    with pytest.raises(ModelError, match="roll back"):
        reg.rollback("tiny")
    assert [(v.name, v.version) for v in reg.versions()] == [("tiny", "1.0.0"), ("tiny", "1.1.0"), ("tiny", "2.0.0")]
    pointer = json.loads((reg.root / "active" / "tiny.json").read_text())
    assert pointer["version"] == "1.0.0"
    assert not list((reg.root / "active").glob(".tmp-*"))


def test_names_cannot_escape_the_registry(reg: ModelRegistry) -> None:
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError):
            reg.verify("tiny", bad)
    with pytest.raises(ConfigError):
        ModelRegistry(reg.root, trusted_keys=[reg.root / "missing.pub"])


# ---------------------------------------------------------------------- hot swap
class FakeModel:
    def __init__(self, version: str, delay: float = 0.0):
        time.sleep(delay)  # loading takes a while: requests must keep running meanwhile
        self.version = version
        self.closed = False

    def predict(self) -> str:
        if self.closed:
            raise RuntimeError("used after retirement")
        return self.version


def test_hot_swap_under_load(reg: ModelRegistry, tmp_path: Path, keys: dict[str, Path]) -> None:
    add_signed(reg, tmp_path, keys, "1.0.0", activate=True)
    add_signed(reg, tmp_path, keys, "2.0.0")
    retired: list[str] = []

    def retire(m: FakeModel) -> None:
        m.closed = True
        retired.append(m.version)

    am: ActiveModel[FakeModel] = ActiveModel(lambda v: FakeModel(v.version, delay=0.2), on_retire=retire)
    assert am.refresh(reg, "tiny") and am.current is not None and am.current.generation == 1
    assert not am.refresh(reg, "tiny")  # already current
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                with am.use() as h:
                    time.sleep(0.002)  # a request in flight across the swap
                    out = h.model.predict()
                    assert out == h.version.version if h.version else True
                    seen[i].append(out)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    reg.activate("tiny", "2.0.0")
    assert am.refresh(reg, "tiny")
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    for s in seen:
        assert s and set(s) <= {"1.0.0", "2.0.0"}
        k = s.index("2.0.0")  # old then new, never back
        assert set(s[:k]) == {"1.0.0"} and set(s[k:]) == {"2.0.0"}
    assert retired == ["1.0.0"]
    assert am.current is not None and am.current.generation == 2 and am.in_flight() == {2: 0}


def test_failed_load_keeps_the_old_model(reg: ModelRegistry, tmp_path: Path, keys: dict[str, Path]) -> None:
    v1 = add_signed(reg, tmp_path, keys, "1.0.0", activate=True)
    add_signed(reg, tmp_path, keys, "2.0.0", activate=True)

    def loader(v: ModelVersion) -> FakeModel:
        if v.version == "2.0.0":
            raise ModelError("cannot load", path=v.path)
        return FakeModel(v.version)

    am: ActiveModel[FakeModel] = ActiveModel(loader)
    with pytest.raises(ModelError):
        am.use().__enter__()  # nothing loaded yet
    am.swap_to(v1)
    with pytest.raises(LesionLensError):
        am.refresh(reg, "tiny")
    with am.use() as h:
        assert h.model.predict() == "1.0.0" and h.generation == 1

"""Encryption at rest: round trips, wrong keys, tampering, rotation, key sources, key hygiene."""

from __future__ import annotations

import base64
import logging
import os
import stat
import sys
import types
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lesionlens.cli import keys_cmd
from lesionlens.errors import LesionLensError
from lesionlens.privacy import crypto
from lesionlens.privacy.crypto import (
    MAGIC,
    CryptoError,
    NotEncryptedError,
    TamperedError,
    WrongKeyError,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    is_encrypted,
    iter_decrypted,
    open_decrypted,
    read_header,
    rotate_dir,
)
from lesionlens.privacy.keys import (
    DataKey,
    KeyRing,
    KeySourceError,
    create_key_file,
    key_from_env,
    key_from_file,
    key_from_hook,
    key_from_spec,
    key_id_for,
)

CHUNK = 64  # small chunks make multi-chunk files cheap


@pytest.fixture()
def key() -> DataKey:
    return DataKey(bytes(range(32)))


@pytest.fixture()
def other_key() -> DataKey:
    return DataKey(bytes(range(1, 33)))


def _cli() -> typer.Typer:
    app = typer.Typer()
    keys_cmd.register(app)
    return app


# -- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17])
def test_bytes_round_trip(key: DataKey, size: int) -> None:
    data = os.urandom(size)
    blob = encrypt_bytes(data, key, chunk_size=CHUNK)
    assert blob.startswith(MAGIC)
    assert size < 16 or data not in blob
    assert decrypt_bytes(blob, key) == data


def test_same_plaintext_gives_different_ciphertext(key: DataKey) -> None:
    assert encrypt_bytes(b"x" * 100, key) != encrypt_bytes(b"x" * 100, key)


def test_file_round_trip_default_chunks(tmp_path: Path, key: DataKey) -> None:
    src = tmp_path / "a.dcm"
    data = os.urandom(2 * crypto.DEFAULT_CHUNK + 12345)  # three 1 MiB chunks
    src.write_bytes(data)
    enc = encrypt_file(src, tmp_path / "a.dcm.enc", key)
    assert is_encrypted(enc) and not is_encrypted(src)
    assert stat.S_IMODE(enc.stat().st_mode) == 0o600
    assert enc.stat().st_size == len(data) + len(read_header(enc).raw) + 3 * crypto.TAG_BYTES
    out = decrypt_file(enc, tmp_path / "b.dcm", key)
    assert out.read_bytes() == data
    assert open_decrypted(enc, key) == data
    assert b"".join(iter_decrypted(enc, key)) == data
    assert not list(tmp_path.glob(crypto.TMP_PREFIX + "*"))


def test_empty_file_and_in_place(tmp_path: Path, key: DataKey) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    encrypt_file(p, p, key)  # in place
    assert is_encrypted(p)
    assert open_decrypted(p, key) == b""


def test_open_decrypted_plaintext_policy(tmp_path: Path, key: DataKey) -> None:
    p = tmp_path / "plain.dcm"
    p.write_bytes(b"DICM plain")
    with pytest.raises(NotEncryptedError, match="plain.dcm: not a LesionLens encrypted file"):
        open_decrypted(p, key)
    assert open_decrypted(p, key, allow_plaintext=True) == b"DICM plain"


def test_name_binding(tmp_path: Path, key: DataKey) -> None:
    blob = encrypt_bytes(b"patient A", key, name="1.2.3/4.5/6.7")
    assert decrypt_bytes(blob, key, name="1.2.3/4.5/6.7") == b"patient A"
    with pytest.raises(TamperedError):
        decrypt_bytes(blob, key, name="1.2.3/4.5/9.9")  # a file moved to another name
    with pytest.raises(CryptoError, match="bound to its logical name"):
        decrypt_bytes(blob, key)
    with pytest.raises(CryptoError, match="not bound"):
        decrypt_bytes(encrypt_bytes(b"x", key), key, name="n")


# -- wrong keys --------------------------------------------------------------------------------

def test_wrong_key_names_both_ids(tmp_path: Path, key: DataKey, other_key: DataKey) -> None:
    p = tmp_path / "f.enc"
    p.write_bytes(encrypt_bytes(b"secret", key))
    with pytest.raises(WrongKeyError) as err:
        open_decrypted(p, other_key)
    msg = str(err.value)
    assert str(p) in msg
    assert f"encrypted with key id {key.key_id}; the key ring has {other_key.key_id}" in msg
    assert isinstance(err.value, LesionLensError) and err.value.code == "wrong-key"


def test_wrong_key_same_id_is_wrong_key_not_garbage(key: DataKey, other_key: DataKey) -> None:
    blob = encrypt_bytes(b"secret", DataKey(key.secret, "site-2024"))
    with pytest.raises(WrongKeyError, match="key with id site-2024 .* is not the key"):
        decrypt_bytes(blob, DataKey(other_key.secret, "site-2024"))


def test_ring_decrypts_with_older_key(key: DataKey, other_key: DataKey) -> None:
    blob = encrypt_bytes(b"old", key)
    ring = KeyRing(other_key, [key])
    assert decrypt_bytes(blob, ring) == b"old"
    assert read_header_bytes(encrypt_bytes(b"new", ring)) == other_key.key_id


def read_header_bytes(blob: bytes) -> str:
    import io

    return crypto._parse_header(io.BytesIO(blob), "<b>").key_id


# -- tampering ---------------------------------------------------------------------------------

def _header_len(blob: bytes) -> int:
    import io

    return len(crypto._parse_header(io.BytesIO(blob), "<b>").raw)


@pytest.fixture()
def blob(key: DataKey) -> bytes:
    return encrypt_bytes(os.urandom(4 * CHUNK + 10), key, chunk_size=CHUNK)


def test_every_single_byte_flip_is_detected(key: DataKey, blob: bytes) -> None:
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(CryptoError):
            decrypt_bytes(bytes(bad), key)


@pytest.mark.parametrize("where", ["header-nonce", "ciphertext", "tag"])
def test_flip_reports_authentication_failure(key: DataKey, blob: bytes, where: str) -> None:
    h = _header_len(blob)
    pos = {"header-nonce": h - 32 - 5, "ciphertext": h + 3, "tag": h + CHUNK + 2}[where]
    bad = bytearray(blob)
    bad[pos] ^= 0x80
    with pytest.raises(TamperedError, match="study.enc: authentication failed: the file was modified"):
        decrypt_bytes(bytes(bad), key, where="study.enc")


@pytest.mark.parametrize("cut", [1, crypto.TAG_BYTES, CHUNK + crypto.TAG_BYTES - 10])
def test_truncation_detected(key: DataKey, blob: bytes, cut: int) -> None:
    with pytest.raises(TamperedError, match="modified or truncated"):
        decrypt_bytes(blob[:-cut], key)


def test_truncation_at_chunk_boundary_detected(key: DataKey, blob: bytes) -> None:
    h, sealed = _header_len(blob), CHUNK + crypto.TAG_BYTES
    for n_chunks in range(0, 5):
        with pytest.raises(TamperedError):
            decrypt_bytes(blob[: h + n_chunks * sealed], key)


def test_appended_data_and_swapped_chunks_detected(key: DataKey, blob: bytes) -> None:
    h, sealed = _header_len(blob), CHUNK + crypto.TAG_BYTES
    with pytest.raises(TamperedError):
        decrypt_bytes(blob + blob[h: h + sealed], key)
    c = [blob[h + i * sealed: h + (i + 1) * sealed] for i in range(5)]
    swapped = blob[:h] + c[1] + c[0] + c[2] + c[3] + c[4]
    with pytest.raises(TamperedError, match="chunk 0"):
        decrypt_bytes(swapped, key)


def test_tampered_file_never_produces_output(tmp_path: Path, key: DataKey, blob: bytes) -> None:
    src = tmp_path / "x.enc"
    bad = bytearray(blob)
    bad[-3] ^= 1  # last chunk: the earlier chunks authenticate first
    src.write_bytes(bytes(bad))
    dst = tmp_path / "x.dcm"
    with pytest.raises(TamperedError, match="x.enc"):
        decrypt_file(src, dst, key)
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.enc"]


def test_header_magic_flip_is_not_encrypted(key: DataKey, blob: bytes) -> None:
    bad = b"X" + blob[1:]
    with pytest.raises(NotEncryptedError):
        decrypt_bytes(bad, key)


# -- rotation ----------------------------------------------------------------------------------

def _make_store(root: Path, key: DataKey) -> dict[Path, bytes]:
    files: dict[Path, bytes] = {}
    for i in range(6):
        p = root / f"study{i % 2}" / f"inst{i}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(100 + 300 * i)
        p.write_bytes(encrypt_bytes(data, key, chunk_size=CHUNK,
                                    name=p.relative_to(root).as_posix() if i % 3 == 0 else None))
        files[p] = data
    (root / "README.txt").write_text("not encrypted")
    return files


def test_rotation_reencrypts_everything(tmp_path: Path, key: DataKey, other_key: DataKey) -> None:
    files = _make_store(tmp_path, key)
    report = rotate_dir(tmp_path, KeyRing(other_key, [key]))
    assert (report.rotated, report.skipped, report.not_encrypted, report.failed) == (6, 0, 1, [])
    for p, data in files.items():
        name = p.relative_to(tmp_path).as_posix() if read_header(p).bound else None
        assert read_header(p).key_id == other_key.key_id
        assert open_decrypted(p, other_key, name=name) == data
        with pytest.raises(WrongKeyError, match=f"encrypted with key id {other_key.key_id}"):
            open_decrypted(p, key, name=name)
    again = rotate_dir(tmp_path, KeyRing(other_key, [key]))
    assert (again.rotated, again.skipped) == (0, 6)


def test_interrupted_rotation_resumes(tmp_path: Path, key: DataKey, other_key: DataKey,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files = _make_store(tmp_path, key)
    real = crypto.reencrypt_file
    calls = {"n": 0}

    def crash_after_two(*a: object, **kw: object) -> bool:
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(crypto, "reencrypt_file", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        rotate_dir(tmp_path, KeyRing(other_key, [key]))
    monkeypatch.setattr(crypto, "reencrypt_file", real)
    assert not list(tmp_path.rglob(crypto.TMP_PREFIX + "*"))
    report = rotate_dir(tmp_path, KeyRing(other_key, [key]))
    assert (report.rotated, report.skipped, report.failed) == (4, 2, [])
    for p, data in files.items():
        name = p.relative_to(tmp_path).as_posix() if read_header(p).bound else None
        assert open_decrypted(p, other_key, name=name) == data


def test_rotation_reports_undecryptable_and_goes_on(tmp_path: Path, key: DataKey,
                                                    other_key: DataKey) -> None:
    _make_store(tmp_path, key)
    stranger = DataKey(os.urandom(32))
    (tmp_path / "foreign.enc").write_bytes(encrypt_bytes(b"x", stranger))
    report = rotate_dir(tmp_path, KeyRing(other_key, [key]))
    assert report.rotated == 6
    assert [(p.name, "key id" in r) for p, r in report.failed] == [("foreign.enc", True)]


def test_cli_keys_create_id_rotate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    runner, app = CliRunner(), _cli()
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    for p in (a, b):
        res = runner.invoke(app, ["keys", "create", "--key-file", str(p)])
        assert res.exit_code == 0, res.output
        assert stat.S_IMODE(p.stat().st_mode) == 0o600 and len(p.read_bytes()) == 32
    res = runner.invoke(app, ["keys", "create", "--key-file", str(a)])
    assert res.exit_code == 2 and "refusing to overwrite" in res.output
    ka, kb = key_from_file(a), key_from_file(b)
    res = runner.invoke(app, ["keys", "id", "--key-file", str(a)])
    assert res.output.strip() == ka.key_id == key_id_for(a.read_bytes())

    data_dir = tmp_path / "data"
    files = _make_store(data_dir, ka)
    res = runner.invoke(app, ["keys", "rotate", "--data-dir", str(data_dir), "--old-key-file", str(a),
                              "--new-key-file", str(b)])
    assert res.exit_code == 0, res.output
    assert "rotated 6" in res.output and "failed 0" in res.output
    assert all(read_header(p).key_id == kb.key_id for p in files)
    res = runner.invoke(app, ["keys", "rotate", "--data-dir", str(data_dir), "--old-key-file", str(a),
                              "--new-key-file", str(b)])
    assert "rotated 0" in res.output and "6" in res.output

    # keys never appear in output or logs
    everything = res.output + caplog.text
    for k in (ka, kb):
        for text in (k.secret.hex(), base64.b64encode(k.secret).decode(),
                     base64.urlsafe_b64encode(k.secret).decode().rstrip("=")):
            assert text not in everything
            assert text[:16] not in everything


def test_cli_rotate_exit_1_on_failure(tmp_path: Path) -> None:
    runner, app = CliRunner(), _cli()
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    create_key_file(a)
    create_key_file(b)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "x.enc").write_bytes(encrypt_bytes(b"x", DataKey.generate()))
    res = runner.invoke(app, ["keys", "rotate", "--data-dir", str(data_dir), "--old-key-file", str(a),
                              "--new-key-file", str(b)])
    assert res.exit_code == 1
    assert "x.enc" in res.output and "failed 1" in res.output


# -- key sources -------------------------------------------------------------------------------

def test_key_file_formats(tmp_path: Path, key: DataKey) -> None:
    for name, content in [("raw", key.secret), ("hex", key.secret.hex().encode() + b"\n"),
                          ("b64", base64.b64encode(key.secret) + b"\n")]:
        p = tmp_path / name
        p.write_bytes(content)
        p.chmod(0o600)
        assert key_from_file(p) == key
    bad = tmp_path / "short"
    bad.write_bytes(b"abc")
    with pytest.raises(KeySourceError, match="short.*not a 32-byte key"):
        key_from_file(bad)


def test_loose_key_file_permissions_warn(tmp_path: Path, key: DataKey,
                                         caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "k"
    p.write_bytes(key.secret)
    p.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        key_from_file(p)
    assert "chmod 600" in caplog.text
    assert key.secret.hex() not in caplog.text


def test_env_source(monkeypatch: pytest.MonkeyPatch, key: DataKey) -> None:
    monkeypatch.setenv("LESIONLENS_DATA_KEY", base64.b64encode(key.secret).decode())
    assert key_from_env() == key
    monkeypatch.setenv("LESIONLENS_DATA_KEY", key.secret.hex())
    assert key_from_spec("env") == key
    monkeypatch.setenv("OTHER_VAR", key.secret.hex().upper())
    assert key_from_spec("env:OTHER_VAR") == key
    monkeypatch.setenv("LESIONLENS_DATA_KEY", "too-short")
    with pytest.raises(KeySourceError) as err:
        key_from_env()
    assert "LESIONLENS_DATA_KEY" in str(err.value) and "too-short" not in str(err.value)
    monkeypatch.delenv("LESIONLENS_DATA_KEY")
    with pytest.raises(KeySourceError, match="is not set"):
        key_from_env()


def test_hook_source(monkeypatch: pytest.MonkeyPatch, key: DataKey, other_key: DataKey) -> None:
    mod = types.ModuleType("fake_kms")
    mod.get_key = lambda: key.secret  # type: ignore[attr-defined]
    mod.get_data_key = lambda: DataKey(other_key.secret, "kms-v7")  # type: ignore[attr-defined]
    mod.get_ring = lambda: KeyRing(other_key, [key])  # type: ignore[attr-defined]
    mod.broken = lambda: 1 / 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_kms", mod)
    assert key_from_hook("fake_kms:get_key") == key
    assert key_from_spec("hook:fake_kms:get_data_key").key_id == "kms-v7"
    ring = KeyRing.from_specs("hook:fake_kms:get_ring")
    assert ring.ids == (other_key.key_id, key.key_id)
    with pytest.raises(KeySourceError, match="ZeroDivisionError"):
        key_from_hook("fake_kms:broken")
    with pytest.raises(KeySourceError, match="cannot import"):
        key_from_hook("fake_kms:nope")
    with pytest.raises(KeySourceError, match="module:function"):
        key_from_spec("hook:fake_kms")


def test_ring_from_specs_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      key: DataKey, other_key: DataKey) -> None:
    p = tmp_path / "k"
    p.write_bytes(key.secret)
    p.chmod(0o600)
    monkeypatch.setenv("LESIONLENS_DATA_KEY", other_key.secret.hex())
    ring = KeyRing.from_specs("env", [f"file:{p}"])
    assert ring.active == other_key and ring.get(key.key_id) == key
    with pytest.raises(KeySourceError, match="expected file:PATH"):
        KeyRing.from_specs("vault")


def test_key_repr_and_errors_hide_secret(key: DataKey) -> None:
    assert key.secret.hex() not in repr(key) + str(key) + repr(KeyRing(key))
    with pytest.raises(KeySourceError, match="32 bytes"):
        DataKey(b"short")
    with pytest.raises(KeySourceError, match="share the id"):
        KeyRing(DataKey(key.secret, "k1"), [DataKey(os.urandom(32), "k1")])


def test_create_key_file_refuses_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "k"
    k = create_key_file(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_bytes() == k.secret
    with pytest.raises(KeySourceError, match="refusing to overwrite"):
        create_key_file(p)
    assert p.read_bytes() == k.secret

"""Tokens: stored hashed, roles checked, no token configured → refuse to start."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lesionlens.errors import ConfigError
from lesionlens.service.auth import (
    Authenticator,
    AuthError,
    TokenStore,
    create_token,
    hash_token,
)
from lesionlens.service.runtime import build_runtime
from lesionlens.service.settings import Settings


def test_tokens_are_stored_hashed(tmp_path: Path) -> None:
    f = tmp_path / "tokens.json"
    t1 = create_token(f, "admin", "ops")
    t2 = create_token(f, "viewer")
    text = f.read_text()
    assert t1 not in text and t2 not in text and hash_token(t1) in text
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    store = TokenStore.load(f)
    assert store.lookup(t1).role == "admin" and store.lookup(t1).name == "ops"
    assert store.lookup(t2).role == "viewer" and store.lookup("llt_other") is None
    assert len(json.loads(text)["tokens"]) == 2


def test_bad_role_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="role"):
        create_token(tmp_path / "t.json", "root")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError):
        TokenStore.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not found"):
        TokenStore.load(tmp_path / "missing.json")


def test_authenticator(tmp_path: Path) -> None:
    f = tmp_path / "t.json"
    tok = create_token(f, "service")
    auth = Authenticator(TokenStore.load(f))
    assert auth.authenticate(f"Bearer {tok}").role == "service"
    for header in (None, "", "Basic abc", "Bearer ", "Bearer wrong"):
        with pytest.raises(AuthError):
            auth.authenticate(header)


def test_no_token_refuses_to_start_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--tokens"):
        Authenticator(None)
    with pytest.raises(ConfigError, match="insecure-no-auth"):
        build_runtime(Settings(data_dir=tmp_path / "d"), load_model=False)
    rt = build_runtime(Settings(data_dir=tmp_path / "d", insecure_no_auth=True), load_model=False)
    assert rt.authenticator.insecure and rt.authenticator.authenticate(None).role == "admin"


def test_token_create_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lesionlens.cli.main import app

    f = tmp_path / "t.json"
    r = CliRunner().invoke(app, ["token", "create", "--role", "radiologist", "--tokens", str(f)])
    assert r.exit_code == 0, r.output
    tok = r.output.strip().splitlines()[-1]
    assert TokenStore.load(f).lookup(tok).role == "radiologist"

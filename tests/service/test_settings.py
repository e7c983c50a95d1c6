"""Settings layering: defaults < config file < env < flags; bad values name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lesionlens.errors import ConfigError
from lesionlens.service.settings import Settings, load_settings


def test_defaults() -> None:
    s = load_settings(env={})
    assert (s.http_port, s.dicom_port, s.ae_title, s.model, s.tokens) == (8000, 11112, "LESIONLENS", "default", None)


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http_port: 9001\ndicom_port: 9002\nae_title: FROMFILE\nworkers: 3\n"
                   "send-to: [PACS@127.0.0.1:104]\n")
    env = {"LESIONLENS_DICOM_PORT": "9102", "LESIONLENS_AE_TITLE": "FROMENV",
           "LESIONLENS_ALLOW_AE": "A1, A2"}
    s = load_settings(cfg, env=env, flags={"ae_title": "FROMFLAG", "workers": None, "send_to": []})
    assert s.http_port == 9001  # file
    assert s.dicom_port == 9102  # env beats file
    assert s.ae_title == "FROMFLAG"  # flag beats env
    assert s.workers == 3  # a flag left out (None) does not override
    assert s.allow_ae == ["A1", "A2"] and s.send_to == ["PACS@127.0.0.1:104"]


def test_json_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text('{"http_port": 1234}')
    assert load_settings(cfg, env={}).http_port == 1234


@pytest.mark.parametrize("where", ["file", "env", "flag"])
def test_bad_value_names_the_field(tmp_path: Path, where: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http_port: 99999\n" if where == "file" else "{}\n")
    env = {"LESIONLENS_HTTP_PORT": "notaport"} if where == "env" else {}
    flags = {"http_port": -1} if where == "flag" else {}
    with pytest.raises(ConfigError, match="http_port"):
        load_settings(cfg, env=env, flags=flags)


def test_unknown_setting_and_bad_ae_and_peer(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("htp_port: 1\n")
    with pytest.raises(ConfigError, match="htp_port"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="ae_title"):
        load_settings(env={"LESIONLENS_AE_TITLE": "WAY_TOO_LONG_FOR_AN_AE_TITLE"})
    with pytest.raises(ConfigError):
        load_settings(env={}, flags={"send_to": ["not a peer"]})
    with pytest.raises(ConfigError, match="tls"):
        load_settings(env={}, flags={"tls_cert": "c.pem"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={})
    assert isinstance(Settings(), Settings)


def test_data_key_env_holds_a_spec_or_the_key_itself() -> None:
    import base64

    from lesionlens.service.settings import load_settings

    key = base64.b64encode(b"\x01" * 32).decode()
    assert load_settings(env={"LESIONLENS_DATA_KEY": key}).data_key == "env"  # the key itself: read it from env
    assert load_settings(env={"LESIONLENS_DATA_KEY": "file:/etc/k"}).data_key == "file:/etc/k"


def test_a_bad_key_spec_never_echoes_its_text() -> None:
    import pytest

    from lesionlens.privacy.keys import KeySourceError, resolve_spec

    with pytest.raises(KeySourceError) as err:
        resolve_spec("c2VjcmV0LWtleS1tYXRlcmlhbA==")
    assert "c2VjcmV0" not in str(err.value)

"""Settings of ``lesionlens serve``: one typed model, layered defaults < config file < env < flags.

``load_settings(config_file, env=os.environ, flags={...})`` merges, rightmost wins:

1. the defaults of :class:`Settings`;
2. a YAML or JSON config file (a mapping of field names; unknown fields are refused);
3. environment variables ``LESIONLENS_<FIELD>`` (upper case; lists comma-separated);
4. CLI flags (``None`` means "not given").

Any invalid value raises :class:`~lesionlens.errors.ConfigError` naming the field and where it
came from. Secrets (the tokens file) have no working default: see :mod:`lesionlens.service.auth`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lesionlens.errors import ConfigError

ENV_PREFIX = "LESIONLENS_"


class Settings(BaseModel):
    """Everything the service needs to start. Paths are taken as given (relative to the cwd)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data_dir: Path = Path("lesionlens-data")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    dicom_host: str = "127.0.0.1"
    dicom_port: int = Field(11112, ge=0, le=65535)
    ae_title: str = "LESIONLENS"
    send_to: list[str] = Field(default_factory=list)
    allow_ae: list[str] = Field(default_factory=list)
    stow_url: str | None = None
    stable_seconds: float = Field(60.0, ge=0)
    workers: int = Field(1, ge=0, description="worker processes (0: no workers, API only)")
    model: str = "default"
    registry_name: str | None = None
    trusted_keys: list[Path] = Field(default_factory=list)
    delivery_backoff_seconds: float = Field(10.0, ge=0, description="first retry delay of a failed result delivery")
    delivery_max_backoff_seconds: float = Field(300.0, ge=0, description="cap of the doubling retry delay")
    max_upload_mb: float = Field(512.0, gt=0)
    max_queued: int = Field(1000, ge=1)
    tokens: Path | None = None
    insecure_no_auth: bool = False
    data_key: str | None = Field(None, description="encryption at rest: key spec file:PATH | env[:VAR] | hook:MOD:FN")
    data_keys_old: list[str] = Field(default_factory=list, description="older key specs (decryption during rotation)")
    audit_log: Path | None = Field(None, description="audit trail file (default DATA_DIR/audit/audit.jsonl)")
    audit_key_file: Path | None = Field(None, description="HMAC key of the audit chain (recommended)")
    deid_key_file: Path | None = Field(None, description="key of de-identified exports (?deid=true); none: refused")
    deid_options: list[str] = Field(default_factory=list, description="PS3.15 options of de-identified exports")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    predict_threads: int | None = Field(None, ge=1)
    max_predict_inflight: int = Field(32, ge=1, description="/v1/predict requests running or waiting; more get 503")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        from lesionlens.net.address import validate_ae_title

        return validate_ae_title(v, field="ae_title")

    @field_validator("allow_ae")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        from lesionlens.net.address import validate_ae_title

        return [validate_ae_title(a, field="allow_ae entry") for a in v]

    @field_validator("send_to")
    @classmethod
    def _peers(cls, v: list[str]) -> list[str]:
        from lesionlens.net.address import parse_peer

        return [str(parse_peer(p)) for p in v]

    @field_validator("stow_url")
    @classmethod
    def _stow(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().startswith(("http://", "https://")):
            raise ConfigError(f"stow_url must be an http:// or https:// DICOMweb root, got {v!r}")
        return v

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        for name in ("tls_cert", "tls_key", "audit_key_file", "tokens"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file() and name != "tokens":
                raise ConfigError(f"setting {name!r}: file not found: {path}")


LIST_FIELDS = {n for n, f in Settings.model_fields.items() if "list" in str(f.annotation)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON config file → its mapping (dashes in keys → underscores)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config file not found", path=p)
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"cannot parse the config file: {exc}", path=p) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError("the config file must hold a mapping of settings", path=p)
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``LESIONLENS_<FIELD>`` variables → settings (lists comma-separated)."""
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            raw = env[key]
            out[name] = [s.strip() for s in raw.split(",") if s.strip()] if name in LIST_FIELDS else raw
    # LESIONLENS_DATA_KEY is also where the key itself may live (spec "env"): a value that is not a
    # key spec is the key material, so the setting is "read the key from this variable".
    dk = out.get("data_key")
    if isinstance(dk, str) and not dk.startswith(("file:", "env", "hook:")):
        out["data_key"] = "env"
    return out


def _validate(merged: dict[str, Any], origin: dict[str, str]) -> Settings:
    try:
        return Settings(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "?"
        where = origin.get(field, "default")
        msg = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            raise ConfigError(f"unknown setting {field!r} (from {where})") from None
        raise ConfigError(f"setting {field!r} (from {where}): {msg}; got {merged.get(field)!r}") from None
    except ConfigError as exc:  # raised inside a validator (AE titles, peers)
        raise ConfigError(str(exc)) from None


def load_settings(config_file: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                  flags: Mapping[str, Any] | None = None) -> Settings:
    """Merge defaults < config file < env (``LESIONLENS_*``) < flags (``None`` = not given)."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    env = os.environ if env is None else env
    cfg = config_file if config_file is not None else env.get(ENV_PREFIX + "CONFIG")
    layers: list[tuple[str, dict[str, Any]]] = []
    if cfg:
        layers.append((f"config file {cfg}", read_config_file(cfg)))
    layers.append(("environment", from_env(env)))
    layers.append(("command line", {k: v for k, v in (flags or {}).items()
                                    if v is not None and not (k in LIST_FIELDS and v == [])}))
    for where, layer in layers:
        for k, v in layer.items():
            merged[k] = v
            origin[k] = where
    settings = _validate(merged, origin)
    settings.check_tls()
    return settings


__all__ = ["ENV_PREFIX", "Settings", "load_settings", "read_config_file"]

"""API tokens: random bearer tokens with a role, stored only as SHA-256 hashes.

The tokens file is JSON ``{"format": "lesionlens-tokens/1", "tokens": [{"sha256", "role",
"name", "created"}]}``. :func:`create_token` appends a fresh token and returns the plain text once
(``lesionlens token create --role R --tokens FILE`` prints it). Roles:

* ``viewer`` — read jobs, findings, reports, models;
* ``radiologist`` — viewer + predict and submit studies;
* ``service`` — machine clients: predict and submit studies, read results;
* ``model-admin`` — viewer + upload/activate/roll back models;
* ``admin`` — everything.

:func:`require` builds the FastAPI dependency: a missing or unknown token → 401 with
``WWW-Authenticate: Bearer``; a known token without an allowed role → 403.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionlens.errors import ConfigError, LesionLensError

log = logging.getLogger(__name__)

ROLES = ("viewer", "radiologist", "model-admin", "admin", "service")
TOKENS_FORMAT = "lesionlens-tokens/1"
TOKEN_PREFIX = "llt_"

# who may do what: the route says which capability it needs
READ = ("viewer", "radiologist", "model-admin", "admin", "service")
SUBMIT = ("radiologist", "admin", "service")
MODEL_ADMIN = ("model-admin", "admin")


class AuthError(LesionLensError):
    """No valid token (HTTP 401)."""

    code = "unauthorized"


class ForbiddenError(LesionLensError):
    """A valid token whose role may not do this (HTTP 403)."""

    code = "forbidden"


@dataclass(frozen=True)
class Principal:
    """Who made the request. ``name`` is the token's label (never the token)."""

    name: str
    role: str


ANONYMOUS_ADMIN = Principal("insecure-no-auth", "admin")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("tokens file not found (create one with `lesionlens token create`)", path=path) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the tokens file: {exc}", path=path) from None
    if not isinstance(doc, dict) or doc.get("format") != TOKENS_FORMAT or not isinstance(doc.get("tokens"), list):
        raise ConfigError(f"not a {TOKENS_FORMAT} file", path=path)
    return doc


class TokenStore:
    """The hashed tokens of one file; lookups compare hashes in constant time."""

    def __init__(self, entries: Iterable[dict[str, Any]], source: str = ""):
        self._by_hash: dict[str, Principal] = {}
        for i, e in enumerate(entries):
            role, digest = e.get("role"), e.get("sha256")
            if role not in ROLES:
                raise ConfigError(f"tokens[{i}].role {role!r} is not one of {ROLES}", path=source or None)
            if not isinstance(digest, str) or len(digest) != 64:
                raise ConfigError(f"tokens[{i}].sha256 is not a SHA-256 hex digest", path=source or None)
            self._by_hash[digest] = Principal(str(e.get("name") or f"token-{i + 1}"), str(role))

    @classmethod
    def load(cls, path: str | Path) -> TokenStore:
        p = Path(path)
        store = cls(_read(p)["tokens"], str(p))
        if not len(store):
            raise ConfigError("the tokens file holds no token", path=p)
        return store

    def __len__(self) -> int:
        return len(self._by_hash)

    def lookup(self, token: str) -> Principal | None:
        digest = hash_token(token)
        found = None
        for h, who in self._by_hash.items():  # constant time per entry
            if hmac.compare_digest(h, digest):
                found = who
        return found


def create_token(path: str | Path, role: str, name: str | None = None) -> str:
    """Append a new random token with ``role`` to the tokens file (created 0600) → the token."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    p = Path(path)
    doc: dict[str, Any] = _read(p) if p.exists() else {"format": TOKENS_FORMAT, "tokens": []}
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    doc["tokens"].append({"sha256": hash_token(token), "role": role,
                          "name": name or f"{role}-{len(doc['tokens']) + 1}",
                          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, p)
    return token


class Authenticator:
    """Resolves a bearer token to a :class:`Principal`. ``tokens=None`` only with
    ``insecure=True`` (every request is an admin; logged loudly at start)."""

    def __init__(self, tokens: TokenStore | None, *, insecure: bool = False):
        if tokens is None and not insecure:
            raise ConfigError("no API tokens configured: give --tokens FILE (create one with "
                              "`lesionlens token create --role admin --tokens FILE`) or, for a "
                              "throw-away local test only, --insecure-no-auth")
        self.tokens = tokens
        self.insecure = tokens is None

    def authenticate(self, authorization: str | None) -> Principal:
        if self.tokens is None:
            return ANONYMOUS_ADMIN
        if not authorization:
            raise AuthError("missing bearer token (Authorization: Bearer <token>)")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        who = self.tokens.lookup(value.strip())
        if who is None:
            raise AuthError("invalid or revoked token")
        return who


def require(*roles: str) -> Callable[..., Principal]:
    """FastAPI dependency: the request's principal, which must have one of ``roles``."""
    from fastapi import Request

    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise ValueError(f"unknown roles {bad}")

    def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        audit = getattr(getattr(request.app.state, "runtime", None), "audit", None)
        try:
            who = auth.authenticate(request.headers.get("authorization"))
        except AuthError as exc:
            if audit is not None:  # recorded before the 401 goes out
                audit.login_failed(request, exc.reason)
            raise
        if audit is not None and who is not ANONYMOUS_ADMIN:
            audit.login_ok(request, who.name)
        if who.role not in roles:
            raise ForbiddenError(f"role {who.role!r} may not do this (needs one of: {', '.join(roles)})")
        request.state.principal = who
        return who

    dependency.__annotations__["request"] = Request  # resolved here: this module uses postponed annotations
    return dependency


__all__ = [
    "MODEL_ADMIN",
    "READ",
    "ROLES",
    "SUBMIT",
    "AuthError",
    "Authenticator",
    "ForbiddenError",
    "Principal",
    "TokenStore",
    "create_token",
    "hash_token",
    "require",
]

"""``lesionlens registry keygen|sign|verify|push`` — release side of signed model versions.

An ML engineer creates an Ed25519 key pair once (``keygen``; the service trusts the public key
through ``trusted_keys`` / ``LESIONLENS_TRUSTED_KEYS``), signs each trained model package
(``sign``: manifest.json with every file's SHA-256 + manifest.sig), and uploads it to a running
service (``push``, which can activate it: a hot swap without restart). ``verify`` checks a
package against public keys before it leaves the building.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import typer

from lesionlens.cli._common import console, error_boundary
from lesionlens.errors import ConfigError, ModelError

registry_app = typer.Typer(help="Signed model versions: keys, signing, upload to a service.", no_args_is_help=True)


@registry_app.command("keygen")
def _keygen(
    private: Path = typer.Option(..., "--private", help="private key file to create (0600, never overwritten)"),
    public: Path = typer.Option(..., "--public", help="public key file to create (give it to the service)"),
) -> None:
    """Create an Ed25519 signing key pair."""
    with error_boundary():
        from lesionlens.service.signing import generate_keypair, key_fingerprint

        _, pub = generate_keypair(private, public)
        console.print(f"public key {pub} (fingerprint {key_fingerprint(pub)})", highlight=False, soft_wrap=True)


@registry_app.command("sign")
def _sign(
    package: Path = typer.Argument(..., help="model package folder (meta.json, weights, model.onnx, ...)"),
    key: Path = typer.Option(..., "--key", help="private key file (from keygen)"),
    name: str | None = typer.Option(None, "--name", help="model name (default: from meta.json)"),
    version: str | None = typer.Option(None, "--version", help="version (default: from meta.json)"),
) -> None:
    """Write manifest.json (SHA-256 of every file) and manifest.sig into the package."""
    with error_boundary():
        from lesionlens.service.registry import sign_package

        manifest, _ = sign_package(package, key, name=name, version=version)
        console.print(f"signed {manifest['name']} {manifest['version']}: {len(manifest['files'])} files",
                      highlight=False, soft_wrap=True)


@registry_app.command("verify")
def _verify(
    package: Path = typer.Argument(..., help="signed model package folder"),
    trusted: list[Path] = typer.Option(..., "--trusted-key", help="public key file (repeatable)"),
) -> None:
    """Check a signed package: signature by a trusted key, every file's hash, nothing added."""
    with error_boundary():
        from lesionlens.service.registry import ModelRegistry

        scratch = package.parent / f".verify-{package.name}"
        reg = ModelRegistry(scratch, trusted)
        try:
            mv = reg.add(package)
        finally:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
        console.print(f"OK: {mv.name} {mv.version} signed by a trusted key; every file matches", highlight=False, soft_wrap=True)


def zip_package(package: Path) -> bytes:
    """The package folder as an in-memory zip (what ``POST /v1/models`` takes)."""
    if not package.is_dir():
        raise ConfigError("model package folder not found", path=package)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(package.rglob("*")):
            if p.is_file():
                zf.write(p, f"{package.name}/{p.relative_to(package).as_posix()}")
    return buf.getvalue()


@registry_app.command("push")
def _push(
    package: Path = typer.Argument(..., help="signed model package folder"),
    url: str = typer.Option(..., "--url", help="the service, e.g. https://lesionlens.example:8000"),
    token: str = typer.Option(..., "--token", envvar="LESIONLENS_TOKEN", help="a model-admin token"),
    activate: bool = typer.Option(False, "--activate", help="activate it at once (hot swap)"),
    ca: Path | None = typer.Option(None, "--ca", help="CA / certificate file to trust for https"),
) -> None:
    """Upload a signed package to a running service (POST /v1/models)."""
    with error_boundary():
        import httpx

        data = zip_package(package)
        try:
            r = httpx.post(f"{url.rstrip('/')}/v1/models", headers={"Authorization": f"Bearer {token}"},
                           files={"package": (f"{package.name}.zip", data, "application/zip")},
                           data={"activate": str(activate).lower()}, timeout=300,
                           verify=str(ca) if ca else True)
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot reach {url}: {exc}") from None
        if r.status_code != 201:
            detail = r.json().get("detail", r.text) if r.headers.get("content-type", "").startswith(
                "application/json") else r.text
            raise ModelError(f"the service refused the package (HTTP {r.status_code}): {detail}", path=package)
        doc = r.json()
        console.print(f"uploaded {doc['name']} {doc['version']}" + (" and activated" if doc.get("active") else ""),
                      highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")

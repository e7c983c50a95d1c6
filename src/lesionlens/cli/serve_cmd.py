"""``lesionlens serve`` (HTTP API + DICOM listener + workers + outbox) and ``lesionlens token create``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from lesionlens.cli._common import console, err_console, error_boundary

log = logging.getLogger("lesionlens.serve")


def _serve(
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON settings file"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="queue, received studies, outputs, registry"),
    http_host: str | None = typer.Option(None, "--http-host"),
    http_port: int | None = typer.Option(None, "--http-port"),
    dicom_port: int | None = typer.Option(None, "--dicom-port"),
    ae_title: str | None = typer.Option(None, "--ae-title"),
    send_to: list[str] | None = typer.Option(None, "--send-to", help="AET@HOST:PORT (repeatable)"),
    allow_ae: list[str] | None = typer.Option(None, "--allow-ae", help="calling AE allowed (repeatable)"),
    stow_url: str | None = typer.Option(None, "--stow-url"),
    stable_seconds: float | None = typer.Option(None, "--stable-seconds"),
    workers: int | None = typer.Option(None, "--workers"),
    model: str | None = typer.Option(None, "--model"),
    tokens: Path | None = typer.Option(None, "--tokens", help="tokens file (lesionlens token create)"),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate: serve HTTPS"),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert"),
    predict_threads: int | None = typer.Option(None, "--predict-threads", help="inference threads of /v1/predict"),
    data_key: str | None = typer.Option(None, "--data-key",
                                        help="encrypt stored data: key spec file:PATH | env[:VAR] | hook:MOD:FN"),
    audit_key_file: Path | None = typer.Option(None, "--audit-key-file", help="HMAC key of the audit chain"),
    deid_key_file: Path | None = typer.Option(None, "--deid-key-file",
                                              help="key of de-identified exports (?deid=true on findings and sr)"),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth",
                                          help="serve WITHOUT authentication (local tests only)"),
) -> None:
    """Run the service until SIGTERM / Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with error_boundary():
        from lesionlens.service.runtime import build_runtime
        from lesionlens.service.settings import load_settings

        flags: dict[str, Any] = {"data_dir": data_dir, "http_host": http_host, "http_port": http_port,
                                 "dicom_port": dicom_port, "ae_title": ae_title, "send_to": send_to,
                                 "allow_ae": allow_ae, "stow_url": stow_url, "stable_seconds": stable_seconds,
                                 "workers": workers, "model": model, "tokens": tokens,
                                 "tls_cert": tls_cert, "tls_key": tls_key, "predict_threads": predict_threads,
                                 "data_key": data_key, "audit_key_file": audit_key_file,
                                 "deid_key_file": deid_key_file,
                                 "insecure_no_auth": True if insecure_no_auth else None}
        settings = load_settings(config, flags=flags)
        if settings.insecure_no_auth and settings.tokens is None:
            err_console.print("[bold red]WARNING: --insecure-no-auth: every request is served as admin "
                              "WITHOUT authentication. Never expose this instance.[/]")
            log.warning("AUTHENTICATION DISABLED (--insecure-no-auth)")
        runtime = build_runtime(settings)
        run_service(settings, runtime)


def run_service(settings: Any, runtime: Any) -> None:
    """Start the runtime, serve HTTP in this thread (uvicorn handles SIGTERM/SIGINT), then stop."""
    import signal

    import uvicorn

    from lesionlens.service.app import create_app

    app = create_app(settings, runtime)
    # uvicorn catches SIGTERM/SIGINT, shuts down, then re-raises the signal to the handler found
    # at start; a no-op handler there lets us stop the runtime and exit 0 instead of dying.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: log.info("signal %d: shutting down", signum))
    runtime.start()
    try:
        if runtime.listener is not None:
            console.print(f"DICOM listener {settings.ae_title} on port {runtime.listener.port}")
        kw: dict[str, Any] = {}
        if settings.tls_cert is not None:
            kw = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        uvicorn.Server(uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                                      log_level="info", **kw)).run()
    finally:
        runtime.stop()
        console.print("lesionlens serve stopped")


def _token_create(
    role: str = typer.Option(..., "--role", help="viewer | radiologist | model-admin | admin | service"),
    tokens: Path = typer.Option(..., "--tokens", help="tokens file (created when missing)"),
    name: str | None = typer.Option(None, "--name", help="a label for the token"),
) -> None:
    """Create a token; it is printed once (only its SHA-256 is stored)."""
    with error_boundary():
        from lesionlens.service.auth import create_token

        typer.echo(create_token(tokens, role, name))


def register(app: typer.Typer) -> None:
    app.command("serve")(_serve)
    token_app = typer.Typer(help="API tokens of the service.", no_args_is_help=True)
    token_app.command("create")(_token_create)
    app.add_typer(token_app, name="token")

"""``serve`` over TLS: a self-signed certificate for 127.0.0.1, https only, tokens still enforced;
and the settings refuse half a TLS configuration."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lesionlens.errors import ConfigError
from lesionlens.service.settings import load_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed EC P-256 certificate for IP 127.0.0.1 (SAN) → (cert.pem, key.pem) in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.integration
@pytest.mark.slow
def test_serve_over_tls(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("cryptography")
    httpx = pytest.importorskip("httpx")
    from lesionlens.service.auth import create_token

    cert, key = _self_signed(tmp_path, "server")
    other_ca, _ = _self_signed(tmp_path, "other")
    tokens = tmp_path / "tokens.json"
    tok = create_token(tokens, "viewer")
    http_port, dicom_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "lesionlens.cli.main", "serve", "--data-dir", str(tmp_path / "data"),
           "--http-port", str(http_port), "--dicom-port", str(dicom_port), "--workers", "0",
           "--tokens", str(tokens)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LESIONLENS_TLS_CERT": str(cert), "LESIONLENS_TLS_KEY": str(key)}
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    https, plain = f"https://127.0.0.1:{http_port}", f"http://127.0.0.1:{http_port}"
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{https}/healthz", verify=trust, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            try:  # fail fast (not at the deadline) when the port serves plain http
                code = httpx.get(f"{plain}/healthz", timeout=1).status_code
                pytest.fail(f"serve answered plain http ({code}): TLS not enabled\n{log_path.read_text()}")
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not answer https /healthz\n" + log_path.read_text()
            time.sleep(0.3)

        with httpx.Client(base_url=https, verify=trust, timeout=10) as client:
            r = client.get("/healthz")
            assert r.status_code == 200 and r.json()["status"] == "ok"
            assert r.http_version == "HTTP/1.1" and client.get("/readyz").status_code == 200
            # tokens are still enforced over TLS
            r = client.get("/v1/models")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            r = client.get("/v1/models", headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 200 and r.json()["serving"]["name"]

        # plain http on the TLS port: no HTTP answer at all
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/healthz", timeout=5)

        # a client that trusts another CA (and one that trusts the system store) refuses the server
        for verify in (ssl.create_default_context(cafile=str(other_ca)), True):
            with pytest.raises(httpx.ConnectError) as info:
                httpx.get(f"{https}/healthz", verify=verify, timeout=5)
            assert "CERTIFICATE_VERIFY_FAILED" in str(info.value), info.value
        # the certificate names IP 127.0.0.1 only: another name (sent as SNI, checked) does not match
        with httpx.Client(verify=trust, timeout=5) as client, pytest.raises(httpx.ConnectError) as info:
            client.get(f"{https}/healthz", extensions={"sni_hostname": "localhost"})
        assert "mismatch" in str(info.value), info.value

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "lesionlens serve stopped" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("given", ["tls_cert", "tls_key"])
@pytest.mark.parametrize("where", ["file", "env", "flag"])
def test_half_a_tls_configuration_is_refused(tmp_path: Path, given: str, where: str) -> None:
    path = str(tmp_path / "x.pem")
    cfg = None
    env: dict[str, str] = {}
    flags: dict[str, str] = {}
    if where == "file":
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"{given}: {path}\n")
    elif where == "env":
        env = {f"LESIONLENS_{given.upper()}": path}
    else:
        flags = {given: path}
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env=env, flags=flags)
    assert "tls_cert" in str(info.value) and "tls_key" in str(info.value)


def test_both_tls_fields_are_accepted(tmp_path: Path) -> None:
    env = {"LESIONLENS_TLS_CERT": str(tmp_path / "c.pem"), "LESIONLENS_TLS_KEY": str(tmp_path / "k.pem")}
    with pytest.raises(ConfigError, match="'tls_cert': file not found"):  # named before anything starts
        load_settings(env=env)
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    s = load_settings(env=env)
    assert (s.tls_cert, s.tls_key) == (tmp_path / "c.pem", tmp_path / "k.pem")

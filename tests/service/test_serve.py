"""A real ``lesionlens serve`` process on free loopback ports: /healthz, C-ECHO, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    from lesionlens.net.scu import echo
    from lesionlens.service.auth import create_token

    tokens = tmp_path / "tokens.json"
    tok = create_token(tokens, "viewer")
    http_port, dicom_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "lesionlens.cli.main", "serve", "--data-dir", str(tmp_path / "data"),
           "--http-port", str(http_port), "--dicom-port", str(dicom_port), "--ae-title", "LLTEST",
           "--workers", "1", "--stable-seconds", "1", "--tokens", str(tokens)]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not answer /healthz"
            time.sleep(0.3)
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert httpx.get(f"{base}/v1/models").status_code == 401
        r = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 200 and r.json()["serving"]["name"]
        assert echo(f"LLTEST@127.0.0.1:{dicom_port}") == 0x0000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        out = (tmp_path / "serve.log").read_text()
        assert "lesionlens serve stopped" in out
        with socket.socket() as s:  # both ports released
            assert s.connect_ex(("127.0.0.1", dicom_port)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_serve_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "lesionlens.cli.main", "serve", "--data-dir", str(tmp_path / "d"),
                        "--http-port", str(_free_port()), "--dicom-port", str(_free_port())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--tokens" in r.stderr and "insecure-no-auth" in r.stderr

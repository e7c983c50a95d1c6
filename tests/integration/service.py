"""A real ``lesionlens serve`` process for integration tests: free loopback ports, its own data
folder and tokens, readiness wait, SIGTERM or ``kill -9`` of the whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from integration.orthanc import free_port


class ServiceProcess:
    """``ServiceProcess(workdir, send_to=[...], extra=[...]).start()``; ``token`` is an admin token.

    Ports and the data folder are kept across stop()/start() (a restart is the same service).
    """

    def __init__(self, workdir: str | Path, *, ae_title: str = "LLTEST", send_to: list[str] | None = None,
                 stow_url: str | None = None, stable_seconds: float = 1.0, workers: int = 1,
                 extra: list[str] | None = None, env: dict[str, str] | None = None):
        from lesionlens.service.auth import create_token

        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.tokens = self.workdir / "tokens.json"
        self.token = create_token(self.tokens, "admin", "tests")
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.args = ["--data-dir", str(self.data_dir), "--http-port", str(self.http_port),
                     "--dicom-port", str(self.dicom_port), "--ae-title", ae_title, "--tokens", str(self.tokens),
                     "--stable-seconds", str(stable_seconds), "--workers", str(workers)]
        for dest in send_to or []:
            self.args += ["--send-to", dest]
        if stow_url:
            self.args += ["--stow-url", stow_url]
        self.args += list(extra or [])
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = self.workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def peer(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "lesionlens.cli.main", "serve", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200 and self._dicom_open():
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"serve was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def _dicom_open(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait; SIGKILL of the group after ``timeout_s``. → exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def kill9(self) -> None:
        """``kill -9`` of the service and every process it started (workers included)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", headers=self.headers, timeout=60, **kw)

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.5, what: str = "condition") -> Any:
    """Poll ``predicate()`` until truthy (→ its value) or raise AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


__all__ = ["ServiceProcess", "wait_for"]

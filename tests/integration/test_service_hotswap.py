"""Signed model versions on a running ``lesionlens serve``: released with the ``registry`` CLI,
activated and rolled back while /v1/predict is under load — 0 failed requests; a tampered
package is refused with a clear error and the serving model stays."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from integration.service import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lesionlens.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def _png() -> bytes:
    from PIL import Image

    from lesionlens.synth.ct import CTPhantomConfig, generate_ct

    ph = generate_ct(3, CTPhantomConfig(matrix=(256, 256), n_slices=16, n_nodules=(2, 2), p_no_nodules=0.0,
                                        nodule_diameter_mm=(10.0, 16.0)))
    k = int(np.argmax((ph.labels > 0).sum(axis=(1, 2))))
    img = np.clip((ph.hu[k].astype(np.float32) + 1400.0) / 1600.0 * 255.0, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_activate_and_roll_back_under_load_without_a_failed_request(tmp_path: Path) -> None:
    import httpx

    from lesionlens.engine.predict import PACKAGED_MODELS

    keys = tmp_path / "keys"
    r = _cli("registry", "keygen", "--private", str(keys / "release.key"), "--public", str(keys / "release.pub"))
    assert r.returncode == 0 and "fingerprint" in r.stdout, r.stderr
    packages = {}
    for version in ("1.0.0", "2.0.0"):
        pkg = tmp_path / f"pkg-{version}"
        shutil.copytree(PACKAGED_MODELS / "default", pkg)
        r = _cli("registry", "sign", str(pkg), "--key", str(keys / "release.key"), "--version", version)
        assert r.returncode == 0 and f"signed lesionlens-ct-nodule-n {version}" in r.stdout, r.stdout + r.stderr
        packages[version] = pkg
    r = _cli("registry", "verify", str(packages["1.0.0"]), "--trusted-key", str(keys / "release.pub"))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr

    svc = ServiceProcess(tmp_path / "svc", workers=0,
                         env={"LESIONLENS_TRUSTED_KEYS": str(keys / "release.pub"),
                              "LESIONLENS_PREDICT_THREADS": "1"}).start()
    try:
        push, opts = ["registry", "push"], ["--url", svc.url, "--token", svc.token]
        r = _cli(*push, str(packages["1.0.0"]), *opts, "--activate")
        assert r.returncode == 0 and "activated" in r.stdout, r.stdout + r.stderr
        r = _cli(*push, str(packages["2.0.0"]), *opts)
        assert r.returncode == 0, r.stderr
        assert svc.get("/v1/models").json()["serving"]["registry_version"] == "1.0.0"

        png = _png()
        stop = threading.Event()
        seen: list[list[str]] = [[] for _ in range(3)]
        failures: list[str] = []

        def client(i: int) -> None:
            with httpx.Client(headers=svc.headers, timeout=60) as c:
                while not stop.is_set():
                    try:
                        resp = c.post(f"{svc.url}/v1/predict", files={"image": ("x.png", png, "image/png")},
                                      data={"conf": "0.2"})
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")
                    else:
                        seen[i].append(resp.json()["model"]["registry_version"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        try:
            import time

            def requests_done() -> int:
                return sum(map(len, seen))

            def wait_more(n: int) -> None:
                target = requests_done() + n
                deadline = time.monotonic() + 60
                while requests_done() < target and time.monotonic() < deadline:
                    time.sleep(0.05)

            wait_more(6)
            act = svc.post("/v1/models/lesionlens-ct-nodule-n/2.0.0/activate")
            assert act.status_code == 200 and act.json()["serving"]["registry_version"] == "2.0.0", act.text
            wait_more(6)
            rb = svc.post("/v1/models/lesionlens-ct-nodule-n/rollback")
            assert rb.status_code == 200 and rb.json()["version"] == "1.0.0", rb.text
            wait_more(6)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        everything = [v for s in seen for v in s]
        assert "2.0.0" in everything and everything.count("1.0.0") >= 6
        for s in seen:  # each client: 1.0.0 … 2.0.0 … 1.0.0, never interleaved back and forth
            collapsed = [v for k, v in enumerate(s) if k == 0 or s[k - 1] != v]
            assert collapsed in (["1.0.0", "2.0.0", "1.0.0"], ["1.0.0", "2.0.0"], ["2.0.0", "1.0.0"], ["1.0.0"]), s

        # a tampered package (weights changed after signing) is refused; the serving model stays
        bad = tmp_path / "pkg-3.0.0"
        shutil.copytree(packages["2.0.0"], bad)
        r = _cli("registry", "sign", str(bad), "--key", str(keys / "release.key"), "--version", "3.0.0")
        assert r.returncode == 0
        onnx = bad / "model.onnx"
        blob = bytearray(onnx.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        onnx.write_bytes(bytes(blob))
        r = _cli(*push, str(bad), *opts, "--activate")
        assert r.returncode == 2 and "refused" in r.stderr and "model.onnx" in r.stderr, r.stdout + r.stderr
        assert svc.get("/v1/models").json()["serving"]["registry_version"] == "1.0.0"
    finally:
        svc.stop()

"""Service benchmark: ``POST /v1/predict`` latency and throughput of a real ``lesionlens serve``.

Starts ``lesionlens serve`` as a subprocess (``--workers 0``: API only, no job workers; free
loopback ports; a fresh data folder and tokens file under ``--workdir``), waits for ``/readyz``,
then sends one 512×512 image — by default an 8-bit greyscale PNG of a synthetic PA chest
radiograph (``lesionlens.synth.xray``); with ``--input dicom`` one 512×512 CT slice in DICOM
(``lesionlens.synth.ct``) — to ``POST /v1/predict`` at each ``--concurrency`` level (client
threads, one httpx connection each). Each level first sends a warm-up (``max(--warmup, c)``
requests, not counted), then ``--requests`` requests, and prints per level: requests, failures
(non-200 or transport errors), p50/p90/p99 latency (client side, ms), requests/s, the server's
own per-request stage time (mean of the ``timings`` it reports) and the server process's CPU
seconds per request (from /proc). Also prints the CPU count, the load average before and after
(other jobs on the machine skew the figures; the client shares the CPUs with the server), the
serving model's identity and the serve command.

The default model is a CT 2.5D model: the route maps an 8-bit PNG into the model's HU window
(see ``lesionlens.service.routes.predict``), so the PNG figures time the whole path, whatever
the image shows. ``--predict-threads`` repeats everything on a fresh server per value (env
``LESIONLENS_PREDICT_THREADS``, the ONNX Runtime intra-op threads; ``default`` leaves it unset).
Usage::

    python bench/bench_service.py [--concurrency 1 4 16] [--requests 50 100 100] [--warmup 4]
        [--input png|dicom] [--size 512] [--predict-threads default 1 2] [--model default]
        [--workdir ./bench-work] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lesionlens.service.auth import create_token

READY_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- the test image


def make_png(size: int, seed: int = 3) -> bytes:
    """An 8-bit greyscale PNG (size × size) of a synthetic chest radiograph with one nodule."""
    from PIL import Image

    from lesionlens.synth.xray import ChestXrayConfig, generate_chest_xray

    ph = generate_chest_xray(seed, ChestXrayConfig(rows=size, cols=size, nodules=1))
    grey = np.clip(ph.brightness() * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (R, C) uint8, bright = dense
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def make_dicom(size: int, work: Path, seed: int = 7) -> bytes:
    """One CT slice (size × size, DICOM Part 10) from a short synthetic CT series: the middle one."""
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    folder = work / "ct"
    write_ct_study(generate_ct(seed, CTPhantomConfig(matrix=(size, size), n_slices=8)), folder)
    files = sorted(folder.glob("CT_*.dcm"))
    return files[len(files) // 2].read_bytes()


# ----------------------------------------------------------------------------- the server


class Server:
    """``lesionlens serve --workers 0`` on free loopback ports, its output in ``work/serve.log``."""

    def __init__(self, work: Path, model: str, predict_threads: int | None):
        self.work = work
        self.tokens = work / "tokens.json"
        self.token = create_token(self.tokens, "radiologist", "bench")
        self.http_port, self.dicom_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.cmd = [sys.executable, "-m", "lesionlens.cli.main", "serve", "--data-dir", str(work / "data"),
                    "--http-port", str(self.http_port), "--dicom-port", str(self.dicom_port),
                    "--workers", "0", "--model", model, "--tokens", str(self.tokens)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("LESIONLENS_PREDICT_THREADS", None)
        if predict_threads is not None:
            self.env["LESIONLENS_PREDICT_THREADS"] = str(predict_threads)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def describe(self) -> str:
        env = "" if "LESIONLENS_PREDICT_THREADS" not in self.env else \
            f"LESIONLENS_PREDICT_THREADS={self.env['LESIONLENS_PREDICT_THREADS']} "
        return env + " ".join(self.cmd)

    def __enter__(self) -> Server:
        self._log = open(self.work / "serve.log", "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                self.__exit__()
                raise SystemExit(f"serve not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.3)
        print(f"serve ready in {time.monotonic() - t0:.1f} s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()

    def log_tail(self, n: int = 3000) -> str:
        p = self.work / "serve.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of the serve process so far (NaN where /proc is missing)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()  # type: ignore[union-attr]
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            return float("nan")

    def models(self) -> dict[str, Any]:
        r = httpx.get(f"{self.base}/v1/models", headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out


# ----------------------------------------------------------------------------- the load


@dataclass
class Level:
    """The figures of one concurrency level (latencies in ms, client side)."""

    predict_threads: str
    concurrency: int
    requests: int
    failures: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    rps: float
    server_ms: float  # mean of the stage timings the server reports (decode + model)
    server_cpu_s_per_req: float
    wall_s: float
    errors: list[str] = field(default_factory=list)


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, np.float64), q)) if xs else float("nan")


def run_level(srv: Server, payload: tuple[str, bytes, str], concurrency: int, n: int, warmup: int,
              conf: float, iou: float) -> tuple[Level, dict[str, Any] | None]:
    """``n`` requests from ``concurrency`` threads (one keep-alive connection each)."""
    headers = {"Authorization": f"Bearer {srv.token}"}
    files = {"image": payload}
    data = {"conf": str(conf), "iou": str(iou)}
    lock = threading.Lock()
    latencies: list[float] = []
    server_s: list[float] = []
    errors: list[str] = []
    last: list[dict[str, Any]] = []
    todo = [0]

    def worker(budget: int, record: bool) -> None:
        with httpx.Client(base_url=srv.base, headers=headers, timeout=300) as client:
            while True:
                with lock:
                    if todo[0] >= budget:
                        return
                    todo[0] += 1
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/predict", files=files, data=data)
                    dt = time.perf_counter() - t0
                    ok = r.status_code == 200
                    why = "" if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                    body = r.json() if ok else None
                except httpx.HTTPError as exc:
                    dt, ok, why, body = time.perf_counter() - t0, False, f"{type(exc).__name__}: {exc}", None
                if not record:
                    continue
                with lock:
                    if ok:
                        latencies.append(dt * 1000.0)
                        server_s.append(sum(body["timings"].values()))  # type: ignore[index]
                        if not last:
                            last.append(body)  # type: ignore[arg-type]
                    else:
                        errors.append(why)

    def burst(budget: int, record: bool) -> float:
        todo[0] = 0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as ex:
            for f in [ex.submit(worker, budget, record) for _ in range(concurrency)]:
                f.result()
        return time.perf_counter() - t0

    burst(max(warmup, concurrency), record=False)
    cpu0 = srv.cpu_seconds()
    wall = burst(n, record=True)
    cpu = srv.cpu_seconds() - cpu0
    ok = len(latencies)
    level = Level(predict_threads="", concurrency=concurrency, requests=n, failures=n - ok,
                  p50_ms=_percentile(latencies, 50), p90_ms=_percentile(latencies, 90),
                  p99_ms=_percentile(latencies, 99), rps=ok / wall if wall > 0 else float("nan"),
                  server_ms=statistics.fmean(server_s) * 1000.0 if server_s else float("nan"),
                  server_cpu_s_per_req=cpu / n, wall_s=wall, errors=sorted(set(errors))[:5])
    return level, (last[0] if last else None)


HEADER = (f"{'threads':>8} {'conc':>5} {'reqs':>5} {'fail':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'req/s':>7} {'srv ms':>7} {'srv cpu s/req':>13}")


def row(lv: Level) -> str:
    return (f"{lv.predict_threads:>8} {lv.concurrency:>5} {lv.requests:>5} {lv.failures:>5} {lv.p50_ms:8.1f} "
            f"{lv.p90_ms:8.1f} {lv.p99_ms:8.1f} {lv.rps:7.2f} {lv.server_ms:7.1f} {lv.server_cpu_s_per_req:13.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, nargs="+", default=None,
                    help="measured requests per level: one value for all, or one per --concurrency "
                         "(default: 50 at c=1, else 100)")
    ap.add_argument("--warmup", type=int, default=4, help="uncounted requests per level (at least c)")
    ap.add_argument("--input", choices=("png", "dicom"), default="png")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--model", default="default")
    ap.add_argument("--predict-threads", nargs="+", default=["default"],
                    help="ONNX Runtime intra-op threads of the server, one run per value ('default': unset)")
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"),
                    help="parent of the scratch folder (default: ./bench-work; never the system temp)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    reqs = args.requests or [50 if c == 1 else 100 for c in args.concurrency]
    if len(reqs) == 1:
        reqs = reqs * len(args.concurrency)
    if len(reqs) != len(args.concurrency):
        raise SystemExit("--requests takes one value, or one per --concurrency level")
    threads: list[int | None] = [None if t == "default" else int(t) for t in args.predict_threads]

    created = not args.workdir.exists()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-service-", dir=args.workdir))
    results: list[Level] = []
    meta: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": loadavg(), "input": args.input,
                            "size": args.size, "conf": args.conf, "iou": args.iou, "servers": []}
    try:
        if args.input == "png":
            payload = ("bench.png", make_png(args.size), "image/png")
        else:
            payload = ("bench.dcm", make_dicom(args.size, work), "application/dicom")
        print(f"input: {args.input} {args.size}x{args.size}, {len(payload[1]) / 1024:.0f} KiB; "
              f"conf {args.conf}, iou {args.iou}")
        print(f"cpus {os.cpu_count()}, load average {loadavg()}")
        for t in threads:
            label = "default" if t is None else str(t)
            sub = work / f"threads-{label}"
            sub.mkdir()
            with Server(sub, args.model, t) as srv:
                serving = srv.models().get("serving")
                print(f"serve: {srv.describe()}")
                print(f"serving model: {serving}")
                info: dict[str, Any] = {"predict_threads": label, "command": srv.describe(), "model": serving}
                print(HEADER)
                for c, n in zip(args.concurrency, reqs, strict=True):
                    lv, body = run_level(srv, payload, c, n, args.warmup, args.conf, args.iou)
                    lv.predict_threads = label
                    results.append(lv)
                    print(row(lv), flush=True)
                    for e in lv.errors:
                        print(f"    error: {e}")
                    if body is not None and "response_example" not in info:
                        info["response_example"] = {k: body[k] for k in ("model", "image", "count", "timings")}
                meta["servers"].append(info)
                if "response_example" in info:
                    ex = info["response_example"]
                    print(f"response: model {ex['model']}, image {ex['image']}, {ex['count']} findings")
        meta["load_after"] = loadavg()
        print(f"load average after {meta['load_after']}")
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**meta, "levels": [asdict(r) for r in results]}, indent=2))
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created:
            try:
                args.workdir.rmdir()
            except OSError:
                pass


if __name__ == "__main__":
    main()

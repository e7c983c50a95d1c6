"""Unauthenticated probes (``/healthz``: the process answers; ``/readyz``: a model is loaded and
the queue answers) and the Prometheus ``/metrics`` (token with any role)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from lesionlens import __version__
from lesionlens.service.auth import READ, require
from lesionlens.service.metrics import CONTENT_TYPE
from lesionlens.service.routes.common import runtime

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.get("/readyz", summary="Readiness")
def readyz(request: Request) -> JSONResponse:
    rt = runtime(request)
    checks: dict[str, Any] = {"model": rt.ready}
    try:
        rt.queue.stats()
        checks["queue"] = True
    except Exception as exc:  # report, do not raise: this is a probe
        checks["queue"] = f"{type(exc).__name__}: {exc}"
    ok = all(v is True for v in checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request, _who: Any = Depends(require(*READ))) -> Response:
    return Response(runtime(request).metrics.render(), media_type=CONTENT_TYPE)

"""The FastAPI app factory: ``create_app(settings, runtime)``.

Routers live in :mod:`lesionlens.service.routes`; this module wires them, maps every
:class:`~lesionlens.errors.LesionLensError` to one HTTP status (the HTTP boundary), bounds upload
sizes before the body is read, and times every request for ``/metrics``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from lesionlens import __version__
from lesionlens.errors import (
    ConfigError,
    DataFormatError,
    DicomReadError,
    LesionLensError,
    ModelError,
    UnsupportedInputError,
)
from lesionlens.service.auth import AuthError, ForbiddenError
from lesionlens.service.jobs import JobInputError, JobNotFoundError, QueueFullError
from lesionlens.service.registry import ModelVerificationError
from lesionlens.service.routes.common import (
    BadUploadError,
    DeidUnavailableError,
    NotFoundError,
    UploadTooLargeError,
)
from lesionlens.service.runtime import Runtime
from lesionlens.service.settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30

# most specific first: the first isinstance match wins
_STATUS: tuple[tuple[type[LesionLensError], int], ...] = (
    (AuthError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (JobNotFoundError, 404),
    (UploadTooLargeError, 413),
    (QueueFullError, 503),
    (ModelVerificationError, 422),
    (BadUploadError, 422),
    (UnsupportedInputError, 422),
    (DicomReadError, 422),
    (DataFormatError, 422),
    (JobInputError, 422),
    (ConfigError, 422),
    (ModelError, 409),
    (DeidUnavailableError, 409),
)


def status_for(exc: LesionLensError) -> int:
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    from lesionlens.net.errors import InvalidInstanceError

    return 422 if isinstance(exc, InvalidInstanceError) else 500


async def _lesionlens_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LesionLensError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="lesionlens"'
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": exc.code, "detail": exc.reason}, status_code=status, headers=headers)


def create_app(settings: Settings, runtime: Runtime) -> FastAPI:
    """The HTTP API over ``runtime``'s components (nothing is started here)."""
    from lesionlens.service.routes import health, models, predict, studies

    app = FastAPI(title="LesionLens", version=__version__,
                  description="AI-assisted lesion detection: predict, studies, jobs, models.")
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.authenticator = runtime.authenticator
    app.add_exception_handler(LesionLensError, _lesionlens_error)
    for r in (health.router, predict.router, studies.router, models.router):
        app.include_router(r)
    limit = settings.max_upload_bytes + 64 * 1024  # multipart framing

    @app.middleware("http")
    async def bound_and_time(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            response: Response = JSONResponse(
                {"error": "too-large", "detail": f"request body larger than {settings.max_upload_mb:g} MB"},
                status_code=413)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        runtime.metrics.observe_request(request.method, name, response.status_code, time.perf_counter() - t0)
        return response

    return app


__all__ = ["create_app", "status_for"]

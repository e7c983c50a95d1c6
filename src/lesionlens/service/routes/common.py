"""Shared pieces of the routers: the runtime accessor, HTTP-facing errors, bounded upload reads."""

from __future__ import annotations

from typing import Any

from fastapi import Request, UploadFile

from lesionlens.errors import LesionLensError
from lesionlens.service.runtime import Runtime


class NotFoundError(LesionLensError):
    """The addressed resource does not exist (HTTP 404)."""

    code = "not-found"


class UploadTooLargeError(LesionLensError):
    """The upload exceeds ``max_upload_mb`` (HTTP 413)."""

    code = "too-large"


class BadUploadError(LesionLensError):
    """The upload cannot be decoded (HTTP 422)."""

    code = "bad-upload"


class DeidUnavailableError(LesionLensError):
    """A de-identified copy was asked for but is not offered (HTTP 409)."""

    code = "deid-unavailable"


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def read_bounded(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes; :class:`UploadTooLargeError` past ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await upload.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise UploadTooLargeError(f"upload {upload.filename!r} is larger than {limit // (1024 * 1024)} MB")
        chunks.append(chunk)
    return b"".join(chunks)


def job_view(job: Any) -> dict[str, Any]:
    d = dict(job.to_dict())
    d["files"] = len(d.get("files") or [])
    return d

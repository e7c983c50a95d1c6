"""Models: list, upload a signed package (zip), activate a version, roll back — hot swapped
into the serving model without a restart (requests in flight finish on the old one)."""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from lesionlens.errors import LesionLensError, ModelError
from lesionlens.service.auth import MODEL_ADMIN, READ, require
from lesionlens.service.routes.common import BadUploadError, NotFoundError, read_bounded, runtime
from lesionlens.service.runtime import Runtime

router = APIRouter(tags=["models"])


def describe(rt: Runtime) -> dict[str, Any]:
    active = {}
    for mv in rt.registry.versions():
        if mv.name not in active:
            cur = rt.registry.active(mv.name)
            active[mv.name] = cur.version if cur else None
    serving = rt.active.current
    return {"serving": serving.model.identity if serving else None,
            "models": [{"name": v.name, "version": v.version, "sha256": v.sha256, "created": v.created,
                        "active": active.get(v.name) == v.version, "metrics": v.metrics}
                       for v in rt.registry.versions()]}


def _extract(data: bytes, dest: Path) -> Path:
    """Safe unzip (no absolute paths, no ``..``) → the package folder (the single top folder if any)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename).parts
                if info.filename.startswith("/") or ".." in parts:
                    raise BadUploadError(f"unsafe path in the package zip: {info.filename!r}")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise BadUploadError(f"the model upload is not a zip: {exc}") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith("__MACOSX")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def add_package(rt: Runtime, data: bytes, activate: bool) -> dict[str, Any]:
    stage = rt.tmp_dir / f"model-{uuid.uuid4().hex}"
    stage.mkdir()
    try:
        mv = rt.registry.add(_extract(data, stage), activate=activate)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    swapped = rt.refresh_model(mv.name) if activate else False
    return {"name": mv.name, "version": mv.version, "sha256": mv.sha256, "active": activate, "swapped": swapped}


def activate_version(rt: Runtime, name: str, version: str) -> dict[str, Any]:
    try:
        rt.registry.get(name, version)
    except ModelError:
        raise NotFoundError(f"no registered model {name} {version}") from None
    mv = rt.registry.activate(name, version)
    swapped = rt.refresh_model(name)
    return {"name": mv.name, "version": mv.version, "swapped": swapped,
            "serving": rt.active.current.model.identity if rt.active.current else None}


def rollback(rt: Runtime, name: str) -> dict[str, Any]:
    mv = rt.registry.rollback(name)
    swapped = rt.refresh_model(name)
    return {"name": mv.name, "version": mv.version, "swapped": swapped,
            "serving": rt.active.current.model.identity if rt.active.current else None}


@router.get("/v1/models", summary="Registered model versions and the serving one")
def list_models(request: Request, _who: Any = Depends(require(*READ))) -> dict[str, Any]:
    return describe(runtime(request))


@router.post("/v1/models", status_code=201, summary="Upload a signed model package (zip)")
async def upload_model(request: Request, package: UploadFile = File(...), activate: bool = Form(False),
                       _who: Any = Depends(require(*MODEL_ADMIN))) -> JSONResponse:
    from starlette.concurrency import run_in_threadpool

    rt = runtime(request)
    data = await read_bounded(package, rt.settings.max_upload_bytes)
    old = _serving_version(rt)
    try:
        body = await run_in_threadpool(add_package, rt, data, activate)
    except LesionLensError as exc:  # a refused package is an attempted change: recorded too
        rt.audit.model_changed(request, _who.name, package.filename or "upload", old, f"refused: {exc.reason}",
                               ok=False)
        raise
    rt.audit.model_changed(request, _who.name, body["name"], old,
                           f"{body['version']} (uploaded" + (", activated)" if activate else ")"))
    return JSONResponse(body, status_code=201)


def _serving_version(rt: Runtime) -> str | None:
    cur = rt.active.current
    if cur is None:
        return None
    ident = cur.model.identity
    return str(ident.get("registry_version") or ident.get("version") or "")


@router.post("/v1/models/{name}/{version}/activate", summary="Activate a version (hot swap)")
def activate(name: str, version: str, request: Request,
             _who: Any = Depends(require(*MODEL_ADMIN))) -> dict[str, Any]:
    rt = runtime(request)
    old = _serving_version(rt)
    body = activate_version(rt, name, version)
    rt.audit.model_changed(request, _who.name, name, old, f"{version} (activated)")
    return body


@router.post("/v1/models/{name}/rollback", summary="Re-activate the previous version (hot swap)")
def do_rollback(name: str, request: Request, _who: Any = Depends(require(*MODEL_ADMIN))) -> dict[str, Any]:
    rt = runtime(request)
    old = _serving_version(rt)
    body = rollback(rt, name)
    rt.audit.model_changed(request, _who.name, name, old, f"{body['version']} (rolled back)")
    return body

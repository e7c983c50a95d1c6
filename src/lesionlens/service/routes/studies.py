"""Studies and jobs: ``POST /v1/studies`` (DICOM files or a zip → stored → one job per study),
``GET /v1/jobs/{id}``, and a finished study's outputs (findings, report.html/pdf, SR)."""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from lesionlens.errors import LesionLensError
from lesionlens.service.auth import READ, SUBMIT, require
from lesionlens.service.jobs import JobNotFoundError, QueueFullError
from lesionlens.service.routes.common import (
    BadUploadError,
    DeidUnavailableError,
    NotFoundError,
    job_view,
    read_bounded,
    runtime,
)
from lesionlens.service.runtime import Runtime

router = APIRouter(tags=["studies"])

MAX_ZIP_MEMBERS = 20_000


def _blobs(name: str, data: bytes, limit: int) -> list[tuple[str, bytes]]:
    """An upload → (name, bytes) of each DICOM candidate (zip members expanded, bounded)."""
    if data[:4] != b"PK\x03\x04":
        return [(name, data)]
    out = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_ZIP_MEMBERS:
                raise BadUploadError(f"zip {name!r} has more than {MAX_ZIP_MEMBERS} members")
            total = 0
            for info in infos:
                total += info.file_size
                if total > limit:
                    from lesionlens.service.routes.common import UploadTooLargeError

                    raise UploadTooLargeError(f"zip {name!r} expands past the upload limit")
                out.append((f"{name}:{info.filename}", zf.read(info)))
    except zipfile.BadZipFile as exc:
        raise BadUploadError(f"{name!r} is not a valid zip: {exc}") from None
    return out


def ingest(rt: Runtime, uploads: list[tuple[str, bytes]], source: str) -> dict[str, Any]:
    """Store every DICOM instance, then one job per study → {jobs, stored, skipped, instances}."""
    if rt.queue.queue_full():
        raise QueueFullError("the job queue is full; retry later")
    by_study: dict[str, int] = defaultdict(int)
    skipped: list[dict[str, str]] = []
    instances: list[dict[str, str]] = []
    for name, data in uploads:
        for member, blob in _blobs(name, data, rt.settings.max_upload_bytes):
            try:
                inst = rt.store.put(blob, source=f"upload:{source}")
            except LesionLensError as exc:
                skipped.append({"file": member, "reason": exc.reason})
                continue
            by_study[inst.study_uid] += 1
            instances.append({"sop_class_uid": inst.sop_class_uid, "sop_instance_uid": inst.sop_instance_uid})
    if not by_study:
        raise BadUploadError("no DICOM instance could be stored: " +
                             "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5]))
    jobs = []
    for study_uid in sorted(by_study):
        sops = [p.stem for p in rt.store.iter_instances(study_uid)]
        jid = rt.queue.submit(study_uid, rt.store.study_dir(study_uid), source="upload", sop_uids=sops,
                              meta={"submitted_by": source})
        jobs.append({"job_id": jid, "study_uid": study_uid, "instances": len(sops)})
    return {"job_id": jobs[0]["job_id"], "jobs": jobs, "stored": sum(by_study.values()), "skipped": skipped,
            "instances": instances}


def stow_response(body: dict[str, Any]) -> dict[str, Any]:
    """A STOW-RS response (DICOM JSON, PS3.18 §10.5.3): ReferencedSOPSequence for what was stored,
    FailedSOPSequence (reason 0xC000, "cannot understand") for each part that was not."""
    def ui(v: str) -> dict[str, Any]:
        return {"vr": "UI", "Value": [v]}

    doc: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": [
        {"00081150": ui(i["sop_class_uid"]), "00081155": ui(i["sop_instance_uid"])} for i in body["instances"]]}}
    if body["skipped"]:
        doc["00081198"] = {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [0xC000]}}
                                                 for _ in body["skipped"]]}
    return doc


async def _stow_parts(request: Request, limit: int) -> list[tuple[str, bytes]]:
    """The parts of a STOW-RS request body (multipart/related; type="application/dicom"), bounded."""
    from lesionlens.net.dicomweb import iter_multipart, multipart_boundary
    from lesionlens.net.errors import DicomWebError
    from lesionlens.service.routes.common import UploadTooLargeError

    try:
        boundary = multipart_boundary(request.headers.get("content-type", ""), "the STOW-RS request")
    except DicomWebError as exc:
        raise BadUploadError(str(exc)) from None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise UploadTooLargeError(f"the STOW-RS request is larger than {limit // (1024 * 1024)} MB")
    try:
        return [(f"part-{n}", data) for n, (_h, data) in enumerate(iter_multipart([bytes(body)], boundary), 1)]
    except DicomWebError as exc:
        raise BadUploadError(f"malformed STOW-RS body: {exc}") from None


def finished_output(rt: Runtime, study_uid: str) -> Path:
    """The committed output folder of the study's latest finished job."""
    from lesionlens.service.worker import load_outcome

    for job in rt.queue.list("done", study_uid=study_uid, limit=5):
        outcome = load_outcome(job.id, rt.out_root)
        if outcome is not None:
            return outcome.out_dir
    raise NotFoundError(f"study {study_uid} has no finished job")


def study_file(rt: Runtime, study_uid: str, name: str) -> Path:
    folder = finished_output(rt, study_uid)
    matches = sorted(folder.glob(name)) if any(c in name for c in "*?") else [folder / name]
    matches = [m for m in matches if m.is_file()]
    if not matches:
        raise NotFoundError(f"study {study_uid}: the finished job wrote no {name}")
    return matches[0]


_UPLOAD_DOC: dict[str, Any] = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "DICOM files and/or zips of DICOM files"}}}},
    "multipart/related": {"schema": {"type": "string", "format": "binary"},
                          "description": 'STOW-RS: type="application/dicom" parts'}}, "required": True}}


@router.post("/v1/studies", status_code=202, openapi_extra=_UPLOAD_DOC,
             summary="Upload DICOM files or a zip (form), or STOW-RS (multipart/related); queue a job per study")
@router.post("/dicom-web/studies", include_in_schema=False)
async def submit_study(request: Request, who: Any = Depends(require(*SUBMIT))) -> JSONResponse:
    from starlette.concurrency import run_in_threadpool

    rt = runtime(request)
    budget = rt.settings.max_upload_bytes
    stow = request.headers.get("content-type", "").lower().startswith("multipart/related")
    if stow:
        uploads = await _stow_parts(request, budget)
    else:
        try:
            form = await request.form(max_files=MAX_ZIP_MEMBERS, max_fields=100)
        except Exception as exc:  # starlette's parser errors: not a readable multipart form
            raise BadUploadError(f"expected multipart/form-data with 'files' or a STOW-RS body: {exc}") from None
        files = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not files:
            raise BadUploadError("no 'files' in the upload (multipart/form-data field 'files')")
        uploads = []
        for f in files:
            data = await read_bounded(f, budget)  # type: ignore[arg-type]
            budget -= len(data)
            uploads.append((f.filename or "upload", data))
    body = await run_in_threadpool(ingest, rt, uploads, who.name)
    await run_in_threadpool(rt.audit.uploaded, request, who.name, [j["study_uid"] for j in body["jobs"]])
    if stow:
        status = 200 if not body["skipped"] else 202
        return JSONResponse(stow_response(body), status_code=status, media_type="application/dicom+json",
                            headers={"X-LesionLens-Jobs": ",".join(j["job_id"] for j in body["jobs"])})
    body.pop("instances")
    return JSONResponse(body, status_code=202)


def job_with_deliveries(rt: Runtime, job: Any) -> dict[str, Any]:
    """A job's view plus the delivery state of each of its result objects per destination."""
    view = job_view(job)
    view["deliveries"] = [{k: d.to_dict()[k] for k in ("destination", "sop_uid", "state", "attempts",
                                                        "delivered_at", "last_error")}
                          for d in rt.outbox.list(job_id=job.id)]
    return view


@router.get("/v1/jobs", summary="Jobs, newest first; ?state=dead lists the dead letters")
def list_jobs(request: Request, state: str | None = None, study_uid: str | None = None, limit: int = 100,
              _who: Any = Depends(require(*READ))) -> dict[str, Any]:
    from lesionlens.service.jobs import STATES

    if state is not None and state not in STATES:
        raise BadUploadError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    rt = runtime(request)
    jobs = rt.queue.list(state, study_uid=study_uid, limit=max(1, min(limit, 1000)))  # type: ignore[arg-type]
    return {"jobs": [job_view(j) for j in jobs], "stats": rt.queue.stats(), "deliveries": rt.outbox.stats()}


@router.get("/v1/jobs/{job_id}", summary="A job's state, result and result deliveries")
def get_job(job_id: str, request: Request, _who: Any = Depends(require(*READ))) -> dict[str, Any]:
    rt = runtime(request)
    try:
        return job_with_deliveries(rt, rt.queue.get(job_id))
    except JobNotFoundError as exc:
        raise NotFoundError(str(exc)) from None


def serve_study_file(request: Request, who: Any, study_uid: str, name: str, what: str,
                     media_type: str) -> Response:
    """A finished study's output, decrypted when stored encrypted; the access is audited first."""
    from lesionlens.service.atrest import read_result

    rt = runtime(request)
    path = study_file(rt, study_uid, name)
    rt.audit.accessed(request, who.name, study_uid, what)
    return Response(read_result(rt.keyring, path), media_type=media_type)


def serve_deidentified(request: Request, who: Any, study_uid: str, name: str, what: str) -> Response:
    """A de-identified copy of a finished study's findings.json or SR (research export), made
    with the service's ``deid_key_file`` and ``deid_options``; audited as an export first."""
    from lesionlens.service.atrest import read_result

    rt = runtime(request)
    config = rt.deid_config()
    path = study_file(rt, study_uid, name)
    raw = read_result(rt.keyring, path)
    rt.audit.exported_deidentified(request, who.name, study_uid, what)
    if name == "findings.json":
        import json

        from lesionlens.privacy.deid_findings import deidentify_findings

        doc = deidentify_findings(json.loads(raw), config)
        return Response(json.dumps(doc, indent=2).encode(), media_type="application/json")
    import pydicom

    from lesionlens.privacy.deid import Deidentifier, Quarantined

    result = Deidentifier(config).deidentify_dataset(pydicom.dcmread(io.BytesIO(raw)))
    if isinstance(result, Quarantined):  # not for our own SRs; kept for safety
        raise BadUploadError(f"{what} of study {study_uid} cannot be exported de-identified: {result.reason}")
    buf = io.BytesIO()
    result.save_as(buf, enforce_file_format=True)
    return Response(buf.getvalue(), media_type="application/dicom")


_DEID_DOC = ("true: a de-identified copy (PS3.15 basic profile with the service's deid_options and "
             "deid_key_file; UIDs remapped as in de-identified SR/SEG/GSPS of the same key)")


@router.get("/v1/studies/{study_uid}/findings", summary="findings.json of the study's finished job")
def get_findings(study_uid: str, request: Request, deid: bool = Query(False, description=_DEID_DOC),
                 who: Any = Depends(require(*READ))) -> Response:
    if deid:
        return serve_deidentified(request, who, study_uid, "findings.json", "findings.json")
    return serve_study_file(request, who, study_uid, "findings.json", "findings.json", "application/json")


def _no_deid_report(deid: bool, name: str) -> None:
    if deid:
        raise DeidUnavailableError(f"{name} is not offered de-identified (its header names the patient); "
                             "use /findings?deid=true or /sr?deid=true")


@router.get("/v1/studies/{study_uid}/report.html", summary="HTML report")
def get_report_html(study_uid: str, request: Request, deid: bool = Query(False, include_in_schema=False),
                    who: Any = Depends(require(*READ))) -> Response:
    _no_deid_report(deid, "report.html")
    return serve_study_file(request, who, study_uid, "report.html", "report.html", "text/html")


@router.get("/v1/studies/{study_uid}/report.pdf", summary="PDF report")
def get_report_pdf(study_uid: str, request: Request, deid: bool = Query(False, include_in_schema=False),
                   who: Any = Depends(require(*READ))) -> Response:
    _no_deid_report(deid, "report.pdf")
    return serve_study_file(request, who, study_uid, "report.pdf", "report.pdf", "application/pdf")


@router.get("/v1/studies/{study_uid}/sr", summary="DICOM SR of the findings")
def get_sr(study_uid: str, request: Request, deid: bool = Query(False, description=_DEID_DOC),
           who: Any = Depends(require(*READ))) -> Response:
    if deid:
        return serve_deidentified(request, who, study_uid, "sr*.dcm", "DICOM SR")
    return serve_study_file(request, who, study_uid, "sr*.dcm", "DICOM SR", "application/dicom")

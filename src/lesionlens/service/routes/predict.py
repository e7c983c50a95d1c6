"""``POST /v1/predict`` (also ``/predict``): one image → its findings, on the serving model.

Accepted: PNG, JPEG (sniffed by content, not by name) and DICOM Part 10. For a CT (HU) model a
PNG/JPEG is taken as a display image in the model's own window (8-bit: 0 → window low,
255 → window high); 16-bit greys are taken as stored CT values (HU + 1024). DICOM is read with
its rescale, so CT slices arrive in HU.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.service.auth import SUBMIT, require
from lesionlens.service.jobs import QueueFullError
from lesionlens.service.routes.common import BadUploadError, read_bounded, runtime
from lesionlens.service.runtime import Runtime, ServingModel

router = APIRouter(tags=["predict"])


def sniff(data: bytes) -> str:
    """'png' | 'jpeg' | 'dicom' from the first bytes; :class:`BadUploadError` otherwise."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    raise BadUploadError("not a PNG, JPEG or DICOM Part 10 file (unrecognised content)")


def decode_upload(data: bytes, kind: str, tmp_dir: Path) -> Any:
    """Bytes → a :class:`lesionlens.dicom.types.Volume`. The file is staged in a private RAM
    folder (``tmp_dir`` where there is no /dev/shm) that is removed at once."""
    from lesionlens.service.atrest import ram_workdir

    with ram_workdir("lesionlens-predict-", tmp_dir) as work:  # plaintext stays in RAM, removed after
        return _decode_staged(data, kind, work)


def _decode_staged(data: bytes, kind: str, tmp_dir: Path) -> Any:
    from lesionlens.dicom.formats import read_image
    from lesionlens.dicom.study import read_study

    path = tmp_dir / f"predict-{uuid.uuid4().hex}.{ {'png': 'png', 'jpeg': 'jpg', 'dicom': 'dcm'}[kind] }"
    path.write_bytes(data)
    try:
        if kind == "dicom":
            read = read_study(str(path), workers=1)
            if not read.volumes:
                why = "; ".join(p.message for p in read.problems) or "no image could be selected"
                raise BadUploadError(f"DICOM file has no usable image: {why}")
            return read.volumes[0]
        return read_image(path)
    except BadUploadError:
        raise
    except LesionLensError as exc:
        raise BadUploadError(f"cannot decode the {kind.upper()} image: {exc.reason}") from None
    except Exception as exc:  # a decoder's own error on hostile bytes
        raise BadUploadError(f"cannot decode the {kind.upper()} image: {type(exc).__name__}: {exc}") from None
    finally:
        path.unlink(missing_ok=True)


def to_model_input(volume: Any, kind: str, model: ServingModel) -> Any:
    """Grey it, and for CT models map display images into HU (see module docstring)."""
    px = volume.pixels
    if px.ndim == 4:  # RGB → grey
        px = px.astype(np.float32).mean(axis=-1)
    spec = model.predictor.meta.input
    if spec.kind == "ct-hu" and kind != "dicom":
        if float(px.max(initial=0)) <= 255:
            lo = spec.window_center - spec.window_width / 2.0
            px = lo + px.astype(np.float32) / 255.0 * spec.window_width
        else:
            px = px.astype(np.float32) - 1024.0
    volume.pixels = np.ascontiguousarray(px, dtype=np.float32)
    return volume


def predict_bytes(rt: Runtime, data: bytes, conf: float, iou: float,
                  audit: Callable[[str | None, str], None] | None = None) -> dict[str, Any]:
    """The whole request: decode, run on the model held for this request, filter, describe.
    ``audit(study_uid, kind)`` is called once the image decoded, before it is analysed."""
    from lesionlens.engine.predict import class_name
    from lesionlens.models.postprocess import nms

    if not 0.0 <= conf <= 1.0:
        raise ConfigError(f"conf must be within 0…1, got {conf}")
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"iou must be within (0, 1], got {iou}")
    kind = sniff(data)
    t0 = time.perf_counter()
    volume = decode_upload(data, kind, rt.tmp_dir)
    decode_s = time.perf_counter() - t0
    if audit is not None:
        audit(getattr(volume, "study_instance_uid", None) if kind == "dicom" else None, kind)
    with rt.active.use() as handle:
        model = handle.model
        volume = to_model_input(volume, kind, model)
        pred = model.predictor.predict_image(volume)
        identity = dict(model.identity)
        names = model.predictor.meta
    findings: list[dict[str, Any]] = []
    for k, det in enumerate(pred.images):
        keep = det.scores >= conf
        boxes, scores, labels = det.boxes[keep], det.scores[keep], det.labels[keep]
        if len(scores):
            idx = nms(boxes, scores, iou)
            boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
        for b, s, lab in zip(boxes, scores, labels, strict=True):
            findings.append({"frame": k, "box_xyxy": [round(float(v), 2) for v in b],
                             "score": round(float(s), 4), "label": int(lab), "class": class_name(names, int(lab))})
    timings = {"decode": decode_s, **{k: float(v) for k, v in pred.timings.items()}}
    rt.metrics.observe_stages(timings)
    frames, h, w = volume.pixels.shape[:3]
    return {"model": identity, "image": {"format": kind, "frames": int(frames), "height": int(h), "width": int(w)},
            "conf": conf, "iou": iou, "findings": findings, "count": len(findings),
            "timings": {k: round(v, 4) for k, v in timings.items()}}


@router.post("/v1/predict", summary="Findings for one PNG/JPEG/DICOM image")
@router.post("/predict", include_in_schema=False)
async def predict(request: Request, image: UploadFile = File(..., description="PNG, JPEG or DICOM file"),
                  conf: float = Form(0.25), iou: float = Form(0.5),
                  _who: Any = Depends(require(*SUBMIT))) -> dict[str, Any]:
    from starlette.concurrency import run_in_threadpool

    rt = runtime(request)
    state = request.app.state
    inflight = getattr(state, "predict_inflight", 0)
    if inflight >= rt.settings.max_predict_inflight:
        raise QueueFullError(f"{inflight} /v1/predict requests are already running or waiting "
                             f"(max_predict_inflight={rt.settings.max_predict_inflight}); retry later")
    state.predict_inflight = inflight + 1  # admission is decided on the event loop: no race
    try:
        data = await read_bounded(image, rt.settings.max_upload_bytes)

        def audit(study_uid: str | None, kind: str) -> None:
            rt.audit.predicted(request, _who.name, study_uid, kind)

        return await run_in_threadpool(predict_bytes, rt, data, conf, iou, audit)
    finally:
        state.predict_inflight -= 1

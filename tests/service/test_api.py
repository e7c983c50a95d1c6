"""The HTTP API against a real Runtime (packaged model, real queue/registry) via TestClient."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient  # noqa: E402

from lesionlens.service.app import create_app  # noqa: E402
from lesionlens.service.auth import TokenStore, create_token  # noqa: E402
from lesionlens.service.metrics import METRIC_NAMES  # noqa: E402
from lesionlens.service.runtime import Runtime  # noqa: E402
from lesionlens.service.settings import Settings  # noqa: E402

ROLES = ("viewer", "radiologist", "model-admin", "admin", "service")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("svc")
    tokens_file = d / "tokens.json"
    tokens = {r: create_token(tokens_file, r) for r in ROLES}
    settings = Settings(data_dir=d / "data", tokens=tokens_file, max_upload_mb=1, workers=0, predict_threads=1)
    rt = Runtime(settings, tokens=TokenStore.load(tokens_file))
    client = TestClient(create_app(settings, rt))
    return {"client": client, "tokens": tokens, "runtime": rt}


def _h(service: dict, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {service['tokens'][role]}"}


@pytest.fixture(scope="module")
def ct_png() -> bytes:
    """A lung-windowed PNG of a phantom CT slice through a nodule."""
    from PIL import Image

    from lesionlens.synth.ct import CTPhantomConfig, generate_ct

    ph = generate_ct(3, CTPhantomConfig(matrix=(256, 256), n_slices=16, n_nodules=(2, 2), p_no_nodules=0.0,
                                        nodule_diameter_mm=(10.0, 16.0)))
    k = int(np.argmax((ph.labels > 0).sum(axis=(1, 2))))
    hu = ph.hu[k].astype(np.float32)
    img = np.clip((hu + 1400.0) / 1600.0 * 255.0, 0, 255).astype(np.uint8)  # the model's window
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# every non-health route with a minimal request
ROUTES = [
    ("post", "/v1/predict"), ("post", "/predict"), ("post", "/v1/studies"), ("post", "/dicom-web/studies"), ("get", "/v1/jobs"), ("get", "/v1/jobs/x"),
    ("get", "/v1/studies/1.2.3/findings"), ("get", "/v1/studies/1.2.3/report.html"),
    ("get", "/v1/studies/1.2.3/report.pdf"), ("get", "/v1/studies/1.2.3/sr"), ("get", "/v1/models"),
    ("post", "/v1/models"), ("post", "/v1/models/m/1/activate"), ("post", "/v1/models/m/rollback"),
    ("get", "/metrics"),
]
WRITE_ROUTES = {"/v1/predict", "/predict", "/v1/studies", "/dicom-web/studies"}
ADMIN_ROUTES = {"/v1/models/m/1/activate", "/v1/models/m/rollback"}


def test_every_route_is_listed(service: dict) -> None:
    app = service["client"].app
    paths = set(app.openapi()["paths"]) | {"/predict", "/dicom-web/studies"}
    listed = {p.replace("/jobs/x", "/jobs/{job_id}").replace("1.2.3", "{study_uid}").replace("/m/1/", "/{name}/{version}/")
              .replace("/m/", "/{name}/") for _, p in ROUTES} | {"/healthz", "/readyz"}
    assert paths == listed


@pytest.mark.parametrize("method,path", ROUTES)
def test_401_without_or_with_bad_token(service: dict, method: str, path: str) -> None:
    c = service["client"]
    r = getattr(c, method)(path)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = getattr(c, method)(path, headers={"Authorization": "Bearer llt_nope"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,path", [rt for rt in ROUTES if rt[1] in WRITE_ROUTES | {"/v1/models"}
                                         and rt[0] == "post"] + [rt for rt in ROUTES if rt[1] in ADMIN_ROUTES])
def test_403_with_the_wrong_role(service: dict, method: str, path: str) -> None:
    r = getattr(service["client"], method)(path, headers=_h(service, "viewer"))
    assert r.status_code == 403, r.text
    if path in ADMIN_ROUTES or path == "/v1/models":
        r = getattr(service["client"], method)(path, headers=_h(service, "radiologist"))
        assert r.status_code == 403


def test_health_needs_no_token(service: dict) -> None:
    c = service["client"]
    assert c.get("/healthz").json()["status"] == "ok"
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True


def test_predict_png_returns_findings_with_model_identity(service: dict, ct_png: bytes) -> None:
    r = service["client"].post("/v1/predict", headers=_h(service, "radiologist"),
                               files={"image": ("slice.png", ct_png, "image/png")}, data={"conf": "0.2"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"]["name"] == "lesionlens-ct-nodule-n" and len(doc["model"]["sha256"]) == 64
    assert doc["image"] == {"format": "png", "frames": 1, "height": 256, "width": 256}
    assert doc["count"] == len(doc["findings"]) >= 1
    f = doc["findings"][0]
    assert f["score"] >= 0.2 and len(f["box_xyxy"]) == 4 and f["class"] == "nodule"
    # the legacy path and a stricter threshold
    r2 = service["client"].post("/predict", headers=_h(service, "service"),
                                files={"image": ("s.png", ct_png, "image/png")}, data={"conf": "0.99"})
    assert r2.status_code == 200 and r2.json()["count"] <= doc["count"]


def test_predict_too_large_is_413(service: dict) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024 + 10)
    r = service["client"].post("/v1/predict", headers=_h(service, "radiologist"),
                               files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413


def test_predict_non_image_is_422_with_reason(service: dict) -> None:
    c = service["client"]
    r = c.post("/v1/predict", headers=_h(service, "radiologist"),
               files={"image": ("notes.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 422 and "not a PNG, JPEG or DICOM" in r.json()["detail"]
    r = c.post("/v1/predict", headers=_h(service, "radiologist"),
               files={"image": ("broken.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "image/png")})
    assert r.status_code == 422 and "cannot decode" in r.json()["detail"]
    r = c.post("/v1/predict", headers=_h(service, "radiologist"), data={"conf": "3"},
               files={"image": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")})
    assert r.status_code == 422


def test_studies_upload_queues_a_job(service: dict, tmp_path: Path) -> None:
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    ph = generate_ct(5, CTPhantomConfig(matrix=(64, 64), n_slices=4))
    write_ct_study(ph, tmp_path / "st")
    files = sorted(p for p in (tmp_path / "st").rglob("*") if p.is_file() and p.suffix != ".json")
    c = service["client"]
    up = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in files]
    r = c.post("/v1/studies", headers=_h(service, "radiologist"), files=up)
    assert r.status_code == 202, r.text
    jid = r.json()["job_id"]
    assert r.json()["stored"] >= 4
    j = c.get(f"/v1/jobs/{jid}", headers=_h(service, "viewer"))
    assert j.status_code == 200 and j.json()["state"] == "queued" and j.json()["deliveries"] == []
    listed = c.get("/v1/jobs", headers=_h(service, "viewer"), params={"state": "queued"}).json()
    assert jid in {x["id"] for x in listed["jobs"]} and listed["stats"]["queued"] >= 1
    assert c.get("/v1/jobs", headers=_h(service, "viewer"), params={"state": "dead"}).json()["jobs"] == []
    bad = c.get("/v1/jobs", headers=_h(service, "viewer"), params={"state": "bogus"})
    assert bad.status_code == 422 and "bogus" in bad.text
    assert c.get("/v1/jobs/nope", headers=_h(service, "viewer")).status_code == 404
    uid = r.json()["jobs"][0]["study_uid"]
    assert c.get(f"/v1/studies/{uid}/findings", headers=_h(service, "viewer")).status_code == 404


def test_stow_rs_upload_answers_like_a_stow_rs_server(service: dict, tmp_path: Path) -> None:
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    ph = generate_ct(11, CTPhantomConfig(matrix=(64, 64), n_slices=3, max_vessel_segments=200))
    files = sorted(write_ct_study(ph, tmp_path / "st").glob("CT_*.dcm"))
    boundary = "b0undary-xyz"
    parts = [f.read_bytes() for f in files] + [b"not a DICOM file at all"]
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                    for p in parts) + f"--{boundary}--\r\n".encode()
    headers = {**_h(service, "service"),
               "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    for path in ("/dicom-web/studies", "/v1/studies"):
        r = service["client"].post(path, headers=headers, content=body)
        assert r.status_code == 202, r.text  # 202: stored, but one part failed
        doc = r.json()
        stored = {item["00081155"]["Value"][0] for item in doc["00081199"]["Value"]}
        from lesionlens.dicom.io import read_dataset

        assert stored == {read_dataset(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        assert [x["00081197"]["Value"][0] for x in doc["00081198"]["Value"]] == [0xC000]
        jobs = r.headers["x-lesionlens-jobs"].split(",")
        assert service["client"].get(f"/v1/jobs/{jobs[0]}", headers=_h(service, "viewer")).json()["study_uid"] \
            == ph.uids["study"]
    bad = service["client"].post("/v1/studies", headers={**headers, "Content-Type": "multipart/related"},
                                 content=body)
    assert bad.status_code == 422 and "boundary" in bad.json()["detail"]


def test_models_listing(service: dict) -> None:
    r = service["client"].get("/v1/models", headers=_h(service, "viewer"))
    assert r.status_code == 200
    assert r.json()["serving"]["name"] == "lesionlens-ct-nodule-n" and r.json()["models"] == []
    r = service["client"].post("/v1/models/m/1/activate", headers=_h(service, "model-admin"))
    assert r.status_code == 404


def test_metrics_lists_the_metric_names(service: dict, ct_png: bytes) -> None:
    service["client"].post("/v1/predict", headers=_h(service, "radiologist"),
                           files={"image": ("slice.png", ct_png, "image/png")})
    r = service["client"].get("/metrics", headers=_h(service, "viewer"))
    assert r.status_code == 200
    for name in METRIC_NAMES:
        assert name in r.text
    assert 'lesionlens_active_model_info{name="lesionlens-ct-nodule-n"' in r.text
    assert 'lesionlens_queue_jobs{state="queued"}' in r.text


def test_openapi_documents_the_routes(service: dict) -> None:
    doc = service["client"].get("/openapi.json").json()
    assert "/v1/predict" in doc["paths"] and "/v1/studies" in doc["paths"]

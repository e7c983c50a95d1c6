"""/v1/predict: admission limit (503 + Retry-After past ``max_predict_inflight``), one audit
record per analysed image, and no staged copy of the upload left behind."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from lesionlens.privacy.audit_export import iter_records  # noqa: E402
from lesionlens.service.app import create_app  # noqa: E402
from lesionlens.service.auth import TokenStore, create_token  # noqa: E402
from lesionlens.service.runtime import Runtime  # noqa: E402
from lesionlens.service.settings import Settings  # noqa: E402


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("predict-adm")
    tokens = d / "tokens.json"
    tok = create_token(tokens, "radiologist", "reader-1")
    settings = Settings(data_dir=d / "data", tokens=tokens, workers=0, dicom_port=0, predict_threads=1,
                        max_predict_inflight=2)
    rt = Runtime(settings, tokens=TokenStore.load(tokens))
    app = create_app(settings, rt)
    return SimpleNamespace(rt=rt, app=app, c=TestClient(app), h={"Authorization": f"Bearer {tok}"}, d=d)


@pytest.fixture(scope="module")
def ct_dicom(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    from lesionlens.synth.ct import CTPhantomConfig, generate_ct, write_ct_study

    d = tmp_path_factory.mktemp("ct1")
    ph = generate_ct(3, CTPhantomConfig(matrix=(128, 128), n_slices=4, n_nodules=(1, 1), p_no_nodules=0.0))
    write_ct_study(ph, d)
    f = sorted(d.glob("CT_*.dcm"))[1]
    import pydicom

    return f.read_bytes(), str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 40, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _records(rt: Runtime) -> list[dict]:
    p = rt.audit.log.path
    return list(iter_records(p)) if p.exists() else []


def test_past_the_limit_the_request_is_refused_with_retry_after(svc: SimpleNamespace) -> None:
    svc.app.state.predict_inflight = 2  # two requests running
    try:
        r = svc.c.post("/v1/predict", headers=svc.h, files={"image": ("a.png", _png())})
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert "max_predict_inflight=2" in r.json()["detail"]
    finally:
        svc.app.state.predict_inflight = 0
    assert svc.c.post("/v1/predict", headers=svc.h, files={"image": ("a.png", _png())}).status_code == 200


def test_concurrent_requests_all_finish_and_release_their_slot(svc: SimpleNamespace) -> None:
    def one(_: int) -> int:
        return svc.c.post("/v1/predict", headers=svc.h, files={"image": ("a.png", _png())}).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(one, range(12)))
    assert set(codes) <= {200, 503} and codes.count(200) >= 2
    assert svc.app.state.predict_inflight == 0  # every slot given back, 503s included


def test_each_analysed_image_leaves_one_audit_record_and_no_staged_copy(svc: SimpleNamespace,
                                                                        ct_dicom: tuple[bytes, str]) -> None:
    data, study_uid = ct_dicom
    n = len(_records(svc.rt))
    r = svc.c.post("/v1/predict", headers=svc.h, files={"image": ("slice.dcm", data)})
    assert r.status_code == 200
    new = _records(svc.rt)[n:]
    assert len(new) == 1
    rec = new[0]
    assert rec["event"]["id"]["code"] == "110107"
    assert rec["objects"][0]["object_id"] == study_uid
    assert any(p["user_id"] == "reader-1" for p in rec["active_participants"])
    n = len(_records(svc.rt))
    bad = svc.c.post("/v1/predict", headers=svc.h, files={"image": ("x.png", b"not an image")})
    assert bad.status_code == 422 and len(_records(svc.rt)) == n  # nothing analysed: nothing recorded
    left = [p for p in Path(svc.rt.tmp_dir).rglob("predict-*")]
    mine = f"lesionlens-predict-p{os.getpid()}-*"  # this process's (the app's) staging folders
    shm = list(Path("/dev/shm").glob(mine)) if Path("/dev/shm").is_dir() else []
    assert left == [] and shm == []

"""Pull mode: process one study that sits in a PACS and store the results back into it.

``process_from_pacs(PullRequest(...))`` does, in order:

1. **find** — C-FIND (``source`` is ``AET@HOST:PORT``) or QIDO-RS (``source`` is an
   ``http(s)://`` DICOMweb root) for the study; a study the PACS does not know is a
   :class:`StudyNotFoundError` before anything is retrieved;
2. **retrieve** — C-GET (or C-MOVE to a listener we start for the call) / WADO-RS, each instance
   written durably into ``work_dir/received`` (:class:`~lesionlens.net.storage.InstanceStore`);
3. optionally **de-identify** the retrieved instances (research pulls; ``deid`` config), then
   delete the identified copies (``work_dir/received``) so none stays next to the results;
4. **detect** — the study pipeline (:class:`~lesionlens.pipeline.detect.Detector`) and every
   output (:func:`~lesionlens.reports.bundle.write_outputs`) into ``out_dir``;
5. **store back** — the SR/SEG/GSPS to each destination (C-STORE for ``AET@HOST:PORT``,
   STOW-RS for a URL). By default the destination is the source itself (clinical pulls); a
   de-identified run stores back only where told to (``store_back`` explicit).

Every step is timed; :class:`PullReport` says what happened. A destination that refuses is
reported (``delivered`` per destination) — the outputs stay in ``out_dir`` for a later retry.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.net.address import parse_peer
from lesionlens.net.storage import InstanceStore, validate_uid
from lesionlens.service.worker import DICOM_RESULTS

Sender = Callable[[str, list[Path]], dict[Path, bool]]


class StudyNotFoundError(LesionLensError):
    """The PACS does not know the study (C-FIND / QIDO-RS found nothing)."""

    code = "study-not-found"


def is_web(destination: str) -> bool:
    """Whether a destination / source is a DICOMweb URL (else an ``AET@HOST:PORT`` peer)."""
    return destination.lower().startswith(("http://", "https://"))


@dataclass
class PullRequest:
    """One pull.

    source: ``AET@HOST:PORT`` (C-FIND + C-GET/C-MOVE) or a DICOMweb root URL (QIDO + WADO).
    method: "get" or "move" (DIMSE only). For "move" we start a listener with ``ae_title`` on
    ``move_port`` (the PACS must know that AE title → our host and port).
    store_back: destinations for the results; None means "the source" (none when ``deid``).
    deid: a :class:`lesionlens.privacy.deid.DeidConfig` to de-identify the retrieved instances
    before detection (research pulls), or None.
    """

    study_uid: str
    source: str
    out_dir: Path
    work_dir: Path | None = None
    method: Literal["get", "move"] = "get"
    ae_title: str = "LESIONLENS"
    move_port: int = 0
    store_back: Sequence[str] | None = None
    model: str = "default"
    conf: float = 0.5
    threads: int | None = None
    deid: Any = None


@dataclass
class PullReport:
    """What a pull did: instances retrieved, findings, result files and their delivery."""

    study_uid: str
    source: str
    retrieved: int = 0
    lesions: int = 0
    status: str = ""
    result_files: list[Path] = field(default_factory=list)
    delivered: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    deid: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.delivered.values()) and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, "source": self.source, "retrieved": self.retrieved,
                "lesions": self.lesions, "status": self.status,
                "result_files": [str(p) for p in self.result_files], "delivered": self.delivered,
                "errors": self.errors, "deid": self.deid, "timings": self.timings, "model": self.model}


def default_sender(calling_ae: str) -> Sender:
    """C-STORE for ``AET@HOST:PORT`` destinations, STOW-RS for ``http(s)://`` ones → {path: ok}."""

    def send(destination: str, files: list[Path]) -> dict[Path, bool]:
        if is_web(destination):
            from lesionlens.net.dicomweb import stow

            stowed = stow(destination, files)
            return {Path(r.path): r.ok for r in stowed.results}
        from lesionlens.net.scu import ScuOptions, send_files

        sent = send_files(destination, files, calling_ae=calling_ae, options=ScuOptions())
        return {Path(r.path): r.ok for r in sent.results}

    return send


def find_at(source: str, calling_ae: str, **keys: Any) -> list[dict[str, str]]:
    """Study-level query of ``source``: QIDO-RS for a DICOMweb URL, else C-FIND (keyword → text)."""
    if is_web(source):
        from lesionlens.net.dicomweb import qido_studies

        return qido_studies(source, **keys)
    from lesionlens.net.scu import find_studies

    return find_studies(source, calling_ae=calling_ae, **keys)


def _find(req: PullRequest) -> None:
    found = find_at(req.source, req.ae_title, StudyInstanceUID=req.study_uid)
    if not any(f.get("StudyInstanceUID") == req.study_uid for f in found):
        raise StudyNotFoundError(f"study {req.study_uid} is not in {req.source}")


def _retrieve(req: PullRequest, store: InstanceStore) -> int:
    if is_web(req.source):
        from lesionlens.net.dicomweb import wado_study

        return len(wado_study(req.source, req.study_uid, store))
    from lesionlens.net.retrieve import retrieve_study

    if req.method == "get":
        return len(retrieve_study(req.source, req.study_uid, store, calling_ae=req.ae_title).stored)
    from lesionlens.net.scp import DicomListener, DicomListenerConfig

    received: list[Any] = []
    listener = DicomListener(store, DicomListenerConfig(ae_title=req.ae_title, port=req.move_port,
                                                        allow_ae=[parse_peer(req.source).ae_title]),
                             on_stored=received.append)
    listener.start()
    try:
        retrieve_study(req.source, req.study_uid, None, method="move", move_destination=req.ae_title,
                       calling_ae=req.ae_title)
    finally:
        listener.stop()
    return len(received)


def process_from_pacs(req: PullRequest, *, sender: Sender | None = None,
                      detector: Any = None) -> PullReport:
    """Find, retrieve, (de-identify,) detect and store back one study; see the module doc."""
    req.study_uid = validate_uid(req.study_uid, field="study_uid")
    if not is_web(req.source):
        parse_peer(req.source)  # a malformed peer is a ConfigError before any network traffic
    if req.method not in ("get", "move"):
        raise ConfigError(f"method must be 'get' or 'move', got {req.method!r}")
    out_dir = Path(req.out_dir)
    work = Path(req.work_dir) if req.work_dir is not None else out_dir / "work"
    report = PullReport(req.study_uid, req.source)
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        report.timings[name] = round(now - t, 3)
        t = now

    _find(req)
    lap("find")
    received = work / "received"
    report.retrieved = _retrieve(req, InstanceStore(received))
    lap("retrieve")
    if report.retrieved == 0:
        raise StudyNotFoundError(f"{req.source} returned no instances for study {req.study_uid}")
    inputs = received
    if req.deid is not None:
        from lesionlens.privacy.deid_files import deidentify_path

        deid_dir = work / "deidentified"
        dreport = deidentify_path(received, deid_dir, req.deid)
        shutil.rmtree(received, ignore_errors=True)  # the identified copies are not kept
        # its per-file list names the identified inputs: only the counts are kept
        (deid_dir / "deid-report.json").unlink(missing_ok=True)
        report.deid = dreport.to_json()["counts"]
        from lesionlens.privacy.deid_table import DeidOption

        if not req.deid.has(DeidOption.RETAIN_UIDS):  # the report lies beside the results
            report.study_uid = req.deid.key.map_uid(req.study_uid)
        inputs = deid_dir
        lap("deid")
    if detector is None:
        from lesionlens.engine.predict import PredictConfig
        from lesionlens.pipeline.detect import DetectConfig, Detector

        detector = Detector(req.model, threads=req.threads, config=DetectConfig(predict=PredictConfig(conf=req.conf)))
    results = detector.detect(str(inputs))
    lap("detect")
    from lesionlens.reports.bundle import write_outputs

    write_outputs(results, out_dir)
    lap("write")
    report.status = ",".join(sorted({r.status for r in results}))
    report.lesions = sum(len(r.lesions) for r in results)
    report.model = next((dict(r.model) for r in results if r.model), {})
    report.result_files = sorted({p for pat in DICOM_RESULTS for p in out_dir.glob(f"**/{pat}")
                                  if p.is_file() and work not in p.parents})
    dests = list(req.store_back) if req.store_back is not None else ([] if req.deid is not None else [req.source])
    send = sender or default_sender(req.ae_title)
    for dest in dests:
        if not report.result_files:
            break
        try:
            outcome = send(dest, list(report.result_files))
            report.delivered[dest] = all(outcome.get(p) is True for p in report.result_files)
            if not report.delivered[dest]:
                report.errors[dest] = "the destination did not accept every result object"
        except LesionLensError as exc:
            report.delivered[dest] = False
            report.errors[dest] = str(exc)
    lap("store")
    return report


__all__ = ["PullReport", "PullRequest", "StudyNotFoundError", "default_sender", "find_at", "is_web",
           "process_from_pacs"]

"""Workers: claim a job, run the study pipeline on it, write its outputs, queue their delivery.

Inference runs only here, in worker processes (:func:`start_workers`, multiprocessing *spawn*),
never in a request or DICOM handler. Each worker loop (:func:`run_worker`) promotes stable
studies to jobs, claims the next due job and keeps its lease alive with a heartbeat thread
while :func:`process_job` runs.

Crash safety. Outputs are written into ``out_root/.staging/<job id>-<token>/`` and renamed to
``out_root/<job id>/`` in one step once complete (``outcome.json`` inside). That rename is the
commit point: a job that is run again after its worker died (lease expired) and whose folder is
already committed is not recomputed — the committed outcome is reused, its result objects are
(re-)queued in the outbox (a no-op for rows already there) and the job is completed. So result
objects, with their SOP Instance UIDs, are produced once per job and delivered once per
destination.

Encryption at rest (``WorkerConfig.data_key``): the job's (encrypted) input files are decrypted
into a private working folder in RAM (:func:`lesionlens.service.atrest.ram_workdir`) that the
detector reads and that is removed as soon as it is done; every output file except
``outcome.json`` is encrypted in staging before the commit. The SOP Instance UIDs of the result
objects are recorded in ``outcome.json`` (``sop_uids``) so delivery never reads them back.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from lesionlens.errors import (
    ConfigError,
    DataFormatError,
    LesionLensError,
    UnsupportedInputError,
)
from lesionlens.jsonio import read_json, write_json
from lesionlens.service.jobs import Job, JobInputError, JobQueue
from lesionlens.service.outbox import Outbox

log = logging.getLogger(__name__)

OUTCOME = "outcome.json"
DICOM_RESULTS = ("sr*.dcm", "seg*.dcm", "gsps*.dcm")
Writer = Callable[[list[Any], Path], Any]
_PERMANENT = (JobInputError, UnsupportedInputError)


class LeaseLostError(LesionLensError):
    """This worker's claim on the job ended (another worker took it over); the work is dropped."""

    code = "lease-lost"


@dataclass
class JobOutcome:
    """What a processed job produced. ``dicom_files``: result objects to deliver (absolute);
    ``model``: identity of the model used (name, version, sha256); ``studies``: per study
    ``{study_uid, status, lesions, messages}``; ``sop_uids``: result object path (relative to
    ``out_dir``, POSIX) → its SOP Instance UID."""

    job_id: str
    out_dir: Path
    dicom_files: list[Path]
    model: dict[str, str]
    studies: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    sop_uids: dict[str, str] = field(default_factory=dict)

    def delivery_map(self) -> dict[str, Path]:
        """SOP Instance UID → absolute path of each result object with a recorded UID."""
        return {uid: self.out_dir / rel for rel, uid in self.sop_uids.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "out_dir": str(self.out_dir),
            "dicom_files": [p.relative_to(self.out_dir).as_posix() for p in self.dicom_files],
            "model": dict(self.model),
            "studies": self.studies,
            "timings": self.timings,
            "sop_uids": dict(self.sop_uids),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], out_dir: Path) -> JobOutcome:
        return cls(str(d["job_id"]), out_dir, [out_dir / p for p in d.get("dicom_files", [])],
                   dict(d.get("model", {})), list(d.get("studies", [])), dict(d.get("timings", {})),
                   {str(k): str(v) for k, v in (d.get("sop_uids") or {}).items()})


def load_outcome(job_id: str, out_root: str | Path) -> JobOutcome | None:
    """The committed outcome of a job (None when its folder is not committed)."""
    folder = Path(out_root) / _safe_id(job_id)
    try:
        doc = read_json(folder / OUTCOME)
    except DataFormatError:
        return None
    return JobOutcome.from_dict(doc, folder)


def _safe_id(job_id: str) -> str:
    if not job_id or not all(ch.isalnum() or ch in "-_" for ch in job_id):
        raise JobInputError(f"job id {job_id!r} cannot name a folder")
    return job_id


def _default_writer(results: list[Any], out_dir: Path) -> Any:
    from lesionlens.reports.bundle import write_outputs

    return write_outputs(results, out_dir)


def _plain_inputs(stack: ExitStack, inputs: list[Path] | Path, keyring: Any, job_id: str,
                  root: Path) -> list[Path] | Path:
    """The inputs as the detector and the writer read them: as they are without a key ring, else
    plaintext copies in a RAM working folder that ``stack`` removes when it closes."""
    if keyring is None:
        return inputs
    from lesionlens.service.atrest import decrypt_inputs, ram_workdir

    work = stack.enter_context(ram_workdir(f"lesionlens-{job_id}-", root / ".work"))
    return decrypt_inputs(inputs, keyring, work)


def _result_uids(folder: Path) -> dict[str, str]:
    """Result object path relative to ``folder`` → its SOP Instance UID (plaintext files)."""
    from lesionlens.service.outbox import sop_instance_uid

    found = sorted({p for pat in DICOM_RESULTS for p in folder.rglob(pat) if p.is_file()})
    return {p.relative_to(folder).as_posix(): sop_instance_uid(p) for p in found}


def _write_staging(results: list[Any], staging: Path, writer: Writer, keyring: Any, job_id: str,
                   root: Path) -> dict[str, str]:
    """Write the outputs into ``staging`` → the result objects' SOP Instance UIDs. With a key
    ring the writer writes into a RAM working folder and only ciphertext reaches ``staging``."""
    if keyring is None:
        writer(results, staging)
        return _result_uids(staging)
    from lesionlens.service.atrest import encrypt_tree, ram_workdir

    staging.mkdir(parents=True, exist_ok=True)
    with ram_workdir(f"lesionlens-{job_id}-out-", root / ".work") as work:
        plain = work / "out"
        writer(results, plain)
        uids = _result_uids(plain)
        encrypt_tree(plain, keyring, dst=staging)
    return uids


def process_job(job: Job, *, detector_factory: Callable[[], Any], out_root: str | Path,
                writer: Writer | None = None, still_ours: Callable[[], bool] | None = None,
                keyring: Any = None) -> JobOutcome:
    """Run the study pipeline on ``job``'s files; outputs committed under ``out_root/<job id>/``.

    detector_factory() → an object with ``detect(inputs) -> list[StudyResult]`` (a
    :class:`lesionlens.pipeline.detect.Detector`). writer(results, folder) writes the outputs
    (default :func:`lesionlens.reports.bundle.write_outputs`). still_ours() is asked just before
    the commit; False raises :class:`LeaseLostError` and discards the work. keyring (a
    :class:`~lesionlens.privacy.keys.KeyRing`): inputs may be encrypted, outputs are encrypted
    (all but ``outcome.json``).
    """
    root = Path(out_root)
    final = root / _safe_id(job.id)
    done = load_outcome(job.id, root)
    if done is not None:
        return done
    inputs = job.inputs
    if isinstance(inputs, list):
        inputs = [p for p in inputs if p.is_file()]
        if not inputs:
            raise JobInputError(f"none of the job's {len(job.files)} instance files exist any more")
    elif not inputs.is_dir():
        raise JobInputError("the job's files folder does not exist any more", path=inputs)
    staging_root = root / ".staging"
    for stale in staging_root.glob(f"{job.id}-*"):  # a dead attempt's leftovers; we hold the lease
        shutil.rmtree(stale, ignore_errors=True)
    staging = staging_root / f"{job.id}-{uuid.uuid4().hex[:8]}"
    with ExitStack() as plaintext:  # the writer re-reads the source instances too (SR/SEG references)
        t0 = time.perf_counter()
        detector = detector_factory()
        results = list(detector.detect(_plain_inputs(plaintext, inputs, keyring, job.id, root)))
        t1 = time.perf_counter()
        try:
            uids = _write_staging(results, staging, writer or _default_writer, keyring, job.id, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    try:
        files = sorted({p for pat in DICOM_RESULTS for p in staging.rglob(pat) if p.is_file()})
        model = next((dict(r.model) for r in results if getattr(r, "model", None)), None)
        if model is None:
            model = dict(getattr(getattr(detector, "predictor", None), "identity", {}) or {})
        registered = getattr(detector_factory, "registry_version", None)
        if registered:  # the registry's name/version may differ from the package's meta.json
            model["registry_name"], model["registry_version"] = registered
        studies = [{"study_uid": getattr(r, "study_instance_uid", ""), "status": getattr(r, "status", ""),
                    "lesions": len(getattr(r, "lesions", []) or []),
                    "messages": list(getattr(r, "messages", []) or [])} for r in results]
        timings = {"detect": round(t1 - t0, 3), "write": round(time.perf_counter() - t1, 3)}
        staged = JobOutcome(job.id, staging, files, model, studies, timings, uids)
        write_json(staged.to_dict(), staging / OUTCOME)
        if still_ours is not None and not still_ours():
            raise LeaseLostError(f"job {job.id}: lease lost before the outputs were committed")
        if final.exists() and load_outcome(job.id, root) is None:  # an uncommitted leftover
            shutil.rmtree(final)
        try:
            os.rename(staging, final)  # refuses to replace a committed (non-empty) folder
        except OSError:
            if load_outcome(job.id, root) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    outcome = load_outcome(job.id, root)  # ours, or the one another attempt committed first
    if outcome is None:
        raise LesionLensError(f"job {job.id}: outputs vanished after the commit", path=final, code="output")
    return outcome


@dataclass
class DetectorFactory:
    """Picklable recipe for the worker's Detector, built once per process and reused.

    With ``registry_root`` the model is the registry's active version of ``registry_name``
    (verified against ``trusted_keys``), or the packaged ``model`` while none is active; a newly
    activated version is picked up by the next job.
    """

    model: str = "default"
    backend: str = "onnx"
    threads: int | None = 1
    registry_root: str | None = None
    registry_name: str | None = None
    trusted_keys: tuple[str, ...] = ()
    _cache: tuple[Any, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def registry_version(self) -> tuple[str, str] | None:
        """(name, version) in the registry of the loaded model; None when not registry-backed."""
        if self.registry_root is None or self._cache is None or not isinstance(self._cache[0], tuple):
            return None
        name, version = self._cache[0]
        return str(name), str(version)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"} | {"_cache": None}

    def __call__(self) -> Any:
        path: Any = self.model
        key: Any = self.model
        if self.registry_root is not None:
            from lesionlens.service.registry import ModelRegistry

            reg = ModelRegistry(self.registry_root, self.trusted_keys)
            active = reg.active(self.registry_name)
            if active is not None:  # else the packaged ``model`` until a version is activated
                key = (active.name, active.version)
                if self._cache is not None and self._cache[0] == key:
                    return self._cache[1]
                path = reg.verify(active.name, active.version).path
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        from lesionlens.pipeline.detect import DetectConfig, Detector

        det = Detector(path, backend=self.backend, threads=self.threads,  # type: ignore[arg-type]
                       config=DetectConfig(workers=1))
        self._cache = (key, det)
        return det


@dataclass
class WorkerConfig:
    """out_root: job output folders. destinations: where results go unless the job's meta has
    ``destinations``. heartbeat_seconds: default a third of the queue's lease. max_jobs: stop
    after this many (tests). writer: see :func:`process_job`."""

    out_root: str | Path
    destinations: tuple[str, ...] = ()
    poll_seconds: float = 1.0
    heartbeat_seconds: float | None = None
    max_jobs: int | None = None
    writer: Writer | None = None
    data_key: str | None = None
    data_keys_old: tuple[str, ...] = ()

    def keyring(self) -> Any:
        """The data key ring from ``data_key`` / ``data_keys_old`` (specs such as ``env``,
        ``file:PATH``; resolved in the worker process), or None when no key is configured."""
        if not self.data_key:
            return None
        from lesionlens.privacy.keys import KeyRing

        return KeyRing.from_specs(self.data_key, self.data_keys_old)


def _delivery_files(outcome: JobOutcome, keyring: Any) -> dict[str, Path] | list[Path]:
    """What the outbox gets: UID → path from ``outcome.json``; an outcome committed before UIDs
    were recorded falls back to its file list (UIDs read from the files, decrypted in memory)."""
    mapping = outcome.delivery_map()
    if mapping or not outcome.dicom_files:
        return mapping
    if keyring is None:
        return list(outcome.dicom_files)
    from lesionlens.dicom.io import parse_bytes
    from lesionlens.service.atrest import read_result

    return {str(parse_bytes(read_result(keyring, p), str(p), stop_before_pixels=True).dataset.SOPInstanceUID): p
            for p in outcome.dicom_files}


class _Heartbeat(threading.Thread):
    def __init__(self, queue: JobQueue, job: Job, interval: float):
        super().__init__(name=f"heartbeat-{job.id[:8]}", daemon=True)
        self.queue, self.job, self.interval = queue, job, interval
        self.lost = False
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                if not self.queue.heartbeat(self.job):
                    self.lost = True
                    return
            except Exception:  # a busy database: try again at the next beat
                log.warning("heartbeat for job %s failed", self.job.id, exc_info=True)
        self.queue.close()

    def still_ours(self) -> bool:
        if self.lost:
            return False
        self.lost = not self.queue.heartbeat(self.job)
        return not self.lost

    def stop(self) -> None:
        self._halt.set()
        self.join()


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def worker_alive(worker_id: str) -> bool:
    """Whether the process behind a :func:`new_worker_id` still runs. Ids of other hosts (or
    that do not parse) count as alive: only their lease can tell."""
    from lesionlens.service.atrest import pid_alive

    host, _, rest = worker_id.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    return pid_alive(int(pid_text))


def run_worker(queue: JobQueue, outbox: Outbox | None, *, detector_factory: Callable[[], Any],
               config: WorkerConfig, stop_event: Any, worker_id: str | None = None) -> int:
    """Claim and process jobs until ``stop_event`` is set (or ``max_jobs``) → jobs handled."""
    wid = worker_id or new_worker_id()
    keyring = config.keyring()
    beat = config.heartbeat_seconds or queue.config.lease_seconds / 3
    handled = 0
    while not stop_event.is_set() and (config.max_jobs is None or handled < config.max_jobs):
        queue.promote_stable()
        job = queue.claim(wid)
        if job is None:
            stop_event.wait(config.poll_seconds)
            continue
        handled += 1
        hb = _Heartbeat(queue, job, beat)
        hb.start()
        try:
            outcome = process_job(job, detector_factory=detector_factory, out_root=config.out_root,
                                  writer=config.writer, still_ours=hb.still_ours, keyring=keyring)
            dests: Sequence[str] = job.meta.get("destinations") or config.destinations
            if outbox is not None and dests:
                deliver = _delivery_files(outcome, keyring)
                for dest in dests:
                    outbox.enqueue(job.id, dest, deliver)
            if not queue.complete(job, outcome.to_dict()):
                log.warning("job %s was taken over by another worker; result recorded by it", job.id)
        except LeaseLostError as exc:
            log.warning("%s", exc)
        except Exception as exc:  # one failing study never stops the worker
            msg = str(exc) if isinstance(exc, LesionLensError) else f"{type(exc).__name__}: {exc}"
            state = queue.fail(job, msg, permanent=isinstance(exc, _PERMANENT))
            log.warning("job %s failed (%s): %s", job.id, state, msg)
        finally:
            hb.stop()
    return handled


def _worker_main(queue: JobQueue, outbox: Outbox | None, detector_factory: Callable[[], Any],
                 config: WorkerConfig, stop_event: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(message)s")
    run_worker(queue, outbox, detector_factory=detector_factory, config=config, stop_event=stop_event)


@dataclass
class WorkerPool:
    """Worker processes started by :func:`start_workers`; :meth:`stop` ends them."""

    processes: list[BaseProcess]
    stop_event: Any

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.processes)

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the workers to finish their current job and exit; terminate them after ``timeout``."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.processes:
            if p.is_alive():
                p.terminate()
                p.join(5.0)


def start_workers(n: int, queue: JobQueue, outbox: Outbox | None, detector_factory: Callable[[], Any],
                  config: WorkerConfig) -> WorkerPool:
    """Start ``n`` worker processes (spawn); everything passed must be picklable."""
    if n < 1:
        raise ConfigError(f"need at least one worker, got {n}")
    ctx = mp.get_context("spawn")
    stop_event = ctx.Event()
    procs: list[BaseProcess] = []
    for i in range(n):
        p = ctx.Process(target=_worker_main, args=(queue, outbox, detector_factory, config, stop_event),
                        name=f"lesionlens-worker-{i + 1}", daemon=True)
        p.start()
        procs.append(p)
    return WorkerPool(procs, stop_event)


__all__ = [
    "DICOM_RESULTS",
    "DetectorFactory",
    "JobOutcome",
    "LeaseLostError",
    "WorkerConfig",
    "WorkerPool",
    "load_outcome",
    "new_worker_id",
    "process_job",
    "run_worker",
    "start_workers",
    "worker_alive",
]

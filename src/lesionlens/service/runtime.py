"""Everything one ``lesionlens serve`` process holds, and its start/stop order.

:class:`Runtime` builds (cheaply, without starting anything) the durable queue and outbox, the
instance store, the model registry, the hot-swappable serving model (:class:`ActiveModel`), the
token authenticator and the metrics. :meth:`Runtime.start` then starts, in order: the worker
pool (processes), the outbox delivery thread, the DICOM listener; :meth:`Runtime.stop` stops them
in reverse (listener first, so no new work arrives; workers last, finishing their current job).

Data folder layout (``settings.data_dir``)::

    queue.sqlite3, outbox.sqlite3   the durable queue and delivery outbox
    incoming/                       received and uploaded instances (InstanceStore)
    jobs/<job id>/                  committed job outputs (findings.json, report, SR/SEG)
    registry/                       signed model packages and the active pointers
    tmp/                            upload staging (never /tmp)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.service.auth import Authenticator, TokenStore
from lesionlens.service.jobs import JobQueue, QueueConfig
from lesionlens.service.metrics import Metrics
from lesionlens.service.outbox import Outbox, OutboxConfig
from lesionlens.service.registry import ActiveModel, ModelRegistry, ModelVersion
from lesionlens.service.settings import Settings

log = logging.getLogger(__name__)

PREDICT_FLOOR_CONF = 0.001  # the serving predictor keeps everything above this; requests filter


@dataclass(frozen=True)
class ServingModel:
    """What a /v1/predict request uses: the predictor and the identity to report."""

    predictor: Any  # lesionlens.engine.predict.Predictor
    identity: dict[str, str]


def packaged_version(model: str) -> ModelVersion:
    """A :class:`ModelVersion` for a packaged model name or a package folder (not registry-backed)."""
    from lesionlens.engine.predict import resolve_model

    path = resolve_model(model)
    return ModelVersion(name=str(model), version="packaged", path=path, manifest={})


def load_serving_model(version: ModelVersion, threads: int | None = None) -> ServingModel:
    """The ActiveModel loader: a Predictor over the version's package folder."""
    from lesionlens.engine.predict import PredictConfig, Predictor

    pred = Predictor(version.path, threads=threads, config=PredictConfig(conf=PREDICT_FLOOR_CONF, iou=0.7))
    ident = dict(pred.identity)
    if version.version != "packaged":
        ident["registry_name"], ident["registry_version"] = version.name, version.version
    return ServingModel(pred, ident)


def load_keyring(settings: Settings) -> Any:
    """The data key ring (encryption at rest) from ``data_key`` / ``data_keys_old``, or None."""
    if not settings.data_key:
        return None
    from lesionlens.privacy.keys import KeyRing

    return KeyRing.from_specs(settings.data_key, settings.data_keys_old)


def open_audit_log(settings: Settings, data_dir: Path) -> Any:
    """The service's append-only audit trail (always on; keyed when ``audit_key_file`` is set)."""
    from lesionlens.privacy.audit import AuditLog
    from lesionlens.privacy.keys import load_key_material

    path = settings.audit_log or data_dir / "audit" / "audit.jsonl"
    key = load_key_material(settings.audit_key_file) if settings.audit_key_file else None
    return AuditLog(path, key=key, source_id=f"LESIONLENS:{settings.ae_title}")


class Runtime:
    """The service's components. ``start_model=False`` skips loading the serving model (tests
    that do not predict). Nothing runs in the background until :meth:`start`."""

    def __init__(self, settings: Settings, *, tokens: TokenStore | None = None, load_model: bool = True):
        self.settings = settings
        data = Path(settings.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.data_dir = data
        self.tmp_dir = data / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        self.out_root = data / "jobs"
        if tokens is None and settings.tokens is not None:
            tokens = TokenStore.load(settings.tokens)
        self.authenticator = Authenticator(tokens, insecure=settings.insecure_no_auth)
        self.queue = JobQueue(data / "queue.sqlite3", QueueConfig(stable_seconds=settings.stable_seconds,
                                                                   max_queued=settings.max_queued))
        self.outbox = Outbox(data / "outbox.sqlite3", OutboxConfig(
            backoff_seconds=settings.delivery_backoff_seconds,
            max_backoff_seconds=settings.delivery_max_backoff_seconds))
        from lesionlens.net.storage import InstanceStore

        self.keyring = load_keyring(settings)
        self._deid: Any = None
        if settings.deid_key_file is not None or settings.deid_options:
            from lesionlens.privacy.deid_options import DeidConfig
            from lesionlens.privacy.uidmap import resolve_key

            if settings.deid_key_file is None:
                raise ConfigError("deid_options: set deid_key_file too (de-identified exports need a key)")
            self._deid = DeidConfig.build(resolve_key(settings.deid_key_file), settings.deid_options)
        self.store = InstanceStore(data / "incoming", keyring=self.keyring)
        self.registry = ModelRegistry(data / "registry", settings.trusted_keys)
        from lesionlens.service.auditing import ServiceAudit

        self.audit = ServiceAudit(open_audit_log(settings, data))
        self.metrics = Metrics(queue_stats=self._queue_stats)
        threads = settings.predict_threads
        self.active: ActiveModel[ServingModel] = ActiveModel(lambda v: load_serving_model(v, threads))
        self._stop = threading.Event()
        self._outbox_thread: threading.Thread | None = None
        self._pool: Any = None
        self.listener: Any = None
        if load_model:
            self.load_initial_model()

    def deid_config(self) -> Any:
        """The de-identification of ``?deid=true`` exports; refused when no key is configured."""
        if self._deid is None:
            from lesionlens.service.routes.common import DeidUnavailableError

            raise DeidUnavailableError("de-identified exports are not enabled on this service: "
                                       "set deid_key_file (LESIONLENS_DEID_KEY_FILE)")
        return self._deid

    # ------------------------------------------------------------------ model
    def load_initial_model(self) -> None:
        """The registry's active version when there is one, else the configured package."""
        if not self.active.refresh(self.registry, self.settings.registry_name):
            self.active.swap_to(packaged_version(self.settings.model))
        self._publish_model()

    def refresh_model(self, name: str | None = None) -> bool:
        """Hot swap to the registry's active version of ``name`` → whether a swap happened."""
        swapped = self.active.refresh(self.registry, name)
        if swapped:
            self._publish_model()
        return swapped

    def _publish_model(self) -> None:
        cur = self.active.current
        if cur is not None:
            self.metrics.set_active_model(cur.model.identity)
            log.info("serving model %s", cur.model.identity)

    def _queue_stats(self) -> Mapping[str, float]:
        st = self.queue.stats()
        return {k: v for k, v in st.items() if k != "oldest_due_age_seconds"}

    @property
    def ready(self) -> bool:
        return self.active.current is not None

    # ------------------------------------------------------------------ lifecycle
    def _detector_factory(self) -> Any:
        from lesionlens.service.worker import DetectorFactory

        # Registry-backed always: a version activated while the service runs is used by the next job.
        return DetectorFactory(model=self.settings.model, registry_root=str(self.registry.root),
                               registry_name=self.settings.registry_name,
                               trusted_keys=tuple(str(k) for k in self.settings.trusted_keys))

    @property
    def destinations(self) -> tuple[str, ...]:
        """Where results go: each ``--send-to`` peer (C-STORE), then the ``--stow-url`` (STOW-RS)."""
        s = self.settings
        return tuple(s.send_to) + ((s.stow_url,) if s.stow_url else ())

    def _sender(self) -> Any:
        from lesionlens.service.pull import default_sender

        send = default_sender(self.settings.ae_title)
        if self.keyring is None:
            return send
        from lesionlens.service.atrest import decrypting_sender

        # results are encrypted at rest: each batch is sent from plaintext copies in RAM
        return decrypting_sender(send, self.keyring, fallback_root=self.tmp_dir)

    def start(self) -> None:
        """Workers, outbox thread, DICOM listener (in that order). Raises on a bind failure.

        Jobs left ``running`` by workers of a previous run that died (kill -9, power loss) are
        re-queued first, so a restarted service does not wait for their leases to run out."""
        s = self.settings
        self.audit.started(s)
        from lesionlens.service.worker import worker_alive

        orphans = self.queue.release_dead_workers(worker_alive)
        from lesionlens.service.atrest import sweep_ram_workdirs

        stale = sweep_ram_workdirs(self.out_root / ".work", self.tmp_dir)
        if stale:
            log.warning("removed %d working folder(s) left by dead workers", len(stale))
        if orphans:
            log.warning("re-queued %d job(s) whose worker died: %s", len(orphans), ", ".join(orphans))
        if s.workers > 0:
            from lesionlens.service.worker import WorkerConfig, start_workers

            cfg = WorkerConfig(out_root=self.out_root, destinations=self.destinations, data_key=s.data_key,
                               data_keys_old=tuple(s.data_keys_old))
            self._pool = start_workers(s.workers, self.queue, self.outbox, self._detector_factory(), cfg)
        if self.destinations:
            from lesionlens.service.outbox import run_outbox

            self._outbox_thread = threading.Thread(target=run_outbox,
                                                   args=(self.outbox, self._audited(self._sender()), self._stop),
                                                   name="outbox", daemon=True)
            self._outbox_thread.start()
        if s.dicom_port >= 0:
            from lesionlens.net.scp import DicomListener, DicomListenerConfig

            cfg_l = DicomListenerConfig(ae_title=s.ae_title, host=s.dicom_host, port=s.dicom_port,
                                        allow_ae=list(s.allow_ae))
            self.listener = DicomListener(self.store, cfg_l, on_stored=self._on_stored,
                                          accepting=lambda: not self.queue.queue_full())
            try:
                self.listener.start()
            except Exception:
                self.stop()
                raise

    def _audited(self, send: Any) -> Any:
        """The sender, recording an export audit event per study and destination it sends to."""

        def job_of(path: Path) -> str:
            try:
                return path.relative_to(self.out_root).parts[0]
            except (ValueError, IndexError):
                return ""

        def study_of(job_id: str) -> str:
            try:
                return self.queue.get(job_id).study_uid if job_id else "unknown"
            except LesionLensError:
                return "unknown"

        def wrapped(destination: str, files: list[Path]) -> Any:
            by_job: dict[str, list[Path]] = {}
            for f in files:
                by_job.setdefault(job_of(Path(f)), []).append(Path(f))
            by_study: dict[str, list[Path]] = {}
            for job_id, fs in by_job.items():  # one queue lookup per job, not per file
                by_study.setdefault(study_of(job_id), []).extend(fs)
            try:
                outcome = send(destination, files)
            except Exception:
                for uid, fs in by_study.items():
                    self.audit.exported(uid, destination, False, len(fs))
                raise
            for uid, fs in by_study.items():
                self.audit.exported(uid, destination, all(outcome.get(f) is True for f in fs), len(fs))
            return outcome

        return wrapped

    def _on_stored(self, inst: Any) -> None:
        self.audit.received(inst.study_uid, inst.source)  # recorded before the C-STORE is acknowledged
        self.queue.touch_study(inst.study_uid, inst.sop_instance_uid, inst.path, source="dicom",
                               meta={"source": inst.source})

    def stop(self) -> None:
        """Listener, outbox, workers — each stopped once; safe to call twice."""
        if not self._stop.is_set():
            try:
                self.audit.stopped()
            except LesionLensError:
                log.exception("could not record the application stop in the audit trail")
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        self._stop.set()
        if self._outbox_thread is not None:
            self._outbox_thread.join(10)
            self._outbox_thread = None
        if self._pool is not None:
            self._pool.stop(timeout=30)
            self._pool = None


def build_runtime(settings: Settings, *, load_model: bool = True) -> Runtime:
    """Validate what only the runtime can check, then build it."""
    if settings.tokens is None and not settings.insecure_no_auth:
        raise ConfigError("no API tokens configured: give --tokens FILE (create one with `lesionlens token "
                          "create --role admin --tokens FILE`) or, for a local test only, --insecure-no-auth")
    return Runtime(settings, load_model=load_model)


__all__ = ["Runtime", "ServingModel", "build_runtime", "load_serving_model", "packaged_version"]

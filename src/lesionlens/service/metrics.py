"""Prometheus metrics of one service instance (its own registry: no module-level globals).

Names: ``lesionlens_http_request_duration_seconds`` (histogram by method, route, status),
``lesionlens_queue_jobs`` (gauge by state, read from the queue at scrape time),
``lesionlens_inference_seconds`` (histogram by stage: preprocess, inference, postprocess, ...),
``lesionlens_active_model_info`` (gauge 1 labelled name, version, sha256).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_NAMES = (
    "lesionlens_http_request_duration_seconds",
    "lesionlens_queue_jobs",
    "lesionlens_inference_seconds",
    "lesionlens_active_model_info",
)


class _QueueCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[str, float]] | None):
        self._stats = stats

    def collect(self):  # type: ignore[no-untyped-def]
        g = GaugeMetricFamily("lesionlens_queue_jobs", "Jobs in the queue by state", labels=["state"])
        if self._stats is not None:
            try:
                for state, n in self._stats().items():
                    g.add_metric([state], float(n))
            except Exception:  # a busy database must not break the scrape
                pass
        yield g


class Metrics:
    """``Metrics(queue_stats=queue.stats)``; :meth:`render` → the exposition text."""

    def __init__(self, queue_stats: Callable[[], Mapping[str, float]] | None = None):
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "lesionlens_http_request_duration_seconds", "HTTP request latency",
            ["method", "route", "status"], registry=self.registry)
        self.inference_seconds = Histogram(
            "lesionlens_inference_seconds", "Inference time per stage", ["stage"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.active_model = Gauge("lesionlens_active_model_info", "The serving model (value 1)",
                                  ["name", "version", "sha256"], registry=self.registry)
        self.registry.register(_QueueCollector(queue_stats))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(method, route, str(status)).observe(seconds)

    def observe_stages(self, timings: Mapping[str, float]) -> None:
        for stage, s in timings.items():
            self.inference_seconds.labels(stage).observe(float(s))

    def set_active_model(self, identity: Mapping[str, str]) -> None:
        self.active_model.clear()
        self.active_model.labels(str(identity.get("name", "")), str(identity.get("version", "")),
                                 str(identity.get("sha256", ""))).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "Metrics"]

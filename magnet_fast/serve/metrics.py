"""Prometheus metrics of the server (``GET /metrics``), in a registry of the app's own (several apps in
one process do not share counters). Names follow Prometheus conventions: ``_total`` counters, ``_seconds``
histograms."""
from __future__ import annotations

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self, max_batch: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = r = CollectorRegistry()
        self.requests = Counter("magnet_fast_requests", "HTTP generation requests by model and status code",
                                ["model", "status"], registry=r)
        self.queue = Gauge("magnet_fast_queue_depth", "requests waiting in the model's queue", ["model"],
                           registry=r)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, max_batch})
        self.batch_size = Histogram("magnet_fast_batch_size", "real rows per batch", ["model"],
                                    buckets=[float(b) for b in sizes], registry=r)
        self.padded_rows = Counter("magnet_fast_padded_rows", "rows added to reach a bucket size", ["model"],
                                   registry=r)
        self.batches = Counter("magnet_fast_batches", "batches run", ["model"], registry=r)
        self.latency = Histogram("magnet_fast_request_latency_seconds", "arrival to response, per request",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("magnet_fast_queue_wait_seconds", "arrival to batch start", ["model"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("magnet_fast_compute_seconds", "a request's batch generation plus its decode",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.audio = Counter("magnet_fast_audio_seconds", "seconds of audio (or tokens) produced", ["model"],
                             registry=r)
        self.drops = Counter("magnet_fast_dropped", "requests dropped before their batch started",
                             ["model", "reason"], registry=r)

    # called by the scheduler (worker threads; prometheus_client is thread-safe)
    def queue_depth(self, model: str, n: int) -> None:
        self.queue.labels(model).set(n)

    def batch(self, model: str, n: int, padded: int) -> None:
        self.batches.labels(model).inc()
        self.batch_size.labels(model).observe(n)
        if padded > n:
            self.padded_rows.labels(model).inc(padded - n)

    def dropped(self, model: str, reason: str) -> None:
        self.drops.labels(model, reason).inc()

    def finished(self, model: str, req, result) -> None:
        if result.status == 200:
            self.audio.labels(model).inc(result.audio_s)
            self.compute.labels(model).observe(result.compute_s)
        if result.status != 504:
            self.queue_wait.labels(model).observe(result.queue_s)

    # called by the HTTP side
    def request(self, model: str, status: int, latency_s: float | None = None) -> None:
        self.requests.labels(model, str(status)).inc()
        if latency_s is not None:
            self.latency.labels(model).observe(latency_s)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

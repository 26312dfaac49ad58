"""The server's Prometheus metrics, through `prometheus_client` on a registry of its own (one per server,
so several servers in one process never share or collide), exposed on the REST port.

Labels come from a bounded set: a request for a model or version that is not loaded is counted under
`model="unknown"` / `version="unknown"`, so clients cannot grow the label space.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, Optional, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REQUEST_LABELS = ("model", "version", "api", "status")
UNKNOWN = "unknown"
PREFIX = "revnet_serving"


class HistogramSnapshot:
    """A histogram's state as plain numbers: `buckets` (upper bounds), per-bucket `counts` (the last
    one is +Inf, not cumulative), `total` (sum of observations) and `count`."""

    def __init__(self, histogram: Histogram, buckets):
        cumulative, self.total, self.count = [], 0.0, 0
        for metric in histogram.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    cumulative.append(int(sample.value))
                elif sample.name.endswith("_sum"):
                    self.total = sample.value
                elif sample.name.endswith("_count"):
                    self.count = int(sample.value)
        self.buckets = buckets
        self.counts = [now - before for now, before in zip(cumulative, [0] + cumulative[:-1], strict=True)]


class Metrics:
    """Request counts and latency by (model, version, api, status), batch sizes, queue depths, model loads."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._served_lock = threading.Lock()
        self._served: Dict[str, frozenset] = {}
        register = {"registry": self.registry}
        self.requests = Counter(f"{PREFIX}_requests", "Requests by model, version, API and status.", REQUEST_LABELS,
                                **register)
        self.latency = Histogram(f"{PREFIX}_request_latency_seconds", "Request latency by model, version, API and "
                                 "status.", REQUEST_LABELS, buckets=LATENCY_BUCKETS_SECONDS, **register)
        self.batch_size = Histogram(f"{PREFIX}_batch_size_rows", "Rows per backend run (dynamic batches).",
                                    buckets=BATCH_BUCKETS_ROWS, **register)
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting in a server queue (batch: for the "
                                 "dynamic batcher; decode: image requests decoding or waiting to).", ["queue"],
                                 **register)
        self.model_loads = Counter(f"{PREFIX}_model_loads", "Model version load attempts by outcome (ok, error).",
                                   ["model", "version", "status"], **register)
        self.warmup_requests = Counter(f"{PREFIX}_warmup_requests", "Warm-up requests replayed while loading a "
                                       "version (assets.extra/tf_serving_warmup_requests).", ["model", "version"],
                                       **register)
        self.model_version = Gauge(f"{PREFIX}_model_version", "Highest version served, by model.", ["model"],
                                   **register)
        self.versions_served = Gauge(f"{PREFIX}_versions_served", "Versions served, by model.", ["model"], **register)

    def set_served(self, served: Dict[str, Sequence[int]]) -> None:
        """The models and versions now served (at start and after each load, unload or config reload)."""
        served = {name: frozenset(versions) for name, versions in served.items()}
        with self._served_lock:
            gone, self._served = set(self._served) - set(served), served
        for name, versions in served.items():
            self.model_version.labels(model=name).set(max(versions) if versions else 0)
            self.versions_served.labels(model=name).set(len(versions))
        for name in gone:
            self.model_version.remove(name)
            self.versions_served.remove(name)

    def watch_queue(self, queue: str, depth: Callable[[], float]) -> None:
        """Report `depth()` as the queue's depth at every scrape."""
        self.queue_depth.labels(queue=queue).set_function(depth)

    def labels_for(self, name: Optional[str], version: Optional[int]) -> tuple:
        """(model, version) label values for a request's model spec: a model or version that is not served
        counts as UNKNOWN (so clients cannot create label values); "" is the only model, None its highest version."""
        served = self._served
        if not name and len(served) == 1:
            name = next(iter(served))
        if name not in served:
            return UNKNOWN, UNKNOWN
        versions = served[name]
        if version is None and versions:
            version = max(versions)
        return name, str(version) if version in versions else UNKNOWN

    def record_request(self, api: str, status: str, seconds: float, model: str = UNKNOWN,
                       version: str = UNKNOWN) -> None:
        labels = {"model": model, "version": version, "api": api, "status": status}
        self.requests.labels(**labels).inc()
        self.latency.labels(**labels).observe(seconds)

    def record_batch(self, rows: int) -> None:
        self.batch_size.observe(rows)

    def record_load(self, name: str, version: int, ok: bool, warmup_requests: int = 0) -> None:
        self.model_loads.labels(model=name, version=str(version), status="ok" if ok else "error").inc()
        if warmup_requests:
            self.warmup_requests.labels(model=name, version=str(version)).inc(warmup_requests)

    def request_count(self, api: str, status: str) -> int:
        """Requests counted for an API and status, over every model and version."""
        return int(sum(sample.value for metric in self.requests.collect() for sample in metric.samples
                       if sample.name.endswith("_total") and sample.labels["api"] == api
                       and sample.labels["status"] == status))

    @property
    def batch_rows(self) -> HistogramSnapshot:
        """The batch-size histogram as numbers (benchmarks read rows per batch from it)."""
        return HistogramSnapshot(self.batch_size, BATCH_BUCKETS_ROWS)

    def render(self) -> bytes:
        """The exposition text, served with `CONTENT_TYPE`."""
        return generate_latest(self.registry)

    CONTENT_TYPE = CONTENT_TYPE_LATEST

"""Prometheus text-format metrics (no client library needed): request counts, latency and batch sizes."""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str):
        cumulative = 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            yield f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}'
        wrapped = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{wrapped} {self.total:.6f}"
        yield f"{name}_count{wrapped} {self.count}"


class Metrics:
    PREFIX = "revnet_serving"

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = defaultdict(int)  # (method, code) -> count
        self.latency = {}  # method -> histogram
        self.batch_rows = _Histogram(BATCH_BUCKETS_ROWS)
        self.model_version = 0

    def record_request(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.requests[(method, code)] += 1
            self.latency.setdefault(method, _Histogram(LATENCY_BUCKETS_SECONDS)).observe(seconds)

    def record_batch(self, rows: int) -> None:
        with self._lock:
            self.batch_rows.observe(rows)

    def render(self) -> str:
        p = self.PREFIX
        with self._lock:
            lines = [f"# HELP {p}_requests_total Requests by method and status code.", f"# TYPE {p}_requests_total counter"]
            lines += [f'{p}_requests_total{{method="{m}",code="{c}"}} {n}' for (m, c), n in sorted(self.requests.items())]
            lines += [f"# HELP {p}_request_latency_seconds Request latency.", f"# TYPE {p}_request_latency_seconds histogram"]
            for method, histogram in sorted(self.latency.items()):
                lines += histogram.lines(f"{p}_request_latency_seconds", f'method="{method}"')
            lines += [f"# HELP {p}_batch_size_rows Rows per backend run (dynamic batches).",
                      f"# TYPE {p}_batch_size_rows histogram"]
            lines += self.batch_rows.lines(f"{p}_batch_size_rows", "")
            lines += [f"# HELP {p}_model_version Version being served.", f"# TYPE {p}_model_version gauge",
                      f"{p}_model_version {self.model_version}"]
        return "\n".join(lines) + "\n"

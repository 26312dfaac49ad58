"""Serving throughput and latency: loopback gRPC at batch 1 (1/8/32 clients, dynamic batching on and off,
ONNX Runtime and TensorFlow backends) next to raw in-process backend calls, so the serving overhead shows.

The clients are threads in the benchmark process, talking to the server over 127.0.0.1; request counts
are bounded (`requests_per_client`), so the default run stays in the order of a minute or two on 2 cores.
Client and server share the machine's cores (and the client threads one GIL), as they would on one host.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np

from revnet.common.errors import UserError, choose

log = logging.getLogger(__name__)

FIELDS = ("backend", "path", "batching", "clients", "batch", "requests", "req_per_s", "images_per_s", "p50_ms",
          "p99_ms", "mean_batch_rows")
RAW_REQUESTS = 200
RAW_BATCH = 32
TOTAL_REQUESTS_PER_CONFIG = 192
WARMUP_REQUESTS = 8


def _percentiles_ms(latencies_seconds) -> Dict[str, float]:
    values = np.asarray(latencies_seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


def _export_random_model(root: str) -> str:
    """A randomly initialised revnet-38 (10 classes) exported in both formats; returns OUTPUT/NAME."""
    from revnet.models import build_model
    from revnet.serving.exporter import export
    from revnet.train.experiment import create_experiment

    workdir = os.path.join(root, "experiments")
    create_experiment(workdir, "bench", build_model("revnet-38", num_classes=10), train={},
                      data={"label_names": [f"class_{i}" for i in range(10)]})
    record = export(exp_id="bench", workdir=workdir, output=os.path.join(root, "exports"), format="all", name="revnet")
    return os.path.dirname(record["path"])


def raw_rows(model_dir: str, backend: str, version: int, raw_requests: int = RAW_REQUESTS) -> List[Dict]:
    """In-process backend calls, no server: batch 1 latency and batch RAW_BATCH throughput."""
    from revnet.serving.backends import load_servable

    servable = load_servable(model_dir, version, backend)
    size = servable.input_size
    rng = np.random.RandomState(0)
    one = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    many = rng.uniform(0, 255, (RAW_BATCH, size, size, 3)).astype(np.float32)
    for _ in range(WARMUP_REQUESTS):
        servable.run(one)
    servable.run(many)
    latencies = []
    started = time.perf_counter()
    for _ in range(raw_requests):
        tick = time.perf_counter()
        servable.run(one)
        latencies.append(time.perf_counter() - tick)
    elapsed = time.perf_counter() - started
    rows = [{"backend": backend, "path": "in-process", "batching": "-", "clients": 1, "batch": 1,
             "requests": raw_requests, "req_per_s": round(raw_requests / elapsed, 1),
             "images_per_s": round(raw_requests / elapsed, 1), **_percentiles_ms(latencies), "mean_batch_rows": 1.0}]
    repeats = max(3, raw_requests // RAW_BATCH)
    latencies = []
    started = time.perf_counter()
    for _ in range(repeats):
        tick = time.perf_counter()
        servable.run(many)
        latencies.append(time.perf_counter() - tick)
    elapsed = time.perf_counter() - started
    rows.append({"backend": backend, "path": "in-process", "batching": "-", "clients": 1, "batch": RAW_BATCH,
                 "requests": repeats, "req_per_s": round(repeats / elapsed, 1),
                 "images_per_s": round(repeats * RAW_BATCH / elapsed, 1), **_percentiles_ms(latencies),
                 "mean_batch_rows": float(RAW_BATCH)})
    return rows


def grpc_row(model_dir: str, backend: str, clients: int, requests_per_client: int, batching: bool,
             max_batch_size: int, batch_timeout_ms: float) -> Dict:
    """`clients` threads each send `requests_per_client` batch-1 Predict requests over loopback gRPC."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from revnet.serving.server import start_server
    from revnet.serving.tensors import make_tensor_proto

    handle = start_server(model_dir=model_dir, backend=backend, port=0, rest_port=None, max_batch_size=max_batch_size,
                          batch_timeout_ms=batch_timeout_ms if batching else 0, workers=max(8, clients + 4),
                          poll_seconds=3600)
    try:
        size = handle.repository.current().input_size
        request = predict_pb2.PredictRequest()
        request.model_spec.name = handle.repository.name
        request.inputs["images"].CopyFrom(make_tensor_proto(
            np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)))
        request.output_filter.append("probabilities")
        channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(WARMUP_REQUESTS):
            stub.Predict(request, timeout=60)
        before = (handle.metrics.batch_rows.total, handle.metrics.batch_rows.count)
        latencies, errors, lock = [], [], threading.Lock()

        def client():
            mine = []
            for _ in range(requests_per_client):
                tick = time.perf_counter()
                try:
                    stub.Predict(request, timeout=60)
                except grpc.RpcError as error:
                    with lock:
                        errors.append(error.code().name)
                    continue
                mine.append(time.perf_counter() - tick)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        channel.close()
        if errors:
            raise RuntimeError(f"{len(errors)} benchmark requests failed, e.g. {errors[0]}")
        rows_total = handle.metrics.batch_rows.total - before[0]
        batches = handle.metrics.batch_rows.count - before[1]
    finally:
        handle.stop()
    count = clients * requests_per_client
    return {"backend": backend, "path": "grpc", "batching": "on" if batching else "off", "clients": clients, "batch": 1,
            "requests": count, "req_per_s": round(count / elapsed, 1), "images_per_s": round(count / elapsed, 1),
            **_percentiles_ms(latencies), "mean_batch_rows": round(rows_total / max(batches, 1), 2)}


def run_serve_benchmark(model_dir: Optional[str] = None, concurrency=(1, 8, 32), backends=("onnx", "tf"),
                        requests_per_client: Optional[int] = None, max_batch_size: int = 32,
                        batch_timeout_ms: float = 5.0, raw_requests: int = RAW_REQUESTS) -> List[Dict]:
    """All rows of one run (see the module docstring)."""
    from revnet.serving import layout

    for backend in backends:
        choose("backend", backend, ("onnx", "tf"))
    if any(c < 1 for c in concurrency):
        raise UserError(f"--concurrency values must be at least 1, got {list(concurrency)}")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as root:
        model_dir = model_dir or _export_random_model(root)
        versions = layout.list_versions(model_dir)
        if not versions:
            raise UserError(f"{model_dir!r} has no version folders; run `cli.py export --format all` first")
        rows = []
        for backend in backends:
            log.info("raw %s", backend)
            rows += raw_rows(model_dir, backend, versions[-1], raw_requests)
            for batching in (False, True):
                for clients in concurrency:
                    per_client = requests_per_client or max(4, TOTAL_REQUESTS_PER_CONFIG // clients)
                    log.info("grpc %s batching=%s clients=%d x %d requests", backend, batching, clients, per_client)
                    rows.append(grpc_row(model_dir, backend, clients, per_client, batching, max_batch_size,
                                         batch_timeout_ms))
    return rows


def format_rows(rows: List[Dict]) -> str:
    widths = {field: max(len(field), *(len(str(row[field])) for row in rows)) for field in FIELDS}
    lines = ["  ".join(field.rjust(widths[field]) for field in FIELDS)]
    lines += ["  ".join(str(row[field]).rjust(widths[field]) for field in FIELDS) for row in rows]
    return "\n".join(lines)

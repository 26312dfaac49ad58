"""Serving speed in one run: the backends in-process (ONNX Runtime fp32 and int8, TensorFlow) at batch 1
and 32, then loopback gRPC at batch 1 with 1/8/32 clients, dynamic batching off and on, for both
backends; the server's own overhead (gRPC throughput at the most clients, batching on, divided by the
in-process throughput at the mean batch size the batcher reached, same session options); and the
targets, each as a measured ratio against its bound.

The server runs in this process, as `serve` runs it; the clients run in a separate process (threads
there, one channel), so their request building and the server share the cores but not a GIL. Request
counts are bounded, so a default run takes a few minutes on 2 cores. `--profile` adds ONNX Runtime's
per-operator times at batch 32, which show what bounds a missed target.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np

from revnet.common.errors import UserError, choose
from revnet.common.fileio import read_json

log = logging.getLogger(__name__)

FIELDS = ("backend", "path", "batching", "clients", "batch", "threads", "requests", "req_per_s", "images_per_s",
          "p50_ms", "p99_ms", "mean_batch_rows", "server_cpu_ms", "client_cpu_ms")
TARGET_FIELDS = ("target", "measured", "bound", "met")
PROFILE_FIELDS = ("model", "batch", "op", "ms_per_run", "share")
BATCHES = (1, 32)
IN_PROCESS_SECONDS = 3.0    # per (backend, batch): enough calls for stable percentiles, bounded in time
IN_PROCESS_MAX_CALLS = 300
TOTAL_REQUESTS_PER_CONFIG = 192
WARMUP_CALLS = 8
INT8_AGREEMENT_BOUND = 0.99


def _percentiles_ms(latencies_seconds) -> Dict[str, float]:
    values = np.asarray(latencies_seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


def _row(backend, path, batching, clients, batch, threads, requests, elapsed, latencies, mean_batch_rows,
         server_cpu_seconds, client_cpu_seconds=None) -> Dict:
    """One measurement; the CPU columns are CPU milliseconds per image, in the serving (this) process
    and in the client process: together they show where the cores went."""
    images = requests * batch
    return {"backend": backend, "path": path, "batching": batching, "clients": clients, "batch": batch,
            "threads": threads, "requests": requests, "req_per_s": round(requests / elapsed, 1),
            "images_per_s": round(images / elapsed, 1), **_percentiles_ms(latencies),
            "mean_batch_rows": mean_batch_rows, "server_cpu_ms": round(1000 * server_cpu_seconds / images, 2),
            "client_cpu_ms": "-" if client_cpu_seconds is None else round(1000 * client_cpu_seconds / images, 2)}


def _export(root: str, experiment: Optional[str], workdir: Optional[str]) -> str:
    """Export `experiment` (or a randomly initialised revnet-38, 10 classes) with int8; returns OUTPUT/NAME."""
    from revnet.serving.exporter import export

    if experiment is None:
        from revnet.models import build_model
        from revnet.train.train_config import DataConfig
        from revnet.train.experiment import create_experiment

        workdir, experiment = os.path.join(root, "experiments"), "bench"
        create_experiment(workdir, experiment, build_model("revnet-38", num_classes=10),
                          DataConfig(dir=None, label_names=tuple(f"class_{i}" for i in range(10))))
    record = export(exp_id=experiment, workdir=workdir, output=os.path.join(root, "exports"), format="all",
                    name="revnet", quantize="int8")
    return os.path.dirname(record["path"])


def _threads(servable):
    """ORT's intra-op threads; TensorFlow sizes its own pools to every core."""
    return getattr(servable, "session_record", {}).get("intra_op_num_threads", "all")


def _servable(model_dir: str, version: int, backend: str, session_config):
    from revnet.serving import layout
    from revnet.serving.backends import load_servable

    if backend == "onnx-int8":
        return load_servable(model_dir, version, "onnx", layout.ONNX_INT8_FILE, session_config=session_config)
    return load_servable(model_dir, version, backend, session_config=session_config)


def in_process_row(servable, backend: str, batch: int, threads, seconds: float = IN_PROCESS_SECONDS) -> Dict:
    """Back-to-back `servable.run` calls at `batch` for about `seconds` (no server)."""
    images = np.random.RandomState(batch).uniform(0, 255, (batch, servable.input_size, servable.input_size, 3))
    images = images.astype(np.float32)
    for _ in range(WARMUP_CALLS):
        servable.run(images)
    latencies = []
    cpu_started, started = time.process_time(), time.perf_counter()
    while len(latencies) < IN_PROCESS_MAX_CALLS and (len(latencies) < 10 or time.perf_counter() - started < seconds):
        tick = time.perf_counter()
        servable.run(images)
        latencies.append(time.perf_counter() - tick)
    elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return _row(backend, "in-process", "-", 1, batch, threads, len(latencies), elapsed, latencies, float(batch),
                cpu_seconds)


def client_worker(spec: Dict) -> Dict:
    """The load generator (its own process): `clients` threads send batch-1 Predict requests."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from revnet.serving.tensors import make_tensor_proto

    size = spec["input_size"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec["model"]
    request.inputs["images"].CopyFrom(make_tensor_proto(
        np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)))
    request.output_filter.append("probabilities")
    channel = grpc.insecure_channel(f"127.0.0.1:{spec['port']}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for _ in range(WARMUP_CALLS):
        stub.Predict(request, timeout=60)
    latencies, errors, lock = [], [], threading.Lock()
    start_line = threading.Barrier(spec["clients"] + 1)

    def client():
        mine = []
        start_line.wait()
        for _ in range(spec["requests_per_client"]):
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

    threads = [threading.Thread(target=client) for _ in range(spec["clients"])]
    for thread in threads:
        thread.start()
    start_line.wait()
    cpu_started, started = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    channel.close()
    return {"latencies": latencies, "elapsed": elapsed, "cpu_seconds": cpu_seconds, "errors": errors}


def grpc_row(model_dir: str, backend: str, clients: int, requests_per_client: int, batching: bool,
             max_batch_size: int, batch_timeout_ms: float, intra_op_threads: int = 0) -> Dict:
    """One server configuration under `clients` concurrent batch-1 clients (from another process)."""
    from revnet.benchmarks.worker import run_worker
    from revnet.serving.server import start_server

    handle = start_server(model_dir=model_dir, backend=backend, port=0, rest_port=None, max_batch_size=max_batch_size,
                          batch_timeout_ms=batch_timeout_ms if batching else 0, workers=max(8, clients + 4),
                          poll_seconds=3600, intra_op_threads=intra_op_threads)
    try:
        servable = handle.repository.current()
        threads = _threads(servable)
        spec = {"port": handle.port, "model": handle.repository.name, "input_size": servable.input_size,
                "clients": clients, "requests_per_client": requests_per_client}
        before = (handle.metrics.batch_rows.total, handle.metrics.batch_rows.count)
        cpu_started = time.process_time()
        result = run_worker("revnet.benchmarks.serve", spec, f"gRPC clients ({backend}, {clients})",
                            timeout_seconds=900)
        # The server's CPU over the client process's life: the load phase plus its warm-up requests,
        # whose share is taken off pro rata.
        count = clients * requests_per_client
        server_cpu_seconds = (time.process_time() - cpu_started) * count / (count + WARMUP_CALLS)
        # The client's warm-up requests are serial, so each ran alone: exactly WARMUP_CALLS rows in as many batches.
        rows_total = handle.metrics.batch_rows.total - before[0] - WARMUP_CALLS
        batches = handle.metrics.batch_rows.count - before[1] - WARMUP_CALLS
    finally:
        handle.stop()
    if result["errors"]:
        raise RuntimeError(f"{len(result['errors'])} benchmark requests failed, e.g. {result['errors'][0]}")
    return _row(backend, "grpc", "on" if batching else "off", clients, 1, threads, count,
                result["elapsed"], result["latencies"], round(rows_total / max(batches, 1), 2), server_cpu_seconds,
                result["cpu_seconds"])


def profile_rows(model_dir: str, version: int, batch: int = 32, runs: int = 20, top: int = 8) -> List[Dict]:
    """ONNX Runtime's profiler: time per operator type per run, fp32 and int8, serving session options."""
    from revnet.serving import layout
    from revnet.serving.ort_session import DEDICATED, create_session

    rows = []
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as folder:
        for name in (layout.ONNX_FILE, layout.ONNX_INT8_FILE):
            path = os.path.join(model_dir, str(version), name)
            if not os.path.exists(path):
                continue
            session, _ = create_session(path, DEDICATED, profile_prefix=os.path.join(folder, "profile"))
            size = session.get_inputs()[0].shape[1]
            images = np.random.RandomState(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
            for _ in range(runs):
                session.run(None, {"images": images})
            with open(session.end_profiling(), "r", encoding="utf-8") as handle:
                events = json.load(handle)
            per_op = collections.Counter()
            for event in events:
                if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                    per_op[event["args"]["op_name"]] += event["dur"]
            total = sum(per_op.values()) or 1
            rows.append({"model": name, "batch": batch, "op": "(all)", "ms_per_run": round(total / runs / 1000, 2),
                         "share": 1.0})
            rows += [{"model": name, "batch": batch, "op": op, "ms_per_run": round(micros / runs / 1000, 2),
                      "share": round(micros / total, 3)} for op, micros in per_op.most_common(top)]
    return rows


def _find(rows, **match) -> Optional[Dict]:
    return next((row for row in rows if all(row.get(k) == v for k, v in match.items())), None)


def targets(rows: List[Dict], record: Dict, most_clients: int) -> List[Dict]:
    """The issue's targets as measured ratios (None where this run did not measure both sides)."""
    def ratio(numerator, denominator):
        return round(numerator / denominator, 2) if numerator is not None and denominator else None

    def value(field, **match):
        row = _find(rows, **match)
        return row[field] if row else None

    int8 = record.get("onnx", {}).get("int8", {})
    def in_process(field, backend, batch):
        return value(field, backend=backend, path="in-process", batch=batch)

    result = [
        ("ORT fp32 batch-1 p50 latency / TF's",
         ratio(in_process("p50_ms", "onnx", 1), in_process("p50_ms", "tf", 1)), "<=", 0.5),
        ("ORT fp32 batch-32 images/s / TF's",
         ratio(in_process("images_per_s", "onnx", 32), in_process("images_per_s", "tf", 32)), ">=", 1.2),
        ("ORT int8 batch-32 images/s / fp32's",
         ratio(in_process("images_per_s", "onnx-int8", 32), in_process("images_per_s", "onnx", 32)), ">=", 1.5),
        (f"int8 top-1 agreement ({int8.get('evaluation_images', {}).get('count', 0)} "
         f"{int8.get('evaluation_images', {}).get('source', '?').split(':')[0]} images, export.json)",
         int8.get("top1_agreement_with_float"), ">=", INT8_AGREEMENT_BOUND)]
    for backend in ("onnx", "tf"):
        grpc = _find(rows, backend=backend, path="grpc", batching="on", clients=most_clients)
        local = _find(rows, backend=backend, path="in-process", clients=1, batching="at grpc mean batch")
        result.append((f"{backend} gRPC {most_clients} clients batched / in-process at its mean batch",
                       ratio(grpc and grpc["images_per_s"], local and local["images_per_s"]), ">=", 0.8))
        eight = dict(backend=backend, path="grpc", batching="on", clients=8)
        result.append((f"{backend} gRPC 8 clients batched p99 / p50",
                       ratio(value("p99_ms", **eight), value("p50_ms", **eight)), "<=", 3.0))

    def met(measured, sign, bound):
        if measured is None:
            return "-"
        return "yes" if (measured <= bound if sign == "<=" else measured >= bound) else "NO"
    return [{"target": name, "measured": measured, "bound": f"{sign} {bound:g}", "met": met(measured, sign, bound)}
            for name, measured, sign, bound in result]


def run_serve_benchmark(model_dir: Optional[str] = None, concurrency=(1, 8, 32), backends=("onnx", "tf"),
                        requests_per_client: Optional[int] = None, max_batch_size: int = 32,
                        batch_timeout_ms: float = 5.0, in_process_seconds: float = IN_PROCESS_SECONDS,
                        intra_op_threads: int = 0, experiment: Optional[str] = None, workdir: Optional[str] = None,
                        profile: bool = False) -> Dict[str, List[Dict]]:
    """{"rows", "targets", "profile", "export"}: everything one run measured (see the module docstring)."""
    from revnet.serving import layout
    from revnet.serving.ort_session import DEDICATED, SessionConfig

    for backend in backends:
        choose("backend", backend, ("onnx", "tf"))
    if any(c < 1 for c in concurrency):
        raise UserError(f"--concurrency values must be at least 1, got {list(concurrency)}")
    if model_dir and experiment:
        raise UserError("give --model-dir (an existing export) or --experiment (exported now), not both")
    exported_here = model_dir is None
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as root:
        model_dir = model_dir or _export(root, experiment, workdir)
        versions = layout.list_versions(model_dir)
        if not versions:
            raise UserError(f"{model_dir!r} has no version folders; run `cli.py export --format all` first")
        version = versions[-1]
        record = read_json(os.path.join(model_dir, str(version), layout.EXPORT_FILE))
        rows = []
        # In-process, every backend gets every core (ORT: DEDICATED options): this compares the runtimes.
        local = [b for b in ("onnx", "onnx-int8", "tf") if b.split("-")[0] in backends and
                 (b != "onnx-int8" or os.path.exists(os.path.join(model_dir, str(version), layout.ONNX_INT8_FILE)))]
        for backend in local:
            servable = _servable(model_dir, version, backend, DEDICATED)
            threads = _threads(servable)
            for batch in BATCHES:
                log.info("in-process %s batch %d", backend, batch)
                rows.append(in_process_row(servable, backend, batch, threads, in_process_seconds))
        for backend in backends:
            for batching in (False, True):
                for clients in concurrency:
                    per_client = requests_per_client or max(4, TOTAL_REQUESTS_PER_CONFIG // clients)
                    log.info("grpc %s batching=%s clients=%d x %d requests", backend, batching, clients, per_client)
                    rows.append(grpc_row(model_dir, backend, clients, per_client, batching, max_batch_size,
                                         batch_timeout_ms, intra_op_threads))
            # The server's overhead: in-process at the batch size the batcher reached, with the server's threads.
            batched = _find(rows, backend=backend, path="grpc", batching="on", clients=max(concurrency))
            servable = _servable(model_dir, version, backend, SessionConfig(intra_op_threads=intra_op_threads))
            threads = _threads(servable)
            row = in_process_row(servable, backend, max(1, int(round(batched["mean_batch_rows"]))), threads,
                                 in_process_seconds)
            rows.append({**row, "batching": "at grpc mean batch"})
        profiled = profile_rows(model_dir, version) if profile else []
    export_summary = {"model": "random revnet-38" if exported_here and not experiment else record.get("experiment"),
                      "onnx_ops": record.get("onnx", {}).get("ops"),
                      "int8": {k: v for k, v in record.get("onnx", {}).get("int8", {}).items() if k != "ops"}}
    return {"rows": rows, "targets": targets(rows, record, max(concurrency)), "profile": profiled,
            "export": [export_summary]}


def _table(rows: List[Dict], fields) -> str:
    widths = {field: max(len(field), *(len(str(row[field])) for row in rows)) for field in fields}
    lines = ["  ".join(field.rjust(widths[field]) for field in fields)]
    lines += ["  ".join(str(row[field]).rjust(widths[field]) for field in fields) for row in rows]
    return "\n".join(lines)


def format_report(report: Dict[str, List[Dict]]) -> str:
    parts = [_table(report["rows"], FIELDS), "", _table(report["targets"], TARGET_FIELDS)]
    if report.get("profile"):
        parts += ["", "ONNX Runtime profile (per operator type, in-process options: all cores, spinning):",
                  _table(report["profile"], PROFILE_FIELDS)]
    return "\n".join(parts)


if __name__ == "__main__":
    from revnet.benchmarks.worker import worker_main

    worker_main(client_worker, "serve")

"""Issue 10's done-when, measured on a real `serve` subprocess on 127.0.0.1 with its default limits: 8
concurrent bomb requests of each kind, one kind after another, while one client keeps sending normal
32x32 requests. The server's RSS (sampled every 20 ms) must grow by less than 300 MB, every normal
request must be answered within 1 s, and the server must still stop cleanly on SIGTERM. Bounded: 9
kinds x 8 requests, a few seconds in all."""
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from revnet.serving.tensors import make_tensor_proto
from testkit.reliability_helpers import fill_bomb, http_status, jpeg_bomb, png_bomb, post_head, raw_http

pytestmark = pytest.mark.slow

CONCURRENT = 8
RSS_GROWTH_LIMIT_BYTES = 300 * 1024 * 1024
NORMAL_LATENCY_LIMIT_SECONDS = 1.0
PREDICT_PATH = "/v1/models/revnet:predict"


@pytest.fixture
def server_process(serving_env):
    command = [sys.executable, "-c", "from revnet.cli import main; main()", "serve", "--model-dir",
               serving_env["model_dir"], "--port", "0", "--rest-port", "0", "--poll-seconds", "3600",
               "--rest-timeout-seconds", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()  # "serving on port N, REST on M", once everything is bound
        ports = [int(word.strip(",")) for word in line.split() if word.strip(",").isdigit()]
        assert len(ports) == 2, f"unexpected start-up line {line!r} (exit code {process.poll()})"
        yield process, ports[0], ports[1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _predict(stub, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "revnet"
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if hasattr(value, "tensor_shape") else make_tensor_proto(value))
    try:
        stub.Predict(request, timeout=30)
        return "OK"
    except grpc.RpcError as error:
        return error.code().name


def _rest(port, head, body=b"", shut_write=False):
    return http_status(raw_http(port, head, body, timeout=10, shut_write=shut_write))


def _bombs(stub, rest_port):
    """kind -> (zero-argument call returning its status, the status it must get)."""
    png, jpeg = png_bomb(12000, 12000), jpeg_bomb(12000, 12000)  # 420 KB and 0.6 KB; 432 MB decoded each
    b64 = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()
    deep = b"[" * 2000 + b"]" * 2000
    return {
        "grpc png bomb": (lambda: _predict(stub, image_bytes=[png]), "INVALID_ARGUMENT"),
        "grpc jpeg bomb": (lambda: _predict(stub, image_bytes=[jpeg]), "INVALID_ARGUMENT"),
        "grpc fill bomb": (lambda: _predict(stub, images=fill_bomb([1, 30000, 30000, 3])), "INVALID_ARGUMENT"),
        "grpc 2^54+1 dims": (lambda: _predict(stub, images=fill_bomb([2 ** 54 + 1, 32, 32, 3])), "INVALID_ARGUMENT"),
        "rest png bomb": (lambda: _rest(rest_port, post_head(PREDICT_PATH, str(len(b64))), b64), 400),
        "rest content-length -1": (lambda: _rest(rest_port, post_head(PREDICT_PATH, "-1"), b"x" * (4 << 20),
                                                 shut_write=True), 400),
        "rest content-length abc": (lambda: _rest(rest_port, post_head(PREDICT_PATH, "abc"), b"{}"), 400),
        "rest deep json": (lambda: _rest(rest_port, post_head(PREDICT_PATH, str(len(deep))), deep), 400),
        "rest slow body": (lambda: _rest(rest_port, post_head(PREDICT_PATH, "100000"), b"{"), 408),
    }


def test_the_server_survives_bombs_and_keeps_answering(server_process):
    import psutil

    process, port, rest_port = server_process
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    normal = np.random.RandomState(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    for _ in range(10):  # warm up: ORT's first runs allocate its arenas
        assert _predict(stub, images=normal) == "OK"
    server = psutil.Process(process.pid)
    baseline_bytes = max(server.memory_info().rss for _ in range(5))
    peak, latencies, failures, stop = [baseline_bytes], [], [], threading.Event()

    def sample_rss():
        while not stop.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.02)

    def normal_client():
        while not stop.is_set():
            started = time.monotonic()
            status = _predict(stub, images=normal)
            latencies.append(time.monotonic() - started)
            if status != "OK":
                failures.append(status)
            time.sleep(0.02)

    threads = [threading.Thread(target=sample_rss), threading.Thread(target=normal_client)]
    for thread in threads:
        thread.start()
    outcomes = {}
    try:
        with ThreadPoolExecutor(CONCURRENT) as pool:
            for kind, (send, expected) in _bombs(stub, rest_port).items():
                statuses = list(pool.map(lambda _, send=send: send(), range(CONCURRENT), timeout=60))
                outcomes[kind] = (statuses, expected)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        channel.close()
    wrong = {kind: statuses for kind, (statuses, expected) in outcomes.items() if set(statuses) != {expected}}
    assert not wrong, wrong
    growth_mb = (peak[0] - baseline_bytes) / 2 ** 20
    print(f"RSS baseline {baseline_bytes / 2 ** 20:.0f} MB, peak growth {growth_mb:.0f} MB; {len(latencies)} normal "
          f"requests, max latency {max(latencies) * 1000:.0f} ms, p50 {np.median(latencies) * 1000:.0f} ms; "
          f"load average {os.getloadavg()[0]:.2f}")
    assert peak[0] - baseline_bytes < RSS_GROWTH_LIMIT_BYTES, f"RSS grew by {growth_mb:.0f} MB"
    assert not failures and len(latencies) >= 20
    assert max(latencies) < NORMAL_LATENCY_LIMIT_SECONDS, sorted(latencies)[-5:]
    assert process.poll() is None  # still running
    with socket.create_connection(("127.0.0.1", rest_port), timeout=5):
        pass  # and still accepting REST connections
    process.terminate()
    assert process.wait(timeout=20) == 0  # and it stops cleanly on SIGTERM

"""Hostile and unlucky requests against an in-process server (issue 10 items 1-6 and 9): bombs refused
from their headers, a bounded decode queue, abandoned work dropped, oversized requests split, NaN
refused, malformed or slow REST bodies answered 4xx without holding a thread, one log line per client
error. Small limits keep every case cheap."""
import base64
import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from revnet.common.errors import UserError
from revnet.serving.tensors import make_ndarray, make_tensor_proto
from testkit.reliability_helpers import fill_bomb, http_status, jpeg_bomb, png_bomb, post_head, raw_http

MAX_BATCH, MAX_ROWS, MAX_PIXELS = 4, 40, 1_000_000
PREDICT_PATH = "/v1/models/revnet:predict"


@pytest.fixture(scope="module")
def server(serving_env):
    from revnet.serving.server import start_server

    handle = start_server(model_dir=serving_env["model_dir"], backend="onnx", port=0, rest_port=0,
                          max_batch_size=MAX_BATCH, max_request_rows=MAX_ROWS, max_image_pixels=MAX_PIXELS,
                          batch_timeout_ms=2, decode_workers=1, decode_queue=1, rest_timeout_seconds=1.0,
                          rest_max_connections=8, rest_max_connections_per_client=7, poll_seconds=3600)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    yield {"handle": handle, "stub": prediction_service_pb2_grpc.PredictionServiceStub(channel)}
    channel.close()
    handle.stop()


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(3).uniform(0, 255, (12, 32, 32, 3)).astype(np.float32)


def request_for(signature="", **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "revnet"
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if hasattr(value, "tensor_shape") else make_tensor_proto(value))
    return request


def call(server, request, timeout=60):
    """(status code, response or error details)."""
    try:
        return grpc.StatusCode.OK, server["stub"].Predict(request, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details()


def bomb_requests():
    """(kind, request, expected detail) for every bomb the issue lists, scaled to this server's limits."""
    return [
        ("png bomb", request_for(image_bytes=[png_bomb(2000, 1000)]),
         "2,000,000 pixels exceeds the limit of 1,000,000"),
        ("jpeg bomb", request_for(image_bytes=[jpeg_bomb(12000, 12000)]), "144,000,000 pixels exceeds the limit"),
        ("fill bomb", request_for(images=fill_bomb([1, 30000, 30000, 3])), r"expected \[batch, 32, 32, 3\]"),
        ("2^54+1 rows", request_for(images=fill_bomb([2 ** 54 + 1, 32, 32, 3])), "exceeds the server limit of 40"),
        ("2^54+1 width", request_for(images=fill_bomb([1, 32, 2 ** 54 + 1, 3])), r"expected \[batch, 32, 32, 3\]"),
        ("too many strings", request_for(image_bytes=[b"x"] * (MAX_ROWS + 1)), "exceeds the server limit of 40"),
    ]


@pytest.mark.parametrize("index", range(len(bomb_requests())))
def test_bombs_are_invalid_argument_and_cost_nothing(server, images, index):
    kind, request, detail = bomb_requests()[index]
    code, details = call(server, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (kind, code, details)
    assert detail in details or __import__("re").search(detail, details), (kind, details)
    code, response = call(server, request_for(images=images[:1]))
    assert code == grpc.StatusCode.OK


def test_non_finite_and_out_of_range_pixels_are_refused(server, images):
    for value, message in ((np.nan, "non-finite"), (np.inf, "non-finite"), (-np.inf, "non-finite"),
                           (-0.5, "outside 0..255"), (255.5, "outside 0..255")):
        bad = images[:2].copy()
        bad[1, 5, 5, 1] = value
        code, details = call(server, request_for(images=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, (value, details)
    edge = images[:1].copy()
    edge[0, 0, 0] = [0.0, 255.0, 0.0]  # the range is inclusive
    assert call(server, request_for(images=edge))[0] == grpc.StatusCode.OK


def test_requests_over_the_batch_size_are_split_and_concatenated(server, serving_env, images):
    from revnet.serving.backends import load_servable

    direct = load_servable(serving_env["model_dir"], 1, "onnx").run(images[:10])
    metrics = server["handle"].metrics
    before = list(metrics.batch_rows.counts)
    code, response = call(server, request_for(images=images[:10]))  # 10 rows, batches of at most 4
    assert code == grpc.StatusCode.OK
    np.testing.assert_allclose(make_ndarray(response.outputs["probabilities"]), direct["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(make_ndarray(response.outputs["classes"]), direct["classes"])
    added = [after - was for after, was in zip(metrics.batch_rows.counts, before, strict=True)]
    buckets = list(metrics.batch_rows.buckets) + [float("inf")]
    assert sum(added) >= 3 and max(bound for bound, count in zip(buckets, added, strict=True) if count) <= MAX_BATCH
    code, response = call(server, request_for(image_bytes=serving_env["encoded"] * 2))  # 16 images
    assert code == grpc.StatusCode.OK and make_ndarray(response.outputs["classes"]).shape == (16,)
    code, details = call(server, request_for(images=np.zeros((MAX_ROWS + 1, 32, 32, 3), np.float32)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-request-rows" in details


@pytest.fixture
def slow_decode(monkeypatch):
    """Every image decode takes 0.4 s; `calls` counts decodes that started."""
    import revnet.serving.request_images as images_module

    original, calls = images_module.decode_image_numpy, []

    def slow(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(0.4)
        return original(*args, **kwargs)

    monkeypatch.setattr(images_module, "decode_image_numpy", slow)
    return calls


def _wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert predicate()


def test_a_full_decode_queue_is_resource_exhausted(server, serving_env, slow_decode, tmp_path):
    """1 decode thread + a queue of 1: a third concurrent image request is refused at once."""
    from revnet.serving.client import predict

    pool, png = server["handle"].decode_pool, serving_env["encoded"][:1]
    with ThreadPoolExecutor(2) as clients:
        first = [clients.submit(call, server, request_for(image_bytes=png)) for _ in range(2)]
        _wait_for(lambda: pool.in_flight == 2)
        started = time.monotonic()
        code, details = call(server, request_for(image_bytes=png))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "decode queue is full" in details
        assert time.monotonic() - started < 0.3  # refused, not queued
        image = tmp_path / "a.png"
        image.write_bytes(png[0])
        with pytest.raises(UserError, match="is busy .*decode queue is full.*retry later"):  # the CLI's client says so
            predict(server=f"127.0.0.1:{server['handle'].port}", images=[str(image)], timeout_seconds=5)
        assert [future.result()[0] for future in first] == [grpc.StatusCode.OK] * 2
    assert call(server, request_for(image_bytes=png))[0] == grpc.StatusCode.OK  # the slots came back


def test_abandoned_requests_are_dropped_before_decode_and_before_inference(server, serving_env, slow_decode):
    png, metrics = serving_env["encoded"][:1], server["handle"].metrics
    with ThreadPoolExecutor(1) as clients:
        busy = clients.submit(call, server, request_for(image_bytes=png))  # holds the only decode thread 0.4 s
        _wait_for(lambda: len(slow_decode) == 1)
        code, _ = call(server, request_for(image_bytes=png), timeout=0.15)  # expires while queued
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert busy.result()[0] == grpc.StatusCode.OK
    time.sleep(0.3)
    assert len(slow_decode) == 1  # the expired request was never decoded
    runs_before = metrics.batch_rows.count
    code, _ = call(server, request_for(image_bytes=png * 3), timeout=0.2)  # expires during its first decode
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.6)
    assert len(slow_decode) == 2  # stopped after the image it was decoding
    assert metrics.batch_rows.count == runs_before  # and never reached the model
    assert metrics.request_count("predict", "DEADLINE_EXCEEDED") >= 2


def test_a_rest_client_that_hangs_up_is_not_decoded_for(server, serving_env, slow_decode):
    import socket

    png = serving_env["encoded"][:1]
    body = json.dumps({"instances": [{"b64": base64.b64encode(png[0]).decode()}]}).encode()
    with ThreadPoolExecutor(1) as clients:
        busy = clients.submit(call, server, request_for(image_bytes=png))  # holds the only decode thread 0.4 s
        _wait_for(lambda: len(slow_decode) == 1)
        with socket.create_connection(("127.0.0.1", server["handle"].rest_port), timeout=5) as sock:
            sock.sendall(post_head(PREDICT_PATH, str(len(body))) + body)
            _wait_for(lambda: server["handle"].decode_pool.in_flight == 2)  # queued behind it
        assert busy.result()[0] == grpc.StatusCode.OK  # the client above has hung up meanwhile
    time.sleep(0.5)
    assert len(slow_decode) == 1 and server["handle"].decode_pool.in_flight == 0


# --- REST -------------------------------------------------------------------------------------------

def rest_post(server, body: bytes):
    port = server["handle"].rest_port
    response = raw_http(port, post_head(PREDICT_PATH, str(len(body))), body)
    head, _, payload = response.partition(b"\r\n\r\n")
    return http_status(response), payload


@pytest.mark.parametrize("length,body,status,message", [
    ("-1", b"x" * 1000, 400, "Content-Length must be a non-negative decimal integer"),
    ("abc", b"{}", 400, "Content-Length must be"),
    ("1e3", b"{}", 400, "Content-Length must be"),
    ("", b"", 400, "Content-Length must be"),
    (str(64 * 1024 * 1024 + 1), b"", 413, "exceeds the limit"),
])
def test_rest_content_length_is_checked_before_reading(server, length, body, status, message):
    response = raw_http(server["handle"].rest_port, post_head(PREDICT_PATH, length), body, timeout=5)
    assert http_status(response) == status, response[:300]
    assert message in json.loads(response.partition(b"\r\n\r\n")[2])["error"]


def _chunked(path: str, parts) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def test_rest_chunked_bodies_are_served_and_counted_against_the_limit(server, images):
    """A chunked body is read whole and served; one that streams past 64 MiB is 413 once past the limit."""
    body = json.dumps({"instances": images[:2].tolist()}).encode()
    parts = [body[i:i + 4096] for i in range(0, len(body), 4096)]
    response = raw_http(server["handle"].rest_port, _chunked(PREDICT_PATH, parts), timeout=30)
    assert http_status(response) == 200, response[:300]
    assert len(json.loads(response.partition(b"\r\n\r\n")[2])["predictions"]) == 2
    over = [b" " * (1 << 20)] * 65   # 65 MiB of whitespace, never valid to the end
    response = raw_http(server["handle"].rest_port, _chunked(PREDICT_PATH, over), timeout=30)
    assert http_status(response) == 413, response[:300]
    assert "chunked request body exceeds the limit" in json.loads(response.partition(b"\r\n\r\n")[2])["error"]


def test_an_unread_body_is_drained_so_a_client_still_sending_reads_the_answer(server):
    """A 404 answered before the body is read: the server reads and drops the rest of the body before it
    closes, so a client sending 16 MB finishes sending (no reset) and reads the answer."""
    body = b"x" * (16 << 20)
    with socket.create_connection(("127.0.0.1", server["handle"].rest_port), timeout=30) as sock:
        sock.sendall(post_head("/v1/not-a-path", str(len(body))) + body)   # a reset here fails the test
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert http_status(response) == 404, response[:300]
    assert "unknown path /v1/not-a-path" in json.loads(response.partition(b"\r\n\r\n")[2])["error"]


@pytest.mark.parametrize("body,message", [
    (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
    (b"[" * 100000, "nested too deeply"),
    (json.dumps({"instances": [[1.0]], "signature_name": ["serving_default"]}).encode(),
     "'signature_name' must be a string"),
    (json.dumps({"instances": [[[[0.0] * 3] * 32] * 32], "signature_name": 7}).encode(), "must be a string"),
    (b"{\"instances\": " + b"[" * 60 + b"1" + b"]" * 60 + b"}", "expected [batch, 32, 32, 3]"),
    (b"{\"instances\": [[[[NaN, 0, 0]]]]}", "shape"),
    (json.dumps({"instances": [1e400]}).encode(), "shape"),
    (json.dumps({"instances": [10 ** 400]}).encode(), "instances must be nested lists"),
    (b"\xff\xfe not utf-8", "not valid JSON"),
])
def test_rest_malformed_bodies_are_400(server, body, message):
    status, payload = rest_post(server, body)
    assert status == 400 and message in json.loads(payload)["error"], payload[:300]


def test_rest_non_finite_pixels_are_400_and_responses_never_hold_bare_nan(server, images, monkeypatch):
    rows = images[:1].copy()
    rows[0, 0, 0, 0] = np.nan
    body = json.dumps({"instances": rows.tolist()}).encode()  # json writes the bare NaN token
    status, payload = rest_post(server, body)
    assert status == 400 and "non-finite" in json.loads(payload)["error"]
    # A model that returns NaN is a server fault: 500 with strict JSON, never a NaN token.
    servable = server["handle"].repository.current()
    monkeypatch.setattr(servable, "run", lambda batch: {"probabilities": np.full((len(batch), 3), np.nan, np.float32),
                                                         "classes": np.zeros(len(batch), np.int64),
                                                         "logits": np.zeros((len(batch), 3), np.float32)})
    status, payload = rest_post(server, json.dumps({"instances": images[:1].tolist()}).encode())

    def refuse(token):
        raise ValueError(f"bare {token} in the response")

    assert status == 500 and "non-finite" in json.loads(payload, parse_constant=refuse)["error"]


def test_rest_slow_bodies_time_out_and_free_their_threads(server, images):
    """Connections that announce a body and never send it get 408 after --rest-timeout-seconds (1 s here);
    meanwhile other clients are served; afterwards every handler thread has finished."""
    import socket

    port = server["handle"].rest_port
    sockets = []
    for _ in range(6):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(post_head(PREDICT_PATH, "100000") + b"{\"inst")
        sockets.append(sock)
    started = time.monotonic()
    status, _ = rest_post(server, json.dumps({"instances": images[:1].tolist()}).encode())
    assert status == 200 and time.monotonic() - started < 1.0
    answers = []
    for sock in sockets:
        with sock:
            answers.append(sock.recv(65536))
    assert time.monotonic() - started < 4.0
    assert all(http_status(answer) == 408 for answer in answers), answers[0][:200]
    _wait_for(lambda: server["handle"].http_server.open_connections == 0, seconds=5)  # counted per handler thread


def _connect_from(source: str, port: int):
    """A connection to the server from `source`, another loopback address (all of 127/8 is this machine)."""
    import socket

    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _get_metrics_from(source: str, port: int) -> int:
    with _connect_from(source, port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return http_status(sock.recv(65536))


def test_rest_connections_over_the_cap_get_503(server):
    port = server["handle"].rest_port
    held = [_connect_from("127.0.0.1", port) for _ in range(7)] + [_connect_from("127.0.0.2", port)]
    try:
        _wait_for(lambda: server["handle"].http_server.open_connections == 8)
        assert _get_metrics_from("127.0.0.3", port) == 503
    finally:
        for sock in held:
            sock.close()
    _wait_for(lambda: server["handle"].http_server.open_connections == 0, seconds=5)
    assert http_status(raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)) == 200


def test_one_client_address_cannot_hold_every_rest_connection(server):
    """At --rest-max-connections-per-client (7 of 8 here) one more from that address is 429; another
    address is still served, and the first is served again once its connections close."""
    port = server["handle"].rest_port
    held = [_connect_from("127.0.0.1", port) for _ in range(7)]
    try:
        _wait_for(lambda: server["handle"].http_server.open_connections == 7)
        with _connect_from("127.0.0.1", port) as sock:
            answer = sock.recv(65536)
        assert http_status(answer) == 429 and b"--rest-max-connections-per-client" in answer
        assert b"Retry-After: 1" in answer
        assert _get_metrics_from("127.0.0.2", port) == 200
    finally:
        for sock in held:
            sock.close()
    _wait_for(lambda: server["handle"].http_server.open_connections == 0, seconds=5)
    assert _get_metrics_from("127.0.0.1", port) == 200


def test_a_silent_client_holds_its_slot_for_the_timeout_and_a_grace_not_twice_the_timeout(server, monkeypatch):
    """A body announced and never sent: 408 at the request deadline (1 s), then the server frees the
    connection's slot after at most DRAIN_GRACE_SECONDS more (0.2 s here), not after a second full timeout
    of draining, even though the client keeps its socket open."""
    from revnet.serving import rest

    monkeypatch.setattr(rest, "DRAIN_GRACE_SECONDS", 0.2)
    http_server = server["handle"].http_server
    _wait_for(lambda: http_server.open_connections == 0, seconds=5)
    with _connect_from("127.0.0.1", http_server.server_address[1]) as sock:
        started = time.monotonic()
        sock.sendall(post_head(PREDICT_PATH, "100000"))
        assert http_status(sock.recv(65536)) == 408
        _wait_for(lambda: http_server.open_connections == 0, seconds=5)
        freed = time.monotonic() - started
    assert 0.9 < freed < 1.75, freed


# --- Logging ----------------------------------------------------------------------------------------

def test_client_errors_log_one_line_and_only_server_faults_log_a_traceback(server, images, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="revnet")
    bad = [request for _, request, _ in bomb_requests()] + [
        request_for(images=images[:1].astype(np.int32)), request_for(image_bytes=[b"not an image"]),
        request_for(signature="nope", images=images[:1])]
    caplog.clear()
    for request in bad:
        assert call(server, request)[0] != grpc.StatusCode.OK
    for body in (b"[" * 2000, b"{\"instances\": 3}"):
        assert rest_post(server, body)[0] == 400
    records = [r for r in caplog.records if r.name.startswith("revnet")]
    assert len(records) == len(bad) + 2, [r.getMessage() for r in records]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    caplog.clear()
    servable = server["handle"].repository.current()
    monkeypatch.setattr(servable, "run", lambda batch: 1 / 0)
    code, details = call(server, request_for(images=images[:1]))
    assert code == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in details
    faults = [r for r in caplog.records if r.name.startswith("revnet")]
    assert len(faults) == 1 and faults[0].exc_info is not None


def test_b64_rest_bomb_is_400(server):
    body = json.dumps({"instances": [{"b64": base64.b64encode(png_bomb(2000, 1000)).decode()}]}).encode()
    status, payload = rest_post(server, body)
    assert status == 400 and "--max-image-pixels" in json.loads(payload)["error"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW"])
def test_rest_methods_it_does_not_serve_get_a_json_405(server, method):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server["handle"].rest_port, timeout=10)
    try:
        connection.request(method, "/v1/models/revnet:predict", body=b"{}" if method in ("PUT", "PATCH") else None)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 405 and response.getheader("Allow") == "GET, POST"
    assert response.getheader("Content-Type") == "application/json"
    if method == "HEAD":
        assert body == b""
    else:
        message = json.loads(body)["error"]
        assert method in message and "POST (predict, /v2 infer)" in message


def test_an_error_about_many_long_input_names_stays_within_grpc_limits(server):
    """1000 inputs with 2000-character names: INVALID_ARGUMENT naming a few and the count, not
    RESOURCE_EXHAUSTED from a status message over gRPC's metadata limit."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "revnet"
    for index in range(1000):
        request.inputs[f"{index:04d}" + "x" * 1996].CopyFrom(make_tensor_proto(np.zeros((1,), np.float32)))
    with pytest.raises(grpc.RpcError) as raised:
        server["stub"].Predict(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()[:300]
    details = raised.value.details()
    assert len(details) <= 1000 and "and 997 more" in details and "'0000xxx" in details

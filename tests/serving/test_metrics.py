"""Prometheus metrics on the REST port: the exposition parses, its counts reconcile with the requests sent
(ok and error statuses apart), both TF Serving's path and /metrics answer, and two servers in one
process keep their own registries."""
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from revnet.serving.tensors import make_tensor_proto

GOOD, BAD, UNKNOWN_MODEL = 5, 3, 2


def _start(serving_env):
    from revnet.serving.server import start_server

    return start_server(model_dir=serving_env["model_dir"], backend="onnx", port=0, rest_port=0, max_batch_size=8,
                        batch_timeout_ms=2, poll_seconds=3600)


@pytest.fixture(scope="module")
def server(serving_env):
    handle = _start(serving_env)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    yield handle, prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
    handle.stop()


def _request(images, model="revnet"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["images"].CopyFrom(make_tensor_proto(images))
    return request


def scrape(handle, path="/monitoring/prometheus/metrics"):
    """{sample name: {frozenset(labels): value}} and the response's content type."""
    with urllib.request.urlopen(f"http://127.0.0.1:{handle.rest_port}{path}", timeout=30) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples, content_type


def value(samples, name, **labels):
    return samples.get(name, {}).get(frozenset(labels.items()), 0.0)


def _send(stub, good, bad, unknown):
    images = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    for _ in range(good):
        stub.Predict(_request(images), timeout=60)
    for request, count in ((_request(images.astype(np.int32)), bad), (_request(images, model="nope"), unknown)):
        for _ in range(count):
            with pytest.raises(grpc.RpcError):
                stub.Predict(request, timeout=60)


def test_request_counts_reconcile_with_the_requests_sent(server):
    handle, stub = server
    _send(stub, GOOD, BAD, UNKNOWN_MODEL)
    samples, content_type = scrape(handle)
    assert content_type == CONTENT_TYPE_LATEST
    ok = dict(model="revnet", version="1", api="predict", status="OK")
    invalid = dict(ok, status="INVALID_ARGUMENT")
    not_found = dict(ok, model="unknown", version="unknown", status="NOT_FOUND")  # client names never become labels
    assert value(samples, "revnet_serving_requests_total", **ok) == GOOD
    assert value(samples, "revnet_serving_requests_total", **invalid) == BAD
    assert value(samples, "revnet_serving_requests_total", **not_found) == UNKNOWN_MODEL
    assert sum(samples["revnet_serving_requests_total"].values()) == GOOD + BAD + UNKNOWN_MODEL
    for labels, sent in ((ok, GOOD), (invalid, BAD), (not_found, UNKNOWN_MODEL)):
        assert value(samples, "revnet_serving_request_latency_seconds_count", **labels) == sent
        assert value(samples, "revnet_serving_request_latency_seconds_bucket", le="+Inf", **labels) == sent
    # Only the good requests reached the model: 2 rows each, run alone (the calls are sequential).
    assert value(samples, "revnet_serving_batch_size_rows_count") == GOOD
    assert value(samples, "revnet_serving_batch_size_rows_sum") == 2 * GOOD
    assert value(samples, "revnet_serving_batch_size_rows_bucket", le="1.0") == 0
    assert value(samples, "revnet_serving_batch_size_rows_bucket", le="2.0") == GOOD
    assert value(samples, "revnet_serving_queue_depth", queue="batch") == 0
    assert value(samples, "revnet_serving_queue_depth", queue="decode") == 0
    assert value(samples, "revnet_serving_model_loads_total", model="revnet", version="1", status="ok") == 1
    assert value(samples, "revnet_serving_model_version", model="revnet") == 1
    assert value(samples, "revnet_serving_versions_served", model="revnet") == 1
    assert scrape(handle, "/metrics")[0]["revnet_serving_requests_total"] == samples["revnet_serving_requests_total"]


def test_rest_requests_are_counted_by_http_status(server):
    handle, _ = server
    before, _ = scrape(handle)
    with urllib.request.urlopen(f"http://127.0.0.1:{handle.rest_port}/v1/models/revnet", timeout=30):
        pass
    request = urllib.request.Request(f"http://127.0.0.1:{handle.rest_port}/v1/models/revnet:predict",
                                     data=b'{"instances": "not a list"}')
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=30)
    status_ok = dict(model="revnet", version="1", api="rest_status", status="200")
    predict_bad = dict(model="revnet", version="1", api="rest_predict", status="400")

    def counted():
        # A handler counts its request after the answer went out: the client may scrape a moment before that.
        after, _ = scrape(handle)
        return [value(after, "revnet_serving_requests_total", **labels) -
                value(before, "revnet_serving_requests_total", **labels) for labels in (status_ok, predict_bad)]

    deadline = time.monotonic() + 10
    while counted() != [1, 1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted() == [1, 1]


def test_each_server_has_its_own_registry(server, serving_env):
    handle, _ = server
    other = _start(serving_env)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{other.port}")
        _send(prediction_service_pb2_grpc.PredictionServiceStub(channel), 1, 0, 0)
        channel.close()
        samples, _ = scrape(other)
        assert value(samples, "revnet_serving_requests_total", model="revnet", version="1", api="predict",
                     status="OK") == 1
    finally:
        other.stop()
    assert handle.metrics.registry is not other.metrics.registry

"""The gRPC server through TF Serving's own stubs (both backends), REST, health, metrics, bad inputs,
concurrency with mixed good and bad requests, hot reload, and the predict client."""
import base64
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from revnet.common.errors import UserError
from revnet.serving.tensors import make_ndarray, make_tensor_proto

MAX_BATCH = 8
MAX_ROWS = 20


@pytest.fixture(scope="module", params=["onnx", "tf"])
def server(request, serving_env):
    from revnet.serving.server import start_server

    handle = start_server(model_dir=serving_env["model_dir"], backend=request.param, port=0, rest_port=0,
                          max_batch_size=MAX_BATCH, max_request_rows=MAX_ROWS, batch_timeout_ms=3, workers=16,
                          poll_seconds=3600)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    yield {"handle": handle, "backend": request.param,
           "stub": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "models": model_service_pb2_grpc.ModelServiceStub(channel), "channel": channel}
    channel.close()
    handle.stop()


@pytest.fixture(scope="module")
def reference(serving_env):
    """Expected probabilities from the TF SavedModel itself, for float inputs and for the PNG test images."""
    import tensorflow as tf

    from revnet.serving.request_images import decode_images_numpy

    loaded = tf.saved_model.load(os.path.join(serving_env["model_dir"], "1"))
    images = np.random.RandomState(7).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    decoded = decode_images_numpy(serving_env["encoded"], 32, "cifar")
    run = loaded.signatures["serving_default"]
    return {"images": images, "probabilities": run(images=tf.constant(images))["probabilities"].numpy(),
            "decoded_probabilities": run(images=tf.constant(decoded))["probabilities"].numpy()}


def predict_request(model="revnet", signature="", version=None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if hasattr(value, "dtype") and not isinstance(value, np.ndarray)
                                      else make_tensor_proto(value))
    return request


def test_predict_images_and_output_filter(server, reference):
    response = server["stub"].Predict(predict_request(images=reference["images"]), timeout=60)
    assert set(response.outputs) == {"probabilities", "classes", "logits"}
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(make_ndarray(response.outputs["probabilities"]), reference["probabilities"], atol=1e-4)
    np.testing.assert_array_equal(make_ndarray(response.outputs["classes"]), reference["probabilities"].argmax(-1))
    request = predict_request(images=reference["images"][:2])
    request.output_filter.append("classes")
    assert set(server["stub"].Predict(request, timeout=60).outputs) == {"classes"}


def test_predict_image_bytes(server, serving_env, reference):
    response = server["stub"].Predict(predict_request(signature="predict_images", image_bytes=serving_env["encoded"]),
                                      timeout=60)
    np.testing.assert_allclose(make_ndarray(response.outputs["probabilities"]), reference["decoded_probabilities"],
                               atol=1e-4)


def test_classify_returns_label_names(server, serving_env, reference):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "revnet"
    for data in serving_env["encoded"][:3]:
        request.input.example_list.examples.add().features.feature["image/encoded"].bytes_list.value.append(data)
    response = server["stub"].Classify(request, timeout=60)
    assert len(response.result.classifications) == 3
    for row, expected in zip(response.result.classifications, reference["decoded_probabilities"][:3], strict=True):
        assert {c.label for c in row.classes} == {"cat", "dog", "ship"}
        assert row.classes[0].label == ["cat", "dog", "ship"][expected.argmax()]
        assert row.classes[0].score == pytest.approx(expected.max(), abs=1e-4)


def test_metadata_and_status(server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "revnet"
    response = server["stub"].GetModelMetadata(request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "predict_images"}
    assert list(signatures.signature_def["predict_images"].inputs) == ["image_bytes"]
    status = server["models"].GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "revnet"}),
                                             timeout=60)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_health_and_metrics(server, reference):
    server["stub"].Predict(predict_request(images=reference["images"][:1]), timeout=60)
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from prometheus_client.parser import text_string_to_metric_families

    health = health_pb2_grpc.HealthStub(server["channel"])
    for service in ("", "revnet"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
    text = urllib.request.urlopen(f"http://127.0.0.1:{server['handle'].rest_port}/metrics", timeout=30).read().decode()
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(text) for sample in family.samples}
    ok = (("api", "predict"), ("model", "revnet"), ("status", "OK"), ("version", "1"))
    assert samples[("revnet_serving_requests_total", ok)] >= 1
    assert samples[("revnet_serving_request_latency_seconds_count", ok)] >= 1
    assert samples[("revnet_serving_batch_size_rows_count", ())] >= 1


def test_reflection_lists_the_services(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(server["channel"])
    assert set(database.get_services()) == {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
                                            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                                            "inference.GRPCInferenceService"}
    pool = DescriptorPool(database)
    service = pool.FindServiceByName("tensorflow.serving.PredictionService")
    assert {"Predict", "Classify", "GetModelMetadata"} <= {method.name for method in service.methods}
    v2 = pool.FindServiceByName("inference.GRPCInferenceService")
    assert {"ServerLive", "ModelReady", "ModelMetadata", "ModelInfer"} <= {method.name for method in v2.methods}


def _rest(server, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{server['handle'].rest_port}{path}",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_rest_predict(server, serving_env, reference):
    status, body = _rest(server, "/v1/models/revnet:predict", {"instances": reference["images"][:2].tolist()})
    assert status == 200 and len(body["predictions"]) == 2
    np.testing.assert_allclose(body["predictions"][1]["probabilities"], reference["probabilities"][1], atol=1e-4)
    b64 = [{"b64": base64.b64encode(data).decode()} for data in serving_env["encoded"][:2]]
    status, body = _rest(server, "/v1/models/revnet/versions/1:predict", {"inputs": {"image_bytes": b64}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"]["probabilities"], reference["decoded_probabilities"][:2], atol=1e-4)
    assert _rest(server, "/v1/models/revnet:predict", {"instances": [{"b64": "bm90IGFuIGltYWdl"}]})[0] == 400
    assert _rest(server, "/v1/models/other:predict", {"instances": [{"b64": "eA=="}]})[0] == 404


def bad_requests(images):
    string_images = make_tensor_proto([b"x"] * 2)
    return [
        (predict_request(images=images.astype(np.int32)), grpc.StatusCode.INVALID_ARGUMENT, "float32"),
        (predict_request(images=images[0]), grpc.StatusCode.INVALID_ARGUMENT, "expected \\[batch, 32, 32, 3\\]"),
        (predict_request(images=np.zeros((1, 16, 16, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (predict_request(images=np.zeros((MAX_ROWS + 1, 32, 32, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
         "exceeds the server limit of 20 \\(--max-request-rows\\)"),
        (predict_request(image_bytes=[b"not an image"]), grpc.StatusCode.INVALID_ARGUMENT, "not a decodable"),
        (predict_request(image_bytes=[b""]), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (predict_request(images=np.zeros((0, 32, 32, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (predict_request(), grpc.StatusCode.INVALID_ARGUMENT, "exactly one input"),
        (predict_request(signature="serving_default", image_bytes=string_images), grpc.StatusCode.INVALID_ARGUMENT,
         "takes input 'images'"),
        (predict_request(model="nope", images=images), grpc.StatusCode.NOT_FOUND, "not served"),
        (predict_request(version=9, images=images), grpc.StatusCode.NOT_FOUND, "version 9"),
        (predict_request(signature="classify_x", images=images), grpc.StatusCode.NOT_FOUND, "signature"),
    ]


def test_bad_inputs_get_clear_statuses_and_the_server_keeps_serving(server, reference):
    for request, code, message in bad_requests(reference["images"][:1]):
        with pytest.raises(grpc.RpcError) as caught:
            server["stub"].Predict(request, timeout=60)
        assert caught.value.code() == code, caught.value.details()
        assert re.search(message, caught.value.details()), caught.value.details()
    response = server["stub"].Predict(predict_request(images=reference["images"][:1]), timeout=60)
    assert make_ndarray(response.outputs["classes"]).shape == (1,)


def test_concurrent_mixed_good_and_bad_requests(server, reference):
    """A few hundred concurrent requests on loopback: each good one gets its own rows, each bad one its error."""
    images, expected = reference["images"], reference["probabilities"]
    bad = bad_requests(images[:1])
    jobs = []
    for index in range(240):
        if index % 3 == 2:
            jobs.append(("bad",) + bad[index % len(bad)])
        else:
            start = index % len(images)
            rows = list(range(start, min(start + 1 + index % 3, len(images))))
            jobs.append(("good", predict_request(images=images[rows]), rows, None))

    def call(job):
        kind, request, detail, _ = job
        try:
            return kind, job, server["stub"].Predict(request, timeout=120)
        except grpc.RpcError as error:
            return kind, job, error

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, jobs, timeout=300))
    for kind, job, outcome in results:
        if kind == "good":
            assert not isinstance(outcome, grpc.RpcError), outcome
            np.testing.assert_allclose(make_ndarray(outcome.outputs["probabilities"]), expected[job[2]], atol=1e-4)
        else:
            assert isinstance(outcome, grpc.RpcError) and outcome.code() == job[2]


def test_predict_cli_client(server, serving_env, tmp_path):
    from click.testing import CliRunner

    from revnet.cli import cli

    path = tmp_path / "a.png"
    path.write_bytes(serving_env["encoded"][0])
    result = CliRunner().invoke(cli, ["predict", "--server", f"127.0.0.1:{server['handle'].port}", "--top-k", "2",
                                      "--json", str(path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["image"] == str(path) and len(rows[0]["classes"]) == 2
    assert rows[0]["classes"][0]["probability"] >= rows[0]["classes"][1]["probability"]
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    result = CliRunner().invoke(cli, ["predict", "--server", f"127.0.0.1:{server['handle'].port}", str(bad)])
    assert result.exit_code == 2 and "not a decodable" in result.output


def test_hot_reload_picks_up_a_new_version(serving_env, tmp_path):
    from revnet.serving.server import start_server

    model_dir = tmp_path / "revnet"
    shutil.copytree(os.path.join(serving_env["model_dir"], "1"), model_dir / "1")
    handle = start_server(model_dir=str(model_dir), backend="onnx", port=0, rest_port=None, batch_timeout_ms=0,
                          poll_seconds=0.2)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_request(images=np.zeros((1, 32, 32, 3), np.float32))
        assert stub.Predict(request, timeout=60).model_spec.version.value == 1
        shutil.copytree(model_dir / "1", model_dir / ".staging")
        os.rename(model_dir / ".staging", model_dir / "2")
        deadline = time.monotonic() + 60
        while handle.repository.current().version != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stub.Predict(request, timeout=60).model_spec.version.value == 2
        channel.close()
    finally:
        handle.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls_server_and_client(serving_env, tmp_path):
    import subprocess

    from revnet.serving.client import predict
    from revnet.serving.server import start_server

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    handle = start_server(model_dir=serving_env["model_dir"], backend="onnx", port=0, rest_port=None,
                          batch_timeout_ms=0, tls_cert=str(cert), tls_key=str(key), poll_seconds=3600)
    try:
        image = tmp_path / "a.png"
        image.write_bytes(serving_env["encoded"][0])
        rows = predict(server=f"127.0.0.1:{handle.port}", images=[str(image)], top_k=1, tls_ca=str(cert))
        assert rows[0]["classes"][0]["label"] in {"cat", "dog", "ship"}
        # A plaintext client cannot talk to the TLS port: the handshake fails, so the channel never connects.
        with pytest.raises(UserError, match=r"cannot reach a model server at .* \(UNAVAILABLE\)"):
            predict(server=f"127.0.0.1:{handle.port}", images=[str(image)], timeout_seconds=5)
    finally:
        handle.stop()


def test_predict_sends_any_number_of_files_in_requests_under_the_row_limit(server, serving_env, tmp_path):
    """More files than the server's --max-request-rows (20 here): requests of --batch-rows, answers in order."""
    from revnet.serving.client import predict, predict_stream

    address = f"127.0.0.1:{server['handle'].port}"
    paths = []
    for index in range(45):
        path = tmp_path / f"{index:02d}.png"
        path.write_bytes(serving_env["encoded"][index % len(serving_env["encoded"])])
        paths.append(str(path))
    single = {index: predict(server=address, images=[paths[index]], top_k=3)[0]["classes"]
              for index in range(len(serving_env["encoded"]))}
    results = list(predict_stream(server=address, images=paths, top_k=3, batch_rows=8))
    assert [row["image"] for row in results] == paths
    for index, row in enumerate(results):
        expected = single[index % len(serving_env["encoded"])]
        assert [c["label"] for c in row["classes"]] == [c["label"] for c in expected]
    with pytest.raises(UserError, match="server rejected the request starting at .*--batch-rows"):
        predict(server=address, images=paths, batch_rows=30)

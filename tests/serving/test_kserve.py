"""The Open Inference Protocol (KServe v2) on the same server, checked with the protocol's reference client
(tritonclient, HTTP and gRPC) for every model of a two-model config: health, readiness, metadata, and infer
with JSON and binary tensors giving the same answers as TF Serving's Predict; bad requests get the
protocol's error statuses."""
import json
import os
import shutil
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

MODELS = ("alpha", "beta")


@pytest.fixture(scope="module")
def server(serving_env, tmp_path_factory):
    from revnet.serving.server import start_server

    root = tmp_path_factory.mktemp("v2")
    source = os.path.join(serving_env["model_dir"], "1")
    for name in MODELS:
        shutil.copytree(source, str(root / name / "1"))
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "{platform}" }}\n'
        for name, platform in zip(MODELS, ("onnx", "tensorflow"), strict=True)) + "}\n")
    handle = start_server(model_config_file=str(config), port=0, rest_port=0, poll_seconds=3600)
    yield {"handle": handle, "http": triton_http.InferenceServerClient(f"127.0.0.1:{handle.rest_port}"),
           "grpc": triton_grpc.InferenceServerClient(f"127.0.0.1:{handle.port}")}
    handle.stop()


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(5).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)


def _predict(server, name, images):
    """Probabilities from TF Serving's Predict, the reference answer."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from revnet.serving.tensors import make_ndarray, make_tensor_proto

    with grpc.insecure_channel(f"127.0.0.1:{server['handle'].port}") as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.inputs["images"].CopyFrom(make_tensor_proto(images))
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return make_ndarray(response.outputs["probabilities"]), make_ndarray(response.outputs["classes"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_health_readiness_and_metadata(server, serving_env, protocol):
    client = server[protocol]
    assert client.is_server_live() and client.is_server_ready()
    for name in MODELS:
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
        assert not client.is_model_ready(name, "7")
        metadata = client.get_model_metadata(name, **({"as_json": True} if protocol == "grpc" else {}))
        assert metadata["name"] == name and metadata["versions"] == ["1"]
        inputs = {tensor["name"]: (tensor["datatype"], [int(d) for d in tensor["shape"]])
                  for tensor in metadata["inputs"]}
        assert inputs == {"images": ("FP32", [-1, 32, 32, 3]), "image_bytes": ("BYTES", [-1])}
        assert [tensor["name"] for tensor in metadata["outputs"]] == ["probabilities", "classes", "logits"]
    assert not client.is_model_ready("delta")
    server_metadata = client.get_server_metadata(**({"as_json": True} if protocol == "grpc" else {}))
    assert "binary_tensor_data" in server_metadata["extensions"] and server_metadata["name"] == "revnet"


@pytest.mark.parametrize("protocol, binary", [("http", False), ("http", True), ("grpc", True)])
def test_infer_images_matches_predict_for_every_model(server, images, protocol, binary):
    module, client = (triton_http, server["http"]) if protocol == "http" else (triton_grpc, server["grpc"])
    for name in MODELS:
        tensor = module.InferInput("images", list(images.shape), "FP32")
        if protocol == "http":
            tensor.set_data_from_numpy(images, binary_data=binary)
            wanted = [module.InferRequestedOutput(out, binary_data=binary) for out in ("probabilities", "classes")]
        else:
            tensor.set_data_from_numpy(images)
            wanted = [module.InferRequestedOutput(out) for out in ("probabilities", "classes")]
        result = client.infer(name, [tensor], outputs=wanted, request_id="r-1")
        probabilities, classes = _predict(server, name, images)
        np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("classes"), classes)
        assert result.as_numpy("logits") is None     # only what was asked for
        response = result.get_response()
        model_name = response["model_name"] if protocol == "http" else response.model_name
        assert model_name == name


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_infer_image_bytes(server, serving_env, protocol):
    module, client = (triton_http, server["http"]) if protocol == "http" else (triton_grpc, server["grpc"])
    encoded = np.array(serving_env["encoded"][:2], dtype=object)
    tensor = module.InferInput("image_bytes", [2], "BYTES")
    tensor.set_data_from_numpy(encoded)
    result = client.infer("alpha", [tensor])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case, message", [
    ("unknown model", "model 'delta' is not served"),
    ("wrong shape", "has shape [1, 8, 8, 3]; expected [batch, 32, 32, 3]"),
    ("wrong datatype", "must be float32"),
    ("unknown input", "unknown input ['pixels']"),
    ("too many rows", "exceeds the server limit of 1024"),
    ("bad pixels", "outside 0..255"),
])
def test_bad_requests_get_the_protocols_errors(server, protocol, case, message):
    module, client = (triton_http, server["http"]) if protocol == "http" else (triton_grpc, server["grpc"])
    name, input_name, array = "alpha", "images", np.zeros((1, 32, 32, 3), np.float32)
    if case == "unknown model":
        name = "delta"
    elif case == "wrong shape":
        array = np.zeros((1, 8, 8, 3), np.float32)
    elif case == "wrong datatype":
        array = np.zeros((1, 32, 32, 3), np.int64)
    elif case == "unknown input":
        input_name = "pixels"
    elif case == "too many rows":
        array = np.zeros((1025, 32, 32, 3), np.float32)
    else:
        array = np.full((1, 32, 32, 3), 300.0, np.float32)
    datatype = "INT64" if array.dtype == np.int64 else "FP32"
    tensor = module.InferInput(input_name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(name, [tensor])
    assert message in raised.value.message()
    expected = ("404" if case == "unknown model" else "400") if protocol == "http" else \
        ("StatusCode.NOT_FOUND" if case == "unknown model" else "StatusCode.INVALID_ARGUMENT")
    assert raised.value.status() == expected


def _post(server, path, body: bytes, headers=()):
    request = urllib.request.Request(f"http://127.0.0.1:{server['handle'].rest_port}{path}", data=body,
                                     headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


BINARY_HEADER = (b'{"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "FP32", '
                 b'"parameters": {"binary_data_size": 12288}}]}')


@pytest.mark.parametrize("body, headers, message", [
    (b"{", (), "not valid JSON"),
    (b'{"inputs": []}', (), "needs 'inputs'"),
    (b'{"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": [1, 2]}]}', (),
     "has 2 values but its shape needs 3072"),
    (BINARY_HEADER + b"\0" * 10, (("Inference-Header-Content-Length", str(len(BINARY_HEADER))),),
     "runs past the body"),
    (b'{"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": []}]}',
     (("Inference-Header-Content-Length", "9999"),), "does not fit a body"),
])
def test_malformed_rest_bodies_are_400_with_an_error_body(server, body, headers, message):
    status, payload = _post(server, "/v2/models/alpha/infer", body, headers)
    assert status == 400 and message in json.loads(payload)["error"], payload[:300]


def test_v2_requests_are_counted_in_the_metrics(server, images):
    text = server["handle"].metrics.render().decode()
    assert 'api="rest_v2_infer"' in text and 'api="v2_infer"' in text

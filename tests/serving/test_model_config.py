"""`serve --model-config-file`: TF Serving's ModelServerConfig with several models, version policies and labels,
reloaded by ModelService.HandleReloadConfigRequest or by polling the file; bad configs are refused (at start
and on reload, where the old config keeps serving) and unloading never drops an in-flight request."""
import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from revnet.common.errors import UserError
from revnet.serving.model_config import parse_model_config
from revnet.serving.tensors import make_ndarray, make_tensor_proto


def _config(*models) -> str:
    return "model_config_list {\n" + "".join(f"  config {{ {model} }}\n" for model in models) + "}\n"


def _model(name, base_path, extra=""):
    return f'name: "{name}" base_path: "{base_path}" {extra}'


@pytest.fixture(scope="module")
def exports(serving_env, tmp_path_factory):
    """alpha (versions 1 and 2) and beta (version 1), copies of the session's export."""
    root = tmp_path_factory.mktemp("models")
    source = os.path.join(serving_env["model_dir"], "1")
    for name, versions in (("alpha", (1, 2)), ("beta", (1,)), ("gamma", (1,))):
        for version in versions:
            shutil.copytree(source, str(root / name / str(version)))
    return {name: str(root / name) for name in ("alpha", "beta", "gamma")}


ALPHA = 'model_platform: "onnx" model_version_policy { specific { versions: 1 versions: 2 } } ' \
        'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }'


@pytest.fixture
def server(exports, tmp_path):
    from revnet.serving.server import start_server

    path = tmp_path / "models.config"
    path.write_text(_config(_model("alpha", exports["alpha"], ALPHA), _model("beta", exports["beta"])))
    handle = start_server(model_config_file=str(path), model_config_file_poll_wait_seconds=0.2, port=0, rest_port=0,
                          poll_seconds=0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    yield {"handle": handle, "path": path, "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "models": model_service_pb2_grpc.ModelServiceStub(channel)}
    channel.close()
    handle.stop()


def _predict(server, name, version=None, label=None, images=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    images = np.zeros((1, 32, 32, 3), np.float32) if images is None else images
    request.inputs["images"].CopyFrom(make_tensor_proto(images))
    return server["predict"].Predict(request, timeout=30)


def _status(server, name, label=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if label:
        request.model_spec.version_label = label
    return [s.version for s in server["models"].GetModelStatus(request, timeout=30).model_version_status]


def _rest(server, path, body=None):
    url = f"http://127.0.0.1:{server['handle'].rest_port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_for(predicate, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert predicate()


def test_several_models_versions_and_labels_over_grpc_and_rest(server):
    images = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    stable = _predict(server, "alpha", label="stable", images=images)
    canary = _predict(server, "alpha", label="canary", images=images)
    assert (stable.model_spec.version.value, canary.model_spec.version.value) == (1, 2)
    assert _predict(server, "alpha").model_spec.version.value == 2          # no version: the highest served
    assert _predict(server, "beta").model_spec.name == "beta"
    expected = make_ndarray(stable.outputs["probabilities"])
    assert np.allclose(make_ndarray(canary.outputs["probabilities"]), expected)   # the same export copied
    assert _status(server, "alpha") == [2, 1] and _status(server, "alpha", label="canary") == [2]
    status, body = _rest(server, "/v1/models/alpha/labels/stable")
    assert status == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    status, body = _rest(server, "/v1/models/alpha/labels/canary:predict", {"instances": images.tolist()})
    assert status == 200 and np.allclose([row["probabilities"] for row in body["predictions"]], expected, atol=1e-6)
    status, body = _rest(server, "/v1/models/alpha")
    assert [s["version"] for s in body["model_version_status"]] == ["2", "1"]
    text = server["handle"].metrics.render().decode()
    assert 'revnet_serving_versions_served{model="alpha"} 2.0' in text


@pytest.mark.parametrize("spec, code, message", [
    (dict(name="alpha", label="nightly"), grpc.StatusCode.NOT_FOUND,
     "version label 'nightly' of model 'alpha' not found"),
    (dict(name="alpha", version=3), grpc.StatusCode.NOT_FOUND, "version 3 of model 'alpha' is not loaded"),
    (dict(name=""), grpc.StatusCode.NOT_FOUND, "the request names no model; this server serves ['alpha', 'beta']"),
    (dict(name="delta"), grpc.StatusCode.NOT_FOUND, "model 'delta' is not served"),
])
def test_unknown_models_versions_and_labels_are_not_found(server, spec, code, message):
    with pytest.raises(grpc.RpcError) as raised:
        _predict(server, **spec)
    assert raised.value.code() == code and message in raised.value.details()


def _reload(server, text):
    from google.protobuf import text_format

    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config, allow_unknown_field=False)
    return server["models"].HandleReloadConfigRequest(request, timeout=60)


def test_reload_adds_and_removes_models_and_a_bad_one_keeps_the_old_config(server, exports):
    response = _reload(server, _config(_model("alpha", exports["alpha"], ALPHA), _model("gamma", exports["gamma"])))
    assert response.status.error_code == 0
    assert server["handle"].models.names() == ["alpha", "gamma"]
    assert _predict(server, "gamma").model_spec.name == "gamma"
    with pytest.raises(grpc.RpcError) as raised:
        _predict(server, "beta")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    bad = _config(_model("alpha", exports["alpha"], 'version_labels { key: "stable" value: 7 }'))
    with pytest.raises(grpc.RpcError) as raised:
        _reload(server, bad)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'stable' points to version 7, which is not served" in raised.value.details()
    assert server["handle"].models.names() == ["alpha", "gamma"]      # the old config keeps serving
    assert _predict(server, "alpha", label="canary").model_spec.version.value == 2


def test_the_polled_file_is_applied_when_it_changes_and_a_bad_one_is_refused_once(server, exports, caplog):
    caplog.set_level(logging.INFO, logger="revnet")
    server["path"].write_text(_config(_model("beta", exports["beta"], 'model_platform: "tensorflow"')))
    _wait_for(lambda: server["handle"].models.names() == ["beta"])
    assert server["handle"].models.repository("beta").backend == "tf"
    assert _predict(server, "").model_spec.name == "beta"     # one model again: the name may be left out
    server["path"].write_text("model_config_list { config { name: 'beta' bogus_field: 1 } }")

    def refusals():
        return [r.getMessage() for r in caplog.records if "is refused" in r.getMessage()]

    _wait_for(refusals)
    time.sleep(1.0)   # five more polls of the unchanged bad file
    refusals = refusals()
    assert len(refusals) == 1 and "bogus_field" in refusals[0], refusals
    assert server["handle"].models.names() == ["beta"]


def test_an_unloaded_version_finishes_the_request_it_holds(server, exports):
    """A request running on alpha when a reload removes alpha completes; later ones are NOT_FOUND."""
    servable = server["handle"].models.get("alpha", 1)
    started, release = threading.Event(), threading.Event()
    original = servable.run

    def slow_run(images):
        started.set()
        release.wait(10)
        return original(images)

    servable.run = slow_run
    answers = []
    caller = threading.Thread(target=lambda: answers.append(_predict(server, "alpha", version=1)))
    caller.start()
    assert started.wait(10)
    _reload(server, _config(_model("beta", exports["beta"])))
    release.set()
    caller.join(30)
    assert answers and answers[0].model_spec.version.value == 1
    with pytest.raises(grpc.RpcError):
        _predict(server, "alpha", version=1)


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: 'a' base_path: '{a}' unknown_field: 1 } }", "unknown_field"),
    ("model_config_list { config { name: 'a' base_path: '{a}' } config { name: 'a' base_path: '{a}' } }",
     "names model 'a' more than once"),
    ("model_config_list { config { name: 'a' base_path: '{a}/nowhere' } }", "is not a folder"),
    ("model_config_list { config { name: 'a' base_path: '{a}' model_platform: 'pytorch' } }",
     "model_platform 'pytorch'"),
    ("model_config_list { config { name: 'a' base_path: '{a}' model_version_policy { specific { versions: 1 } } "
     "version_labels { key: 'canary' value: 2 } } }", "labels versions its policy does not serve (canary -> 2"),
    ("model_config_list { }", "lists no model"),
])
def test_bad_configs_are_one_clear_error(exports, text, message):
    with pytest.raises(UserError) as raised:
        parse_model_config(text.replace("{a}", exports["alpha"]), "onnx", where="models.config")
    assert message in str(raised.value)


def test_a_label_to_a_version_that_is_not_served_fails_the_start(exports, tmp_path):
    from revnet.serving.server import start_server

    path = tmp_path / "models.config"
    path.write_text(_config(_model("alpha", exports["alpha"], 'version_labels { key: "stable" value: 1 }')))
    with pytest.raises(UserError, match="'stable' points to version 1, which is not served .serving versions .2.."):
        start_server(model_config_file=str(path), port=0, rest_port=None)


def test_model_dir_and_config_file_are_one_or_the_other(exports, tmp_path):
    from revnet.serving.serve_config import ServeConfig

    with pytest.raises(UserError, match="not both"):
        ServeConfig(model_dir=exports["alpha"], model_config_file="x")
    with pytest.raises(UserError, match="not neither"):
        ServeConfig()


@pytest.mark.parametrize("policy, served", [
    ("", [2]), ("model_version_policy { latest { num_versions: 2 } }", [1, 2]),
    ("model_version_policy { latest { num_versions: 5 } }", [1, 2]), ("model_version_policy { all { } }", [1, 2]),
    ("model_version_policy { specific { versions: 1 } }", [1]),
])
def test_version_policies_pick_the_served_versions(exports, policy, served):
    from revnet.serving.repository import ModelRepository

    (entry,) = parse_model_config(_config(_model("alpha", exports["alpha"], policy)), "onnx")
    assert ModelRepository(entry).versions() == served


def test_predict_client_picks_a_version_by_label(server, serving_env, tmp_path):
    from revnet.serving.client import predict

    path = tmp_path / "image.img"
    path.write_bytes(serving_env["encoded"][0])
    address = f"127.0.0.1:{server['handle'].port}"
    (canary,) = predict(address, [str(path)], model="alpha", label="canary", top_k=1)
    (stable,) = predict(address, [str(path)], model="alpha", label="stable", top_k=1)
    assert (canary["model"], canary["version"], stable["version"]) == ("alpha", 2, 1)
    with pytest.raises(UserError, match="version label 'nightly'"):
        predict(address, [str(path)], model="alpha", label="nightly")

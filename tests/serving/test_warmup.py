"""Warm-up: each export holds TF Serving's warm-up file, the server replays it before a version is served,
and a warm-up file that is malformed, too long or refused fails that version's load (the old one stays)."""
import json
import logging
import os
import shutil

import numpy as np
import pytest

from revnet.serving import layout, warmup


def _version(serving_env, model_dir, version):
    shutil.copytree(os.path.join(serving_env["model_dir"], "1"), os.path.join(model_dir, str(version)))
    return os.path.join(model_dir, str(version))


def _replace_warmup(version_dir, data: bytes):
    """Write another warm-up file and record its SHA-256, as an export that wrote it would have."""
    path = os.path.join(version_dir, layout.WARMUP_FILE)
    with open(path, "wb") as handle:
        handle.write(data)
    record_path = os.path.join(version_dir, layout.EXPORT_FILE)
    record = json.load(open(record_path))
    record["sha256"][layout.WARMUP_FILE.replace(os.sep, "/")] = layout.file_sha256(path)
    json.dump(record, open(record_path, "w"))


def _records(requests) -> bytes:
    """A TFRecord file of PredictionLog records holding `requests` (written with TF's own writer)."""
    import tempfile

    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "records")
        with tf.io.TFRecordWriter(path) as writer:
            for request in requests:
                entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(entry.SerializeToString())
        return open(path, "rb").read()


def _repository(model_dir, counted):
    from revnet.serving.repository import ModelRepository
    from revnet.serving.serve_config import ServeConfig
    from revnet.serving.inference import InferenceCore

    core = InferenceCore(None, ServeConfig(model_dir=model_dir, max_batch_size=2, max_request_rows=8), None)

    def replay(servable):
        count = warmup.replay(core, servable)
        counted.append((servable.version, count))
        return count

    return ModelRepository(model_dir, "onnx", warmup=replay)


def test_every_export_writes_warmup_requests_and_records_their_count(serving_env):
    requests = warmup.read_warmup_requests(os.path.join(serving_env["model_dir"], "1"))
    assert serving_env["record"]["warmup_requests"] == len(requests) >= 2
    assert {request.model_spec.signature_name for request in requests} == {"serving_default", "predict_images"}


def test_a_version_is_warmed_up_before_it_is_served(serving_env, tmp_path):
    """The replay runs every request on the new servable (counted by a spy on its backend) before the
    repository hands it out; the server reports the count in its metrics."""
    from revnet.serving.backends import OnnxServable

    model_dir = str(tmp_path / "revnet")
    _version(serving_env, model_dir, 1)
    runs, original = [], OnnxServable.run

    def spy(self, images):
        runs.append((self.version, len(images)))
        return original(self, images)

    counted = []
    OnnxServable.run = spy
    try:
        repository = _repository(model_dir, counted)
    finally:
        OnnxServable.run = original
    expected = serving_env["record"]["warmup_requests"]
    assert counted == [(1, expected)] and len(runs) >= expected and repository.current().version == 1


def test_the_server_replays_warmup_and_counts_it(serving_env):
    from revnet.serving.server import start_server

    handle = start_server(model_dir=serving_env["model_dir"], port=0, rest_port=None, poll_seconds=3600)
    try:
        text = handle.metrics.render().decode()
    finally:
        handle.stop()
    count = serving_env["record"]["warmup_requests"]
    assert f'revnet_serving_warmup_requests_total{{model="revnet",version="1"}} {float(count)}' in text


@pytest.mark.parametrize("case", ["garbage", "wrong-shape", "too-many", "classify-log"])
def test_a_bad_warmup_file_fails_that_version_and_the_old_one_keeps_serving(serving_env, tmp_path, caplog, case):
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from revnet.serving.tensors import make_tensor_proto

    model_dir = str(tmp_path / "revnet")
    _version(serving_env, model_dir, 1)
    counted = []
    repository = _repository(model_dir, counted)
    wrong = predict_pb2.PredictRequest()
    wrong.inputs["images"].CopyFrom(make_tensor_proto(np.zeros((1, 8, 8, 3), np.float32)))
    if case == "garbage":
        data, reason = b"\x00not a tfrecord file at all" * 10, "not a TFRecord file"
    elif case == "wrong-shape":
        data, reason = _records([wrong]), "warm-up request 0"
    elif case == "too-many":
        data, reason = _records([predict_pb2.PredictRequest()] * (warmup.MAX_WARMUP_RECORDS + 1)), "more than 1000"
    else:
        import tensorflow as tf

        entry = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog())
        path = str(tmp_path / "records")
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(entry.SerializeToString())
        data, reason = open(path, "rb").read(), "only predict_log"
    _replace_warmup(_version(serving_env, model_dir, 2), data)
    caplog.set_level(logging.INFO, logger="revnet")
    for _ in range(3):
        repository.poll()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "version 2" in errors[0] and reason in errors[0], errors
    assert repository.current().version == 1


def test_a_version_without_a_warmup_file_loads_with_none(serving_env, tmp_path):
    model_dir = str(tmp_path / "revnet")
    version_dir = _version(serving_env, model_dir, 1)
    os.remove(os.path.join(version_dir, layout.WARMUP_FILE))
    counted = []
    assert _repository(model_dir, counted).current().version == 1 and counted == [(1, 0)]

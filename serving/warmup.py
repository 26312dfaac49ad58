"""Warm-up requests, as TF Serving keeps them: VERSION/assets.extra/tf_serving_warmup_requests, a TFRecord file of
`PredictionLog` records (each a PredictRequest in its `predict_log`).

`export` writes a few (one per signature, from the parity images). The server replays them when it loads a
version, before that version is served or reported ready, so the first real request does not pay for graph
optimisation and memory allocation. As in TF Serving, at most MAX_WARMUP_RECORDS are replayed, and a file
that is malformed, holds another kind of log, or a request that fails, fails the version's load: the
repository logs it once and keeps serving what it served.
"""
from __future__ import annotations

import functools
import os
from typing import List

import numpy as np

from revnet.common.errors import UserError
from revnet.serving import layout

MAX_WARMUP_RECORDS = 1000  # TF Serving's own limit


def write_warmup_requests(version_dir: str, image_bytes, images: np.ndarray) -> int:
    """One predict_images request per encoded image and one serving_default request of `images`; the count."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from revnet.serving.tensors import make_tensor_proto

    requests = []
    for data in image_bytes:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = "predict_images"
        request.inputs["image_bytes"].CopyFrom(make_tensor_proto([data]))
        requests.append(request)
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(make_tensor_proto(np.asarray(images, np.float32)))
    requests.append(request)
    path = os.path.join(version_dir, layout.WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log_record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log_record.SerializeToString())
    return len(requests)


def read_warmup_requests(version_dir: str) -> List:
    """The PredictRequests of a version's warm-up file ([] when it has none); UserError when it is malformed."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(version_dir, layout.WARMUP_FILE)
    if not os.path.isfile(path):
        return []
    requests = []
    try:
        for index, data in enumerate(tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS + 1)):
            if index == MAX_WARMUP_RECORDS:
                raise UserError(f"{layout.WARMUP_FILE} holds more than {MAX_WARMUP_RECORDS} records, "
                                "TF Serving's limit")
            record = prediction_log_pb2.PredictionLog.FromString(data.numpy())
            kind = record.WhichOneof("log_type")
            if kind != "predict_log":
                raise UserError(f"{layout.WARMUP_FILE} record {index} is a {kind or 'empty'} log; only predict_log "
                                f"warm-up records are supported")
            requests.append(record.predict_log.request)
    except (tf.errors.DataLossError, DecodeError) as error:
        raise UserError(f"{layout.WARMUP_FILE} is not a TFRecord file of PredictionLog records "
                        f"({type(error).__name__}: {' '.join(str(error).split())[:200]})") from None
    return requests


def replay(core, servable) -> int:
    """Run every warm-up request of `servable`'s folder on it, checked as a client's request is; the count."""
    from revnet.serving.tensors import make_ndarray

    requests = read_warmup_requests(servable.path)
    for index, request in enumerate(requests):
        inputs = {name: functools.partial(make_ndarray, proto, name) for name, proto in request.inputs.items()}
        try:
            images = core.prepare(servable, request.model_spec.signature_name, inputs, request.output_filter)
            for start in range(0, len(images), core.config.max_batch_size):
                servable.run(images[start:start + core.config.max_batch_size])
        except UserError as error:
            raise UserError(f"warm-up request {index} of {layout.WARMUP_FILE} is refused: {error}") from None
    return len(requests)

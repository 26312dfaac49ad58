"""`cli.py predict`: send image files to a server speaking TF Serving's API and return the top-k classes."""
from __future__ import annotations

import os
from typing import Dict, Iterator, List, Optional

import grpc

from revnet.common.errors import UserError

DEFAULT_TIMEOUT_SECONDS = 30.0


def _channel(server: str, tls_ca: Optional[str], max_message_mb: int):
    options = [("grpc.max_send_message_length", max_message_mb << 20),
               ("grpc.max_receive_message_length", max_message_mb << 20)]
    if tls_ca:
        with open(tls_ca, "rb") as handle:
            return grpc.secure_channel(server, grpc.ssl_channel_credentials(handle.read()), options=options)
    return grpc.insecure_channel(server, options=options)


# Rows and bytes per Classify request: far under the server's --max-request-rows (1024) and message limit
# (64 MB) defaults, so any number of files goes through, a request at a time, in order.
DEFAULT_BATCH_ROWS = 64
MAX_REQUEST_BYTES = 16 << 20


def _chunks(images: List[str], batch_rows: int):
    """Lists of (path, bytes) of at most `batch_rows` files and about MAX_REQUEST_BYTES, read as they are sent."""
    chunk, size = [], 0
    for path in images:
        with open(path, "rb") as handle:
            data = handle.read()
        if chunk and (len(chunk) >= batch_rows or size + len(data) > MAX_REQUEST_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((path, data))
        size += len(data)
    if chunk:
        yield chunk


def predict_stream(server: str, images: List[str], model: str = "", top_k: int = 5,
                   timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, tls_ca: Optional[str] = None,
                   max_message_mb: int = 64, batch_rows: int = DEFAULT_BATCH_ROWS, version: Optional[int] = None,
                   label: Optional[str] = None) -> Iterator[Dict]:
    """{image, model, version, classes: [{label, probability}]} per file, in the order given, via Classify (which
    carries the label names); the files go in requests of at most `batch_rows`, each read only when it is sent.
    `version` or `label` (a version label of the server's model config) picks the version; neither: the highest."""
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    if not images:
        raise UserError("give at least one IMAGE file")
    if version is not None and label:
        raise UserError("give --version or --label, not both")
    if top_k < 1 or batch_rows < 1:
        raise UserError(f"--top-k and --batch-rows must be at least 1, got {top_k} and {batch_rows}")
    missing = [path for path in images if not os.path.isfile(path)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"image file {missing[0]!r} does not exist{more}")
    with _channel(server, tls_ca, max_message_mb) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for chunk in _chunks(images, batch_rows):
            request = classification_pb2.ClassificationRequest()
            request.model_spec.name = model
            if version is not None:
                request.model_spec.version.value = version
            if label:
                request.model_spec.version_label = label
            for _, data in chunk:
                example = request.input.example_list.examples.add()
                example.features.feature["image/encoded"].bytes_list.value.append(data)
            response = _classify(stub, request, server, timeout_seconds, chunk[0][0])
            answered = len(response.result.classifications)
            if answered != len(chunk):
                raise UserError(f"server answered {answered} classifications for the {len(chunk)} images starting "
                                f"at {chunk[0][0]!r}")
            for (path, _), classification in zip(chunk, response.result.classifications, strict=True):
                top = sorted(classification.classes, key=lambda c: -c.score)[:top_k]
                yield {"image": path, "model": response.model_spec.name, "version": response.model_spec.version.value,
                       "classes": [{"label": c.label, "probability": c.score} for c in top]}


def _classify(stub, request, server: str, timeout_seconds: float, first: str):
    try:
        return stub.Classify(request, timeout=timeout_seconds)
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            hint = "; send fewer files per request with --batch-rows" if "limit" in error.details() else ""
            raise UserError(f"server rejected the request starting at {first!r}: {error.details()}{hint}") from None
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise UserError(f"the model server at {server} is busy ({error.details()}); retry later") from None
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise UserError(f"cannot reach a model server at {server} ({error.code().name})") from None
        raise


def predict(server: str, images: List[str], **options) -> List[Dict]:
    """All of `predict_stream`'s results as a list."""
    return list(predict_stream(server, images, **options))


def format_prediction(result: Dict) -> str:
    return "\n".join([result["image"]] + [f"  {c['probability']:.4f}  {c['label']}" for c in result["classes"]])


def format_predictions(results: List[Dict]) -> str:
    return "\n".join(format_prediction(result) for result in results)

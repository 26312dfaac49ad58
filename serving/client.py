"""`cli.py predict`: send image files to a server speaking TF Serving's API and return the top-k classes."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import grpc

from revnet.common.errors import UserError

DEFAULT_TIMEOUT_SECONDS = 30.0


def _channel(server: str, tls_ca: Optional[str], max_message_mb: int):
    options = [("grpc.max_send_message_length", max_message_mb << 20), ("grpc.max_receive_message_length", max_message_mb << 20)]
    if tls_ca:
        with open(tls_ca, "rb") as handle:
            return grpc.secure_channel(server, grpc.ssl_channel_credentials(handle.read()), options=options)
    return grpc.insecure_channel(server, options=options)


def predict(server: str, images: List[str], model: str = "", top_k: int = 5, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
            tls_ca: Optional[str] = None, max_message_mb: int = 64) -> List[Dict]:
    """[{image, classes: [{label, probability}]}] per file, via Classify (which carries the label names)."""
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    if not images:
        raise UserError("give at least one IMAGE file")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    for path in images:
        if not os.path.isfile(path):
            raise UserError(f"image file {path!r} does not exist")
        with open(path, "rb") as handle:
            example = request.input.example_list.examples.add()
            example.features.feature["image/encoded"].bytes_list.value.append(handle.read())
    with _channel(server, tls_ca, max_message_mb) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Classify(request, timeout=timeout_seconds)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                raise UserError(f"server rejected the request: {error.details()}") from None
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise UserError(f"the model server at {server} is busy ({error.details()}); retry later") from None
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise UserError(f"cannot reach a model server at {server} ({error.code().name})") from None
            raise
    results = []
    for path, classification in zip(images, response.result.classifications):
        top = sorted(classification.classes, key=lambda c: -c.score)[:top_k]
        results.append({"image": path, "classes": [{"label": c.label, "probability": c.score} for c in top]})
    return results


def format_predictions(results: List[Dict]) -> str:
    lines = []
    for result in results:
        lines.append(result["image"])
        lines += [f"  {c['probability']:.4f}  {c['label']}" for c in result["classes"]]
    return "\n".join(lines)

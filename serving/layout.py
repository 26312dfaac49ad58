"""The export folder layout shared by the exporter and the server (TF Serving's convention):

    DIR/NAME/VERSION/saved_model.pb, variables/, assets/labels.txt, assets.extra/tf_serving_warmup_requests
    DIR/NAME/VERSION/model.onnx, labels.txt, export.json

VERSION is a positive integer. Staging folders start with "." so neither TF Serving nor our server
ever sees a half-written version.
"""
from __future__ import annotations

import os
from typing import List

SAVED_MODEL_FILE = "saved_model.pb"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
LABELS_FILE = "labels.txt"
EXPORT_FILE = "export.json"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SIGNATURES = ("serving_default", "predict_images")
OUTPUTS = ("probabilities", "classes", "logits")


def list_versions(model_dir: str) -> List[int]:
    """Integer version folders under DIR/NAME, ascending."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(entry) for entry in os.listdir(model_dir)
                  if entry.isdigit() and int(entry) > 0 and os.path.isdir(os.path.join(model_dir, entry)))


def next_version(model_dir: str) -> int:
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def read_labels(path: str) -> List[str]:
    with open(path, "r", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def labels_text(labels) -> bytes:
    return ("\n".join(labels) + "\n").encode("utf-8")

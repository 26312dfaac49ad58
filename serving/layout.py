"""The export folder layout shared by the exporter and the server (TF Serving's convention):

    DIR/NAME/VERSION/saved_model.pb, variables/, assets/labels.txt, assets.extra/tf_serving_warmup_requests
    DIR/NAME/VERSION/model.onnx, labels.txt, export.json

VERSION is a positive integer. Staging folders start with "." so neither TF Serving nor our server
ever sees a half-written version. export.json records the SHA-256 of every other file in the version
folder (`sha256`: {relative path: hex}); the server checks the files it loads against it.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Iterable, List

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


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file, read through one reused 1 MiB buffer (model files can be gigabytes)."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(memoryview(buffer)[:count])
    return digest.hexdigest()


def folder_digests(folder: str) -> Dict[str, str]:
    """{relative path with "/": SHA-256} of every file under `folder` except export.json itself."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if relative != EXPORT_FILE:
                digests[relative] = file_sha256(os.path.join(root, name))
    return dict(sorted(digests.items()))


def mismatched_files(folder: str, recorded: Dict[str, str], names: Iterable[str]) -> List[str]:
    """Those of `names` (relative paths) that are missing, unrecorded or differ from their recorded SHA-256."""
    bad = []
    for name in names:
        path = os.path.join(folder, *name.split("/"))
        if name not in recorded or not os.path.isfile(path) or file_sha256(path) != recorded[name]:
            bad.append(name)
    return bad

"""Model backends (ONNX Runtime, TensorFlow SavedModel): loading one version folder as a `Servable`.

A version is loaded only after the files its backend reads match the SHA-256 digests that `export`
recorded in export.json. Which versions are served, and hot reload, are serving/repository.py's.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np

from revnet.common.errors import UserError
from revnet.common.fileio import read_json
from revnet.serving import layout
from revnet.serving.serve_config import BACKENDS

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class Servable:
    """One loaded model version: `run(images float32 [B,H,W,3]) -> {probabilities, classes, logits}`."""

    def __init__(self, name: str, version: int, path: str, labels: List[str], input_size: int,
                 preprocessing: str):
        self.name, self.version, self.path = name, version, path
        self.labels, self.input_size, self.preprocessing = labels, input_size, preprocessing

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def run(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        raise NotImplementedError


class OnnxServable(Servable):
    def __init__(self, *args, onnx_file: str = layout.ONNX_FILE, intra_op_threads: int = 0, session_config=None):
        super().__init__(*args)
        import onnxruntime

        from revnet.serving.ort_session import SessionConfig, create_session

        available = onnxruntime.get_available_providers()
        wanted = [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
        # The serving session options (ort_session.py): full graph optimisation, the cached optimised
        # model when it was made for this CPU and ORT, intra-op threads = cores left after the gRPC threads.
        config = session_config or SessionConfig(intra_op_threads=intra_op_threads)
        self.session, self.session_record = create_session(os.path.join(self.path, onnx_file), config, providers=wanted)
        # ORT silently drops a provider it cannot initialise, so log what the session really uses.
        self.providers = self.session.get_providers()
        log.info("onnx backend: %s v%d (%s) on providers %s (available: %s); intra-op threads %d, optimised model %s",
                 self.name, self.version, onnx_file, self.providers, available,
                 self.session_record["intra_op_num_threads"], self.session_record["cache"])
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, images):
        return dict(zip(self.output_names, self.session.run(None, {"images": images}), strict=True))


class TfServable(Servable):
    def __init__(self, *args):
        super().__init__(*args)
        import tensorflow as tf

        self._tf = tf
        self.loaded = tf.saved_model.load(self.path)
        self.function = self.loaded.signatures["serving_default"]
        self.providers = ["tensorflow:" + ",".join(d.name for d in tf.config.list_logical_devices())]
        log.info("tf backend: %s v%d loaded from %s", self.name, self.version, self.path)

    def run(self, images):
        outputs = self.function(images=self._tf.constant(images))
        return {key: value.numpy() for key, value in outputs.items()}


def _onnx_files(path: str, onnx_file: str, recorded: Dict[str, str]) -> List[str]:
    read = [name for name in (layout.LABELS_FILE, layout.WARMUP_FILE.replace(os.sep, "/"))
            if os.path.exists(os.path.join(path, name))]
    return [onnx_file] + read


def _savedmodel_files(path: str, onnx_file: str, recorded: Dict[str, str]) -> List[str]:
    onnx_side = (".onnx", ".ort")
    names = {name for name in recorded if not name.endswith(onnx_side) and name != layout.LABELS_FILE}
    return sorted(names | {layout.SAVED_MODEL_FILE})


class Backend(NamedTuple):
    """What a backend reads from a version folder and how it loads it."""

    model_file: Callable[[str], str]                           # onnx_file -> the file that makes a version
    verified_files: Callable[[str, str, Dict[str, str]], List[str]]   # (path, onnx_file, recorded) -> files
    labels_file: str
    load: Callable[..., Servable]                              # (*servable args, onnx_file, intra_op, session)


BACKEND_TABLE: Dict[str, Backend] = {
    "onnx": Backend(lambda onnx_file: onnx_file, _onnx_files, layout.LABELS_FILE,
                    lambda *args, onnx_file, intra_op_threads, session_config: OnnxServable(
                        *args, onnx_file=onnx_file, intra_op_threads=intra_op_threads, session_config=session_config)),
    "tf": Backend(lambda onnx_file: layout.SAVED_MODEL_FILE, _savedmodel_files,
                  os.path.join("assets", layout.LABELS_FILE),
                  lambda *args, onnx_file, intra_op_threads, session_config: TfServable(*args)),
}
assert tuple(BACKEND_TABLE) == BACKENDS


def model_file(backend: str, onnx_file: str = layout.ONNX_FILE) -> str:
    """The file whose presence makes a folder a version for `backend`."""
    return BACKEND_TABLE[backend].model_file(onnx_file)


def has_artifact(version_dir: str, backend: str, onnx_file: str) -> bool:
    return os.path.exists(os.path.join(version_dir, model_file(backend, onnx_file)))


def verify_version(path: str, record: Dict, backend: str, onnx_file: str = layout.ONNX_FILE) -> None:
    """UserError unless the backend's files match export.json's SHA-256 record."""
    recorded = record.get("sha256")
    if recorded is None:
        log.warning("%s has no SHA-256 record (exported before they were written); its files cannot be verified",
                    path)
        return
    bad = layout.mismatched_files(path, recorded, BACKEND_TABLE[backend].verified_files(path, onnx_file, recorded))
    if bad:
        raise UserError(f"{path}: {', '.join(bad)} missing or not matching the SHA-256 recorded in "
                        f"{layout.EXPORT_FILE} (corrupted or changed after export); refusing to serve it")


def load_servable(model_dir: str, version: int, backend: str, onnx_file: str = layout.ONNX_FILE,
                  intra_op_threads: int = 0, session_config=None, name: Optional[str] = None) -> Servable:
    """One version's servable; `session_config` (an ort_session.SessionConfig) overrides intra_op_threads.
    `name` is the model's served name (default: the folder's)."""
    name = name or os.path.basename(os.path.normpath(model_dir))
    path = os.path.join(model_dir, str(version))
    record = read_json(os.path.join(path, layout.EXPORT_FILE))
    verify_version(path, record, backend, onnx_file)
    labels_path = os.path.join(path, BACKEND_TABLE[backend].labels_file)
    labels = layout.read_labels(labels_path) if os.path.exists(labels_path) else record["labels"]
    # Exports made before the `preprocessing` field chose it by the model family.
    args = (name, version, path, labels, int(record["input_size"]), record.get("preprocessing", record["family"]))
    return BACKEND_TABLE[backend].load(*args, onnx_file=onnx_file, intra_op_threads=intra_op_threads,
                                       session_config=session_config)

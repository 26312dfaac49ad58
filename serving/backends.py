"""Model backends (ONNX Runtime, TensorFlow SavedModel) and the version repository with hot reload.

A version is loaded only after the files its backend reads match the SHA-256 digests that `export`
recorded in export.json. The repository serves the highest version that loads: a broken version is
logged once and skipped (until its files change), lower good versions stay or get served, and newer
good versions are still picked up.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from revnet.common.errors import UserError, choose
from revnet.common.fileio import read_json
from revnet.serving import layout
from revnet.serving.config import BACKENDS

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
        return dict(zip(self.output_names, self.session.run(None, {"images": images})))


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


def _has_artifact(version_dir: str, backend: str, onnx_file: str) -> bool:
    name = onnx_file if backend == "onnx" else layout.SAVED_MODEL_FILE
    return os.path.exists(os.path.join(version_dir, name))


def _verified_files(path: str, backend: str, onnx_file: str, recorded: Dict[str, str]) -> List[str]:
    """The files of a version folder that the backend reads (relative paths)."""
    if backend == "onnx":
        read = [name for name in (layout.LABELS_FILE, layout.WARMUP_FILE.replace(os.sep, "/"))
                if os.path.exists(os.path.join(path, name))]
        return [onnx_file] + read
    onnx_side = (".onnx", ".ort")
    names = {name for name in recorded if not name.endswith(onnx_side) and name != layout.LABELS_FILE}
    return sorted(names | {layout.SAVED_MODEL_FILE})


def verify_version(path: str, record: Dict, backend: str, onnx_file: str = layout.ONNX_FILE) -> None:
    """UserError unless the backend's files match export.json's SHA-256 record."""
    recorded = record.get("sha256")
    if recorded is None:
        log.warning("%s has no SHA-256 record (exported before they were written); its files cannot be verified",
                    path)
        return
    bad = layout.mismatched_files(path, recorded, _verified_files(path, backend, onnx_file, recorded))
    if bad:
        raise UserError(f"{path}: {', '.join(bad)} missing or not matching the SHA-256 recorded in "
                        f"{layout.EXPORT_FILE} (corrupted or changed after export); refusing to serve it")


def load_servable(model_dir: str, version: int, backend: str, onnx_file: str = layout.ONNX_FILE,
                  intra_op_threads: int = 0, session_config=None) -> Servable:
    """One version's servable; `session_config` (an ort_session.SessionConfig) overrides intra_op_threads."""
    name = os.path.basename(os.path.normpath(model_dir))
    path = os.path.join(model_dir, str(version))
    record = read_json(os.path.join(path, layout.EXPORT_FILE))
    verify_version(path, record, backend, onnx_file)
    labels_path = os.path.join(path, layout.LABELS_FILE if backend == "onnx" else os.path.join("assets", layout.LABELS_FILE))
    labels = layout.read_labels(labels_path) if os.path.exists(labels_path) else record["labels"]
    # Exports made before the `preprocessing` field chose it by the model family.
    args = (name, version, path, labels, int(record["input_size"]), record.get("preprocessing", record["family"]))
    if backend == "onnx":
        return OnnxServable(*args, onnx_file=onnx_file, intra_op_threads=intra_op_threads, session_config=session_config)
    return TfServable(*args)


def _folder_state(path: str) -> Tuple:
    """Names, sizes and modification times of a version folder's files: a broken version is retried when it changes."""
    state = []
    for root, _, files in os.walk(path):
        for file_name in files:
            try:
                stat = os.stat(os.path.join(root, file_name))
            except OSError:
                continue
            state.append((os.path.relpath(os.path.join(root, file_name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(state))


class ModelRepository:
    """Serves the highest version of DIR/NAME that loads; `poll()` picks up newer ones."""

    def __init__(self, model_dir: str, backend: str, onnx_file: str = layout.ONNX_FILE, intra_op_threads: int = 0,
                 on_load: Optional[Callable[[str, int, bool, int], None]] = None,
                 warmup: Optional[Callable[[Servable], int]] = None):
        """`on_load(name, version, ok, warmup_requests)` is called after each load attempt; `warmup(servable)`
        replays a new version's warm-up requests (their count) before it is served, and a failure fails its load."""
        choose("backend", backend, BACKENDS)
        self.warmup = warmup or (lambda servable: 0)
        self.on_load = on_load or (lambda name, version, ok, warmup_requests: None)
        if not os.path.isdir(model_dir):
            raise UserError(f"model folder {model_dir!r} does not exist; expected DIR/NAME from `cli.py export`")
        self.model_dir, self.backend, self.onnx_file = model_dir, backend, onnx_file
        self.intra_op_threads = intra_op_threads
        self.name = os.path.basename(os.path.normpath(model_dir))
        self._lock = threading.Lock()
        self._current: Optional[Servable] = None
        self._broken: Dict[int, Tuple[Tuple, str]] = {}  # version -> (folder state when it failed, reason)
        self._ignored: Dict[int, str] = {}  # version -> the real path of a folder without a model file, logged
        self.listeners = []  # called with the new servable after each load
        if not self.poll():
            artifact = onnx_file if backend == "onnx" else layout.SAVED_MODEL_FILE
            reasons = "; ".join(f"version {v}: {reason}" for v, (_, reason) in sorted(self._broken.items(), reverse=True))
            raise UserError(f"{model_dir!r} has no version folder with a {backend} model ({artifact}) that loads"
                            + (f" ({reasons})" if reasons else "; run `cli.py export`"))

    def available_versions(self) -> List[int]:
        """Version folders holding this backend's model file; any other is logged once (until it changes)."""
        versions = []
        for version in layout.list_versions(self.model_dir):
            path = os.path.join(self.model_dir, str(version))
            if _has_artifact(path, self.backend, self.onnx_file):
                versions.append(version)
                self._ignored.pop(version, None)
            elif self._ignored.get(version) != os.path.realpath(path):
                self._ignored[version] = os.path.realpath(path)
                target = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
                artifact = self.onnx_file if self.backend == "onnx" else layout.SAVED_MODEL_FILE
                log.warning("version folder %s%s holds no %s, so it is not an export for the %s backend; ignoring it",
                            path, target, artifact, self.backend)
        return versions

    def poll(self) -> bool:
        """Serve the highest version newer than the served one that loads; True when something is served."""
        current = self._current
        for version in reversed(self.available_versions()):
            if current is not None and version <= current.version:
                break
            state = _folder_state(os.path.join(self.model_dir, str(version)))
            if version in self._broken and self._broken[version][0] == state:
                continue  # already logged; retried only once its files change
            try:
                servable = load_servable(self.model_dir, version, self.backend, self.onnx_file, self.intra_op_threads)
                warmup_requests = self.warmup(servable)
            except Exception as error:  # noqa: BLE001 - a broken version must not take the server down
                reason = " ".join(f"{type(error).__name__}: {error}".split())[:1000]
                self._broken[version] = (state, reason)
                self.on_load(self.name, version, False, 0)
                log.error("cannot load %s version %d, skipping it until its files change: %s", self.name, version, reason)
                log.debug("loading %s version %d failed", self.name, version, exc_info=True)
                continue
            self._broken.pop(version, None)
            self.on_load(self.name, version, True, warmup_requests)
            with self._lock:
                self._current = servable
            log.info("serving %s version %d (%s)%s", self.name, servable.version, self.backend,
                     f" after {warmup_requests} warm-up requests" if warmup_requests else "")
            for listener in self.listeners:
                listener(servable)
            break
        return self._current is not None

    def current(self) -> Servable:
        with self._lock:
            return self._current

    def get(self, name: str, version: Optional[int]) -> Servable:
        """The servable for a request's model spec, or a NOT_FOUND UserError."""
        if name and name != self.name:
            raise UserError(f"model {name!r} is not served; this server serves {self.name!r}", not_found=True)
        servable = self.current()
        if version is not None and version != servable.version:
            raise UserError(f"version {version} of model {self.name!r} is not loaded; serving version {servable.version}",
                            not_found=True)
        return servable

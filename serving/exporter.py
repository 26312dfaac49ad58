"""Export a trained experiment as a TF-Serving SavedModel and/or an ONNX model, checked for parity.

Inference-only: the model is called with training=False, so batch norm uses its moving statistics,
no custom gradient is traced, and reversible stages run their forward-only tf.while_loop.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from revnet.common.errors import UserError, choose
from revnet.common.fileio import atomic_write_bytes, atomic_write_json
from revnet.serving import layout
from revnet.serving.images import decode_image_tf, decode_images_numpy

log = logging.getLogger(__name__)

FORMATS = ("savedmodel", "onnx", "all")
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 16
WARMUP_REQUESTS = 3


class ServingModule(tf.Module):
    """The inference graph: the restored model behind the two serving signatures."""

    def __init__(self, model, input_size: int, preprocessing: str):
        super().__init__(name="serving")
        # tf2onnx turns eagerly created constants captured by a tf.function into extra graph inputs
        # (the model's pixel mean/std), which ORT then demands at run time. Variables are frozen
        # into constants instead, so wrap them.
        for attribute in ("pixel_mean", "pixel_std"):
            value = getattr(model, attribute, None)
            if value is not None and not isinstance(value, tf.Variable):
                setattr(model, attribute, tf.Variable(value, trainable=False, name=attribute))
        self.model = model
        self.input_size = input_size
        self.preprocessing = preprocessing
        spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="images")
        self.serving_default = tf.function(self._predict, input_signature=[spec])
        self.predict_images = tf.function(self._predict_bytes,
                                          input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])

    def _predict(self, images):
        logits = self.model(images, training=False)
        return {"probabilities": tf.nn.softmax(logits, axis=-1), "classes": tf.argmax(logits, axis=-1, output_type=tf.int64),
                "logits": logits}

    def _predict_bytes(self, image_bytes):
        images = tf.map_fn(lambda data: decode_image_tf(data, self.input_size, self.preprocessing), image_bytes,
                           fn_output_signature=tf.TensorSpec([self.input_size, self.input_size, 3], tf.float32))
        return self._predict(images)


def export(exp_id: str, output: str, format: str = "all", workdir: Optional[str] = None, name: Optional[str] = None,
           version: Optional[int] = None, checkpoint: str = "latest", opset: int = DEFAULT_OPSET,
           overwrite: bool = False, quantize: Optional[str] = None, data_dir: Optional[str] = None) -> Dict:
    """Export experiment `exp_id` into OUTPUT/NAME/VERSION/; returns (and writes) the export.json record."""
    from revnet.train.experiment import restore_model

    choose("format", format, FORMATS)
    if quantize is not None:
        choose("quantization", quantize, ("int8",))
        if format == "savedmodel":
            raise UserError("--quantize int8 applies to ONNX; use --format onnx or all")
    if not 7 <= opset <= 18:
        raise UserError(f"--opset {opset} is not supported by tf2onnx 1.17; expected 7..18")
    model, config, checkpoint_path = restore_model(workdir, exp_id, checkpoint)
    model_config = model.config
    labels = _labels(config, model_config.num_classes)
    name = name or exp_id
    model_dir = os.path.join(output, name)
    version = version if version is not None else layout.next_version(model_dir)
    if version < 1:
        raise UserError(f"--version must be a positive integer, got {version}")
    version_dir = os.path.join(model_dir, str(version))
    if os.path.exists(version_dir) and not overwrite:
        raise UserError(f"{version_dir} already exists; pass --overwrite to replace it or choose another --version")

    module = ServingModule(model, model_config.input_size, model_config.preprocessing)
    images, labels_true, image_bytes, source = _parity_batch(config, data_dir, model_config)
    os.makedirs(model_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    record = {"experiment": exp_id, "checkpoint": checkpoint_path, "model": model_config.to_json(), "name": name,
              "version": version, "format": format, "labels": labels, "input_size": model_config.input_size,
              "family": model_config.family, "preprocessing": model_config.preprocessing, "parity_images": {"source": source, "count": int(len(images))}}
    try:
        reference = {key: value.numpy() for key, value in module.serving_default(tf.constant(images)).items()}
        if format in ("savedmodel", "all"):
            record["savedmodel"] = _export_savedmodel(module, staging, labels, image_bytes, images)
        if format in ("onnx", "all"):
            record["onnx"] = _export_onnx(module, staging, labels, images, reference, opset)
            if quantize:
                record["onnx"]["int8"] = _quantize_int8(staging, images, reference, labels_true)
        if labels_true is not None:
            record["tf_accuracy_on_parity_images"] = float(np.mean(reference["classes"] == labels_true))
        atomic_write_json(os.path.join(staging, layout.EXPORT_FILE), record)
        _publish(staging, version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record["path"] = version_dir
    log.info("exported %s version %d to %s", name, version, version_dir)
    return record


def _labels(config: Dict, num_classes: int) -> List[str]:
    labels = list(config.get("data", {}).get("label_names") or [])
    if len(labels) != num_classes:
        if labels:
            log.warning("config has %d label names for %d classes; using class_N names", len(labels), num_classes)
        labels = [f"class_{index}" for index in range(num_classes)]
    return labels


def _parity_batch(config: Dict, data_dir: Optional[str], model_config):
    """(float images, labels or None, encoded bytes, source) from the validation split when available."""
    from revnet.serving.dataset import read_validation_images

    data_dir = data_dir or config.get("data", {}).get("dir")
    size, preprocessing = model_config.input_size, model_config.preprocessing
    encoded, labels = read_validation_images(data_dir, PARITY_IMAGES) if data_dir else ([], [])
    if encoded:
        return decode_images_numpy(encoded, size, preprocessing), np.asarray(labels), encoded, f"validation:{data_dir}"
    log.warning("no validation images found (data dir %r); checking parity on random images", data_dir)
    images = np.random.RandomState(0).uniform(0, 255, (PARITY_IMAGES, size, size, 3)).astype(np.float32)
    encoded = [tf.io.encode_png(image.astype(np.uint8)).numpy() for image in images[:WARMUP_REQUESTS]]
    return np.round(images), None, encoded, "random"


def _export_savedmodel(module: ServingModule, staging: str, labels, image_bytes, images) -> Dict:
    started = time.perf_counter()
    tf.saved_model.save(module, staging, signatures={"serving_default": module.serving_default,
                                                     "predict_images": module.predict_images})
    atomic_write_bytes(os.path.join(staging, "assets", layout.LABELS_FILE), layout.labels_text(labels))
    _write_warmup(os.path.join(staging, layout.WARMUP_FILE), image_bytes[:WARMUP_REQUESTS], images[:1])
    loaded = tf.saved_model.load(staging)
    missing = [name for name in layout.SIGNATURES if name not in loaded.signatures]
    if missing:
        raise RuntimeError(f"SavedModel lost signatures {missing}")
    reloaded = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    direct = module.serving_default(tf.constant(images))["probabilities"].numpy()
    return {"signatures": list(layout.SIGNATURES), "seconds": round(time.perf_counter() - started, 2),
            "reload_max_abs_diff": float(np.abs(reloaded - direct).max())}


def _write_warmup(path: str, image_bytes, images) -> None:
    """TF Serving replays these PredictionLog records at load time (one per signature)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from revnet.serving.tensors import make_tensor_proto

    os.makedirs(os.path.dirname(path), exist_ok=True)
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
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log_record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log_record.SerializeToString())


def _export_onnx(module: ServingModule, staging: str, labels, images, reference, opset: int) -> Dict:
    import onnx
    import tf2onnx

    started = time.perf_counter()
    path = os.path.join(staging, layout.ONNX_FILE)
    proto, _ = tf2onnx.convert.from_function(module.serving_default, input_signature=module.serving_default.input_signature,
                                             opset=opset)
    # tf2onnx can exit cleanly with a model ORT refuses; every check below must pass before publishing.
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise UserError(f"the converted ONNX model fails onnx.checker: {str(error).splitlines()[0]}") from None
    input_names = [graph_input.name for graph_input in proto.graph.input]
    if input_names != ["images"]:
        raise UserError(f"the converted ONNX model has inputs {input_names}; expected only 'images' "
                        f"(a captured constant was not frozen)")
    atomic_write_bytes(path, proto.SerializeToString())
    atomic_write_bytes(os.path.join(staging, layout.LABELS_FILE), layout.labels_text(labels))
    difference = _onnx_parity(path, images, reference)
    if difference > PARITY_TOLERANCE:
        raise UserError(f"ONNX Runtime and TensorFlow disagree: max abs probability difference {difference:.3g} "
                        f"exceeds {PARITY_TOLERANCE:g}; the ONNX model was not written")
    return {"file": layout.ONNX_FILE, "opset": opset, "max_abs_probability_diff": difference,
            "tolerance": PARITY_TOLERANCE, "seconds": round(time.perf_counter() - started, 2)}


def _run_onnx(path: str, images) -> Dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images})))


def _onnx_parity(path: str, images, reference) -> float:
    outputs = _run_onnx(path, images)
    if sorted(outputs) != sorted(layout.OUTPUTS):
        raise UserError(f"the ONNX model has outputs {sorted(outputs)}; expected {sorted(layout.OUTPUTS)}")
    return float(np.abs(outputs["probabilities"] - reference["probabilities"]).max())


def _quantize_int8(staging: str, images, reference, labels_true) -> Dict:
    """Dynamic int8 quantization (weights int8, activations quantized at run time), with its cost."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = os.path.join(staging, layout.ONNX_FILE), os.path.join(staging, layout.ONNX_INT8_FILE)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs one INFO line per tensor on the root logger
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, extra_options={"EnableSubgraph": True})
    finally:
        root.setLevel(level)
    outputs = _run_onnx(target, images)
    result = {"file": layout.ONNX_INT8_FILE, "method": "onnxruntime dynamic (QInt8 weights)",
              "max_abs_probability_diff": float(np.abs(outputs["probabilities"] - reference["probabilities"]).max()),
              "top1_agreement_with_float": float(np.mean(outputs["classes"] == reference["classes"])),
              "bytes_float": os.path.getsize(source), "bytes_int8": os.path.getsize(target)}
    if labels_true is not None:
        result["accuracy_float"] = float(np.mean(reference["classes"] == labels_true))
        result["accuracy_int8"] = float(np.mean(outputs["classes"] == labels_true))
        result["accuracy_change"] = result["accuracy_int8"] - result["accuracy_float"]
    return result


def _publish(staging: str, version_dir: str) -> None:
    """Rename the finished staging folder into place; an old version folder is replaced only at the end."""
    from revnet.common.storage import publish_folder

    os.chmod(staging, 0o755)  # mkdtemp made it private
    publish_folder(staging, version_dir)

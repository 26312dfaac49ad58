"""Export a trained experiment as a TF-Serving SavedModel and/or an ONNX model, checked for parity.

Both formats serve the inference graph of `serving/inference_graph.py` (reversible stages unrolled,
batch norm folded into the convolutions, moving statistics), NHWC in the SavedModel and NCHW in ONNX
(`serving/onnx_export.py`); a RevViT serves its own traced inference call (`serving/traced_graph.py`).
The export fails, publishing nothing, unless that graph matches the model's own inference function and
ONNX Runtime matches TensorFlow on the parity images.

Safety of the output: the model name is one folder name; a version folder is claimed by creating it
exclusively (concurrent exports take different numbers); --overwrite replaces only an empty folder or
an earlier export (it holds export.json); export.json records the SHA-256 of every artefact.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.common.fileio import atomic_write_bytes, atomic_write_json, read_json
from revnet.serving import layout, onnx_export, warmup
from revnet.serving.serve_config import ExportConfig
from revnet.serving.request_images import decode_image_tf, decode_images_numpy
from revnet.serving.inference_graph import outputs_from_logits
from revnet.serving.traced_graph import export_graph
from revnet.train.train_config import ExperimentConfig

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 16
QUANTIZE_CALIBRATION_IMAGES = 256
QUANTIZE_EVALUATION_IMAGES = 1000
WARMUP_REQUESTS = 3


class ServingModule(tf.Module):
    """The two serving signatures over the folded, unrolled inference graph (NHWC, run by TensorFlow)."""

    def __init__(self, model, input_size: int, preprocessing: str):
        super().__init__(name="serving")
        # The graph holds its own folded copies of the weights as variables (which tf2onnx freezes into
        # constants, so nothing captured becomes an extra ONNX input); the model is only read. A RevViT has no
        # folded program: its graph is its own inference call (serving/traced_graph.py).
        self.graph = export_graph(model)
        self.input_size = input_size
        self.preprocessing = preprocessing
        spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="images")
        self.serving_default = tf.function(self._predict, input_signature=[spec])
        self.predict_images = tf.function(self._predict_bytes,
                                          input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])

    def _predict(self, images):
        return outputs_from_logits(self.graph.logits(images, "NHWC"))

    def _predict_bytes(self, image_bytes):
        images = tf.map_fn(lambda data: decode_image_tf(data, self.input_size, self.preprocessing), image_bytes,
                           fn_output_signature=tf.TensorSpec([self.input_size, self.input_size, 3], tf.float32))
        return self._predict(images)


def export(options: Optional[ExportConfig] = None, **fields) -> Dict:
    """Export an experiment into OUTPUT/NAME/VERSION/ from an ExportConfig or its fields as keywords
    (`exp_id=..., output=...`); returns (and writes) the export.json record."""
    from revnet.train.experiment import restore_model

    options = options or ExportConfig(**fields)
    exp_id, output, format, version, quantize = (options.exp_id, options.output, options.format, options.version,
                                                 options.quantize)
    opset, overwrite, data_dir, name = options.opset, options.overwrite, options.data_dir, options.model_name
    workdir, checkpoint = options.workdir, options.checkpoint
    model, config, checkpoint_path = restore_model(workdir, exp_id, checkpoint)
    model_config = model.config
    labels = _labels(config, model_config.num_classes)
    model_dir = os.path.join(output, name)
    version, version_dir, reserved = reserve_version(model_dir, version, overwrite)
    try:
        module = ServingModule(model, model_config.input_size, model_config.preprocessing)
        images, labels_true, image_bytes, source = _parity_batch(config, data_dir, model_config)
    except BaseException:
        _release_reservation(version_dir, reserved)
        raise
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    record = {"experiment": exp_id, "checkpoint": checkpoint_path, "model": model_config.to_json(), "name": name,
              "version": version, "format": format, "labels": labels, "input_size": model_config.input_size,
              "family": model_config.family, "preprocessing": model_config.preprocessing,
              "parity_images": {"source": source, "count": int(len(images))}}
    try:
        reference = {key: value.numpy() for key, value in module.serving_default(tf.constant(images)).items()}
        record["inference_graph"] = _graph_record(model, module, images, reference)
        record["warmup_requests"] = warmup.write_warmup_requests(staging, image_bytes[:WARMUP_REQUESTS], images[:1])
        if format in ("savedmodel", "all"):
            record["savedmodel"] = _export_savedmodel(module, staging, labels, images)
        if format in ("onnx", "all"):
            record["onnx"] = onnx_export.export_onnx(module.graph, staging, images, reference, opset, PARITY_TOLERANCE)
            atomic_write_bytes(os.path.join(staging, layout.LABELS_FILE), layout.labels_text(labels))
            if quantize:
                record["onnx"]["int8"] = _quantize_int8(staging, config, data_dir, model_config)
        if labels_true is not None:
            record["tf_accuracy_on_parity_images"] = float(np.mean(reference["classes"] == labels_true))
        record["sha256"] = layout.folder_digests(staging)  # last: every artefact is written by now
        atomic_write_json(os.path.join(staging, layout.EXPORT_FILE), record)
        _publish(staging, version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _release_reservation(version_dir, reserved)  # a no-op once published
    record["path"] = version_dir
    log.info("exported %s version %d to %s", name, version, version_dir)
    return record


def _labels(config: ExperimentConfig, num_classes: int) -> List[str]:
    labels = list(config.data.label_names or [])
    if len(labels) != num_classes:
        if labels:
            log.warning("config has %d label names for %d classes; using class_N names", len(labels), num_classes)
        labels = [f"class_{index}" for index in range(num_classes)]
    return labels


def _parity_batch(config: ExperimentConfig, data_dir: Optional[str], model_config):
    """(float images, labels or None, encoded bytes, source) from the validation split when available."""
    from revnet.serving.dataset import read_validation_images

    data_dir = data_dir or config.data.dir
    size, preprocessing = model_config.input_size, model_config.preprocessing
    encoded, labels = read_validation_images(data_dir, PARITY_IMAGES) if data_dir else ([], [])
    if encoded:
        return decode_images_numpy(encoded, size, preprocessing), np.asarray(labels), encoded, f"validation:{data_dir}"
    log.warning("no validation images found (data dir %r); checking parity on random images", data_dir)
    images = np.random.RandomState(0).uniform(0, 255, (PARITY_IMAGES, size, size, 3)).astype(np.float32)
    encoded = [tf.io.encode_png(image.astype(np.uint8)).numpy() for image in images[:WARMUP_REQUESTS]]
    return np.round(images), None, encoded, "random"


def _export_savedmodel(module: ServingModule, staging: str, labels, images) -> Dict:
    started = time.perf_counter()
    tf.saved_model.save(module, staging, signatures={"serving_default": module.serving_default,
                                                     "predict_images": module.predict_images})
    atomic_write_bytes(os.path.join(staging, "assets", layout.LABELS_FILE), layout.labels_text(labels))
    loaded = tf.saved_model.load(staging)
    missing = [name for name in layout.SIGNATURES if name not in loaded.signatures]
    if missing:
        raise RuntimeError(f"SavedModel lost signatures {missing}")
    reloaded = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    direct = module.serving_default(tf.constant(images))["probabilities"].numpy()
    return {"signatures": list(layout.SIGNATURES), "seconds": round(time.perf_counter() - started, 2),
            "reload_max_abs_diff": float(np.abs(reloaded - direct).max())}


def _graph_record(model, module: ServingModule, images, reference) -> Dict:
    """Prove the folded, unrolled graph computes the model's own inference function (its loop forward)."""
    expected = tf.nn.softmax(model(tf.constant(images), training=False), axis=-1).numpy()
    difference = float(np.abs(reference["probabilities"] - expected).max())
    if difference > PARITY_TOLERANCE:
        raise UserError(f"the export's inference graph disagrees with the model: max abs probability difference "
                        f"{difference:.3g} exceeds {PARITY_TOLERANCE:g}; nothing was exported")
    return {"unrolled_blocks": sum(getattr(stack, "num_blocks", 0) for stack in getattr(model, "stacks", []) if stack),
            "folded_weights": len(module.graph.weights), "max_abs_probability_diff_vs_model": difference}


def _quantize_int8(staging: str, config: ExperimentConfig, data_dir: Optional[str], model_config) -> Dict:
    """Calibrate on training images, measure on validation images (disjoint from the calibration set)."""
    from revnet.serving.dataset import read_image_set

    data_dir = data_dir or config.data.dir
    size, preprocessing = model_config.input_size, model_config.preprocessing
    calibration = read_image_set(data_dir, "train", QUANTIZE_CALIBRATION_IMAGES, size, preprocessing, seed=1)
    evaluation = read_image_set(data_dir, "validation", QUANTIZE_EVALUATION_IMAGES, size, preprocessing, seed=2)
    return onnx_export.quantize_int8(staging, calibration, evaluation)


def _is_replaceable(version_dir: str) -> bool:
    """True for an empty folder or one holding an export written by `export` (its export.json)."""
    if not os.path.isdir(version_dir) or os.path.islink(version_dir):
        return False
    entries = os.listdir(version_dir)
    if not entries:
        return True
    try:
        record = read_json(os.path.join(version_dir, layout.EXPORT_FILE))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"experiment", "version", "format"} <= set(record)


def reserve_version(model_dir: str, version: Optional[int], overwrite: bool):
    """(version, version_dir, reserved): the version folder, created here (reserved=True) or, with --overwrite,
    an existing export to replace. Without a version the next free number is claimed by creating its
    folder exclusively, so concurrent exports never pick the same one."""
    try:
        os.makedirs(model_dir, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot export into {model_dir!r}: it exists and is not a folder") from None
    except OSError as error:
        raise UserError(f"cannot create the export folder {model_dir!r} ({error.strerror}); choose an --output "
                        f"you can write") from None
    for _ in range(1000):
        number = version if version is not None else layout.next_version(model_dir)
        version_dir = os.path.join(model_dir, str(number))
        try:
            os.mkdir(version_dir)
            return number, version_dir, True
        except FileExistsError:
            if version is None:
                continue  # another export claimed it first: take the next number
        except OSError as error:
            if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):   # read-only, immutable, not ours
                raise UserError(f"cannot write into the export folder {model_dir!r} ({error.strerror}); choose "
                                f"an --output you can write") from None
            raise
        if not overwrite:
            raise UserError(f"{version_dir} already exists; pass --overwrite to replace it or choose another --version")
        if not _is_replaceable(version_dir):
            raise UserError(f"refusing to overwrite {version_dir}: it is not an export written by `export` (no "
                            f"{layout.EXPORT_FILE}) nor empty; move its files away or choose another --version")
        return number, version_dir, False
    raise UserError(f"could not claim a free version number in {model_dir}; pass --version")


def _release_reservation(version_dir: str, reserved: bool) -> None:
    if not reserved:
        return
    try:
        os.rmdir(version_dir)  # only ever removes the empty folder we created
    except OSError:
        pass


def _publish(staging: str, version_dir: str) -> None:
    """Rename the finished staging folder into place; an old version folder is replaced only at the end,
    and only if it is still empty or an export (checked again here: it may have changed meanwhile)."""
    from revnet.common.storage import publish_folder

    if os.path.lexists(version_dir) and not _is_replaceable(version_dir):
        raise UserError(f"refusing to overwrite {version_dir}: it changed during the export and is no longer "
                        f"empty or an export written by `export`")
    os.chmod(staging, 0o755)  # mkdtemp made it private
    publish_folder(staging, version_dir)

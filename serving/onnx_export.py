"""The ONNX half of an export: conversion of the NCHW inference graph, its checks, and int8 quantization.

tf2onnx converts the inference graph traced in NCHW (`serving/inference_graph.py`), so the ONNX graph
has one Transpose (the NHWC `images` input) and no Loop or BatchNormalization. Nothing is trusted
because tf2onnx exited 0: onnx.checker, the single `images` input, the op census, ONNX Runtime's
outputs against TensorFlow's, and the optimised-model cache are all checked before publishing.

`--quantize int8` is static quantization (QDQ, per-channel int8 weights, uint8 activations, MinMax
ranges from calibration images of the training split): ONNX Runtime then runs QLinearConv, which
uses AVX512-VNNI where the CPU has it. Dynamic quantization would quantize activations at run time
and turns Conv into ConvInteger, which is slower than float on CPU.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.common.fileio import atomic_write_bytes
from revnet.serving import layout
from revnet.serving.inference_graph import InferenceGraph, outputs_from_logits
from revnet.serving.ort_session import DEDICATED, SessionConfig, cache_paths, create_session, write_optimized_cache

log = logging.getLogger(__name__)

CENSUS_OPS = ("Transpose", "Loop", "BatchNormalization", "Conv", "Mul", "Add")
CALIBRATION_BATCH = 16
SPEED_BATCH = 32


def op_census(model_path: str) -> Dict[str, int]:
    """Node count per op type (top-level graph and subgraphs alike)."""
    import onnx

    counts = collections.Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)

    walk(onnx.load(model_path).graph)
    return {**{op: 0 for op in CENSUS_OPS}, **dict(sorted(counts.items()))}


def convert(graph: InferenceGraph, path: str, opset: int) -> None:
    """tf2onnx-convert the NCHW inference graph to `path`, checked by onnx.checker."""
    import onnx
    import tf2onnx

    spec = tf.TensorSpec([None, graph.input_size, graph.input_size, 3], tf.float32, name="images")
    function = tf.function(lambda images: outputs_from_logits(graph.logits(images, "NCHW")), input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
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


def run(path: str, images: np.ndarray, config: SessionConfig = SessionConfig()) -> Dict[str, np.ndarray]:
    """ONNX Runtime outputs for `images`, with the serving session options (and cache, when usable)."""
    return timed_run(path, images, config, batch=len(images))[0]


def timed_run(path: str, images: np.ndarray, config: SessionConfig, batch: int) -> Tuple[Dict[str, np.ndarray], float]:
    """(outputs, images per second) running `images` in batches of `batch`, after one warm-up batch."""
    session, _ = create_session(path, config)
    names = [output.name for output in session.get_outputs()]
    images = np.asarray(images, np.float32)
    session.run(None, {"images": images[:batch]})
    started = time.perf_counter()
    parts = [session.run(None, {"images": images[start:start + batch]}) for start in range(0, len(images), batch)]
    images_per_s = len(images) / (time.perf_counter() - started)
    outputs = {name: np.concatenate([part[index] for part in parts]) for index, name in enumerate(names)}
    if sorted(outputs) != sorted(layout.OUTPUTS):
        raise UserError(f"the ONNX model has outputs {sorted(outputs)}; expected {sorted(layout.OUTPUTS)}")
    return outputs, images_per_s


def max_abs_diff(outputs: Dict[str, np.ndarray], reference: Dict[str, np.ndarray]) -> float:
    return float(np.abs(outputs["probabilities"] - reference["probabilities"]).max())


def optimise_and_check(path: str, images, reference, tolerance: float) -> Dict:
    """Write the optimised-model cache beside `path` and prove it computes what the source does."""
    key = write_optimized_cache(path)
    difference = max_abs_diff(run(path, images), reference)
    if difference > tolerance:
        raise UserError(f"the optimised ONNX model disagrees with TensorFlow: max abs probability difference "
                        f"{difference:.3g} exceeds {tolerance:g}")
    cached, key_path = cache_paths(path)
    return {"file": os.path.basename(cached), "key_file": os.path.basename(key_path), "key": key,
            "ops": op_census(cached), "max_abs_probability_diff": difference}


def export_onnx(graph: InferenceGraph, staging: str, images, reference, opset: int, tolerance: float) -> Dict:
    """model.onnx + its optimised cache in `staging`; the record for export.json. Raises when parity fails."""
    started = time.perf_counter()
    path = os.path.join(staging, layout.ONNX_FILE)
    convert(graph, path, opset)
    difference = max_abs_diff(run(path, images, SessionConfig(use_cache=False)), reference)
    if difference > tolerance:
        raise UserError(f"ONNX Runtime and TensorFlow disagree: max abs probability difference {difference:.3g} "
                        f"exceeds {tolerance:g}; the ONNX model was not written")
    return {"file": layout.ONNX_FILE, "opset": opset, "layout": "NCHW inside; input 'images' NHWC, one Transpose",
            "ops": op_census(path), "max_abs_probability_diff": difference, "tolerance": tolerance,
            "session": SessionConfig().to_json(), "optimized": optimise_and_check(path, images, reference, tolerance),
            "seconds": round(time.perf_counter() - started, 2)}


class _Calibration:
    """The quantizer's CalibrationDataReader: batches of calibration images."""

    def __init__(self, images: np.ndarray):
        self.batches = iter([{"images": images[start:start + CALIBRATION_BATCH]}
                             for start in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(staging: str, calibration, evaluation) -> Dict:
    """model.int8.onnx from model.onnx (static QDQ) calibrated on `calibration` (an ImageSet), with its
    top-1 agreement with float and accuracy change on `evaluation` (another ImageSet)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    source, target = os.path.join(staging, layout.ONNX_FILE), os.path.join(staging, layout.ONNX_INT8_FILE)
    prepared = os.path.join(staging, ".int8-prepared.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs one INFO line per tensor on the root logger
    try:
        quant_pre_process(source, prepared)
        quantize_static(prepared, target, _Calibration(calibration.images), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=QUANTIZED_OPS)
    finally:
        root.setLevel(level)
        if os.path.exists(prepared):
            os.remove(prepared)
    write_optimized_cache(target)
    # Speed on the same images, at batch 32, every core: a first look; `benchmark serve` is the measurement.
    float_outputs, float_speed = timed_run(source, evaluation.images, DEDICATED, SPEED_BATCH)
    int8_outputs, int8_speed = timed_run(target, evaluation.images, DEDICATED, SPEED_BATCH)
    result = {"file": layout.ONNX_INT8_FILE, "ops": op_census(target),
              "method": "onnxruntime static QDQ: per-channel int8 weights, uint8 activations, MinMax calibration",
              "calibration_images": {"source": calibration.source, "count": int(len(calibration.images))},
              "evaluation_images": {"source": evaluation.source, "count": int(len(evaluation.images))},
              "max_abs_probability_diff": max_abs_diff(int8_outputs, float_outputs),
              "top1_agreement_with_float": float(np.mean(int8_outputs["classes"] == float_outputs["classes"])),
              "bytes_float": os.path.getsize(source), "bytes_int8": os.path.getsize(target),
              "speed_batch": SPEED_BATCH, "images_per_s_float": round(float_speed, 1),
              "images_per_s_int8": round(int8_speed, 1), "speedup": round(int8_speed / float_speed, 2),
              "seconds": round(time.perf_counter() - started, 2)}
    if evaluation.labels is not None:
        result["accuracy_float"] = float(np.mean(float_outputs["classes"] == evaluation.labels))
        result["accuracy_int8"] = float(np.mean(int8_outputs["classes"] == evaluation.labels))
        result["accuracy_change"] = result["accuracy_int8"] - result["accuracy_float"]
    log.info("int8: top-1 agreement %.4f on %d %s images; %.2fx the float model's images/s at batch %d",
             result["top1_agreement_with_float"], len(evaluation.images), evaluation.source, result["speedup"],
             SPEED_BATCH)
    return result


# Softmax/ArgMax stay float: quantizing the output would cost probability precision and save nothing.
QUANTIZED_OPS = ["Conv", "MatMul", "Add", "Mul", "Relu", "AveragePool", "GlobalAveragePool", "Pad", "Split",
                 "Concat", "Squeeze", "Transpose", "Sub"]

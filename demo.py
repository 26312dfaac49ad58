"""`cli.py demo`: the whole production pipeline, offline, on data the project makes itself.

It calls the same functions as the individual commands (no shortcuts):
  1. write procedurally generated images as a genuine cifar-10-python.tar.gz;
  2. preprocess it with the Beam pipeline (DirectRunner) into sharded TFRecords;
  3. train a RevNet with synchronous SGD over CPU replicas (MirroredStrategy);
  4. evaluate the final checkpoint on the full validation split;
  5. export a SavedModel (TF-Serving layout) and ONNX, with the ONNX parity check;
  6. start the gRPC server (TF Serving API) on 127.0.0.1, send Predict requests through
     `tensorflow_serving.apis` with image bytes, then stop it;
  7. measure the training-step memory of the model in reversible and autodiff modes.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Dict, List

import numpy as np

from revnet.common.errors import UserError

log = logging.getLogger(__name__)

DATASET = "cifar-10"
EXPERIMENT_ID = "demo"
EXPORT_NAME = "revnet-demo"


def _stage(number: int, total: int, title: str) -> None:
    log.info("[demo %d/%d] %s", number, total, title)


def _write_raw_data(raw_dir: str, num_train: int, num_val: int, seed: int) -> str:
    from revnet.preprocess.sources.cifar import write_cifar10_archive
    from revnet.preprocess.fake_data import PATTERN_LABEL_NAMES, pattern_dataset

    train_images, train_labels = pattern_dataset(num_train, seed)
    val_images, val_labels = pattern_dataset(num_val, seed + 1)
    path = os.path.join(raw_dir, "cifar-10-python.tar.gz")
    return write_cifar10_archive(path, train_images, train_labels, val_images, val_labels, PATTERN_LABEL_NAMES)


def _validation_pngs(data_dir: str, count: int):
    """(PNG bytes, labels) of the first `count` validation records, read back from the TFRecords."""
    import tensorflow as tf

    from revnet.preprocess import schema

    metadata = schema.load_metadata(data_dir)
    files = schema.split_files(data_dir, metadata, "validation")
    encoded, labels = [], []
    for record in tf.data.TFRecordDataset(files).take(count):
        example = schema.parse_example(record)
        encoded.append(example[schema.ENCODED].numpy())
        labels.append(int(example[schema.LABEL].numpy()))
    return encoded, labels


def _grpc_predict(port: int, encoded: List[bytes], labels: List[int]) -> Dict:
    """Send one Predict request per image (batch 1) through the TF Serving client API."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from revnet.serving.tensors import make_ndarray, make_tensor_proto

    latencies, correct = [], 0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for image, label in zip(encoded, labels, strict=True):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = EXPORT_NAME
            request.model_spec.signature_name = "predict_images"
            request.inputs["image_bytes"].CopyFrom(make_tensor_proto([image]))
            start = time.perf_counter()
            response = stub.Predict(request, timeout=30)
            latencies.append(time.perf_counter() - start)
            correct += int(np.asarray(make_ndarray(response.outputs["classes"]))[0] == label)
    latencies_ms = sorted(1000 * s for s in latencies)
    return {"requests": len(latencies), "accuracy": correct / max(len(latencies), 1),
            "p50_ms": statistics.median(latencies_ms),
            "p99_ms": latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))]}


def _memory(model: str, batch_size: int) -> Dict:
    from revnet.benchmarks.memory import run_worker

    rows = {mode: run_worker({"model": model, "mode": mode, "batch_size": batch_size, "steps": 2,
                              "check_gradients": False}) for mode in ("reversible", "autodiff")}
    return {"model": model, "batch_size": batch_size,
            "reversible_peak_bytes": rows["reversible"]["peak_bytes"],
            "autodiff_peak_bytes": rows["autodiff"]["peak_bytes"],
            "reversible_activation_bytes": rows["reversible"]["activation_bytes"],
            "autodiff_activation_bytes": rows["autodiff"]["activation_bytes"]}


DEMO_ENTRIES = ("raw", "data", "experiments", "exports", "summary.json")


def _check_workdir(workdir: str, overwrite: bool) -> None:
    """A new or empty folder, or with --overwrite one holding only what a demo writes (the same rule as
    `preprocess --overwrite`): a folder holding anything else is refused and left untouched."""
    if os.path.isfile(workdir):
        raise UserError(f"--workdir {workdir} is a file; expected a folder")
    names = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []
    foreign = [name for name in names if name not in DEMO_ENTRIES]
    if foreign:
        raise UserError(f"--workdir {workdir} holds {foreign[0]!r}, which the demo does not write; choose a new or "
                        f"empty folder (--overwrite replaces only a demo's own files)")
    if names and not overwrite:
        state = "a finished" if "summary.json" in names else "an unfinished"
        raise UserError(f"{workdir} already holds {state} demo; pass --overwrite or choose another --workdir")


def run_demo(workdir: str = "./demo", model: str = "revnet-38", steps: int = 300, num_train: int = 3000,
             num_val: int = 600, batch_size: int = 32, cpu_replicas: int = 2, learning_rate: float = 0.05,
             predict_requests: int = 100, min_accuracy: float = 0.5, seed: int = 0, overwrite: bool = False,
             measure_memory: bool = True, memory_model: str = "revnet-110") -> Dict:
    """Run every stage; returns the summary. Raises UserError if a stage fails or accuracy is too low."""
    from revnet.models.registry import get_config

    config = get_config(model)
    if config.family != "cifar":
        raise UserError(f"the demo trains on CIFAR-format data; choose a CIFAR model, not {model!r}")
    if min(steps, num_train, num_val, batch_size, cpu_replicas, predict_requests) < 1:
        raise UserError("--steps, data sizes, --batch-size, --cpu-replicas and request counts must be at least 1")
    if measure_memory and get_config(memory_model).architecture != "revnet":
        raise UserError(f"--memory-model must be a RevNet (it is measured in both modes), not {memory_model!r}")
    if batch_size % cpu_replicas:
        raise UserError(f"--batch-size {batch_size} must be divisible by --cpu-replicas {cpu_replicas}")
    workdir = os.path.abspath(workdir)
    _check_workdir(workdir, overwrite)
    paths = {name: os.path.join(workdir, name) for name in ("raw", "data", "experiments", "exports")}
    started = time.perf_counter()
    timings: Dict[str, float] = {}
    total = 7 if measure_memory else 6

    def timed(stage_name, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        timings[stage_name] = round(time.perf_counter() - start, 1)
        return result

    from revnet.pipeline import PreprocessConfig, run_preprocess
    from revnet.serving.exporter import export
    from revnet.serving.server import start_server
    from revnet.train.evaluator import evaluate
    from revnet.train.trainer import run as train

    _stage(1, total, f"writing {num_train}+{num_val} generated images as {DATASET}-python.tar.gz")
    archive = timed("generate", _write_raw_data, paths["raw"], num_train, num_val, seed)

    _stage(2, total, "preprocessing with Apache Beam (DirectRunner) into TFRecords")
    metadata = timed("preprocess", run_preprocess, PreprocessConfig(
        DATASET, paths["data"], input_path=archive, train_shards=4, val_shards=2, seed=seed, workers=2,
        overwrite=True))

    _stage(3, total, f"training {model} for {steps} steps on {cpu_replicas} CPU replicas")
    if overwrite and os.path.isdir(os.path.join(paths["experiments"], EXPERIMENT_ID)):
        import shutil

        shutil.rmtree(os.path.join(paths["experiments"], EXPERIMENT_ID))
    trained = timed("train", train, model=model, data=paths["data"], id=EXPERIMENT_ID,
                    workdir=paths["experiments"], cpu_replicas=cpu_replicas, steps=steps, batch_size=batch_size,
                    learning_rate=learning_rate, checkpoint_every=max(steps // 2, 1), seed=seed,
                    bn_momentum=0.9, progress=False)

    _stage(4, total, "evaluating the final checkpoint on the validation split")
    evaluation = timed("evaluate", evaluate, id=EXPERIMENT_ID, workdir=paths["experiments"], once=True)

    _stage(5, total, "exporting SavedModel and ONNX (with ONNX Runtime parity check)")
    exported = timed("export", export, exp_id=EXPERIMENT_ID, workdir=paths["experiments"],
                     output=paths["exports"], format="all", name=EXPORT_NAME, overwrite=True)

    _stage(6, total, "serving over gRPC (TF Serving API, ONNX Runtime) and sending Predict requests")
    encoded, labels = _validation_pngs(paths["data"], predict_requests)
    server = start_server(model_dir=os.path.join(paths["exports"], EXPORT_NAME), backend="onnx",
                          host="127.0.0.1", port=0, rest_port=None)
    try:
        served = timed("serve", _grpc_predict, server.port, encoded, labels)
    finally:
        server.stop()

    memory = None
    if measure_memory:
        # revnet-38 has only two reversible blocks per stage, too few to show the saving; the
        # measurement uses a deeper sibling (revnet-110 by default) at the demo's batch size.
        _stage(7, total, f"measuring training-step memory of {memory_model}, reversible against autodiff")
        memory = timed("memory", _memory, get_config(memory_model).name, batch_size)

    summary = {
        "data": {split: {k: metadata["splits"][split][k] for k in ("read", "written", "rejected")}
                 for split in ("train", "validation")},
        "training": {"model": model, "steps": trained.get("step"), "status": trained.get("status"),
                     "cpu_replicas": cpu_replicas, "global_batch": batch_size},
        "evaluation": {k: evaluation[k] for k in ("top1", "top5", "loss", "examples") if k in evaluation},
        "chance_accuracy": 1.0 / metadata["num_classes"],
        "onnx_max_abs_probability_diff": exported["onnx"]["max_abs_probability_diff"],
        "serving": served,
        "memory": memory,
        "artifacts": {"raw_archive": archive, "tfrecords": paths["data"],
                      "experiment": trained.get("experiment_dir"), "export": exported["path"],
                      "summary": os.path.join(workdir, "summary.json")},
        "seconds": {**timings, "total": round(time.perf_counter() - started, 1)},
    }
    from revnet.common.fileio import atomic_write_json

    summary["passed"] = bool(evaluation["top1"] >= min_accuracy and served["accuracy"] >= min_accuracy)
    atomic_write_json(summary["artifacts"]["summary"], summary)
    return summary


def format_summary(summary: Dict) -> str:
    data, evaluation, served = summary["data"], summary["evaluation"], summary["serving"]
    lines = [
        "RevNet demo summary",
        f"  data        train read/written/rejected {data['train']['read']}/{data['train']['written']}/"
        f"{data['train']['rejected']}, validation {data['validation']['read']}/{data['validation']['written']}/"
        f"{data['validation']['rejected']}",
        f"  training    {summary['training']['model']}, {summary['training']['steps']} steps, "
        f"{summary['training']['cpu_replicas']} CPU replicas, global batch {summary['training']['global_batch']}",
        f"  accuracy    top-1 {evaluation['top1']:.3f}, top-5 {evaluation['top5']:.3f} on {evaluation.get('examples')} "
        f"validation images (chance {summary['chance_accuracy']:.2f})",
    ]
    memory = summary.get("memory")
    if memory:
        lines.append(
            f"  memory      {memory['model']} training step at batch {memory['batch_size']}: "
            f"peak {memory['reversible_peak_bytes'] / 1e6:.0f} MB "
            f"reversible vs {memory['autodiff_peak_bytes'] / 1e6:.0f} MB autodiff; activations "
            f"{memory['reversible_activation_bytes'] / 1e6:.0f} vs {memory['autodiff_activation_bytes'] / 1e6:.0f} MB")
    lines += [
        f"  onnx        max |p_onnx - p_tf| = {summary['onnx_max_abs_probability_diff']:.2e}",
        f"  serving     {served['requests']} gRPC Predict requests (image bytes): p50 {served['p50_ms']:.1f} ms, "
        f"p99 {served['p99_ms']:.1f} ms, accuracy {served['accuracy']:.3f}",
        "  artifacts",
    ]
    lines += [f"    {name:<12}{path}" for name, path in summary["artifacts"].items()]
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in summary["seconds"].items() if k != "total")
    lines.append(f"  time        {summary['seconds']['total']:.0f} s ({parts})")
    lines.append("  result      " + ("PASSED" if summary["passed"] else "FAILED: accuracy below the required minimum"))
    return "\n".join(lines)

"""Training throughput (examples/s) of the real train step, per RevNet mode and CPU replica count.

Each (mode, replicas) runs in a fresh subprocess (`python -m benchmarks.train --worker SPEC`), because
logical CPU devices must be configured before TensorFlow starts. The worker builds the model and
optimizer in the strategy's scope exactly as `revnet.train.trainer.run` does, feeds a fixed in-memory batch through
`distribute_datasets_from_function` (so input decoding is not measured), traces and warms up, then
times `steps` steps.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Dict, List

from revnet.common.errors import UserError, choose
from revnet.models.registry import MODES

log = logging.getLogger(__name__)



def measure(spec: Dict) -> Dict:
    """Worker process: one row for spec {model, mode, replicas, batch_size, steps}."""
    from revnet.common.devices import configure_cpu_replicas

    configure_cpu_replicas(spec["replicas"])
    import tensorflow as tf

    from revnet.models import build_model
    from revnet.train.distribute import make_placement
    from revnet.train.optimizer import MomentumSGD
    from revnet.train.steps import make_train_step

    placement = make_placement(gpus=0, cpu_replicas=spec["replicas"])
    strategy, batch_size = placement.strategy, spec["batch_size"]
    with strategy.scope():
        model = build_model(spec["model"], mode=spec["mode"])
        optimizer = MomentumSGD(model.trainable_variables, 0.9, 2e-4, model.decay_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        position = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    size, classes = model.config.input_size, model.config.num_classes

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(batch_size)
        images = tf.random.stateless_uniform([per_replica, size, size, 3], [3, 1], 0, 255)
        labels = tf.random.stateless_uniform([per_replica], [3, 2], 0, classes, dtype=tf.int32)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = make_train_step(model, optimizer, strategy, batch_size, step, position)
    learning_rate = tf.constant(0.01)
    for _ in range(2):  # trace, then one untimed step
        float(train_step(iterator, learning_rate)[0])
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        float(train_step(iterator, learning_rate)[0])
        times.append(time.perf_counter() - start)
    step_seconds = statistics.median(times)
    return {"model": spec["model"], "mode": spec["mode"], "replicas": spec["replicas"], "batch_size": batch_size,
            "steps": spec["steps"], "step_seconds": step_seconds, "examples_per_second": batch_size / step_seconds}


def run_worker(spec: Dict, timeout_seconds: float = 1800) -> Dict:
    from revnet.benchmarks.worker import run_worker as run_module_worker

    return run_module_worker("revnet.benchmarks.train", spec, f"train benchmark worker {spec}", timeout_seconds=timeout_seconds)


def run_train_benchmark(model: str, batch_size: int, steps: int, replicas: List[int], modes: List[str]) -> List[Dict]:
    """One row per (mode, replicas), measured one after another in fresh subprocesses."""
    from revnet.models.registry import get_config

    config = get_config(model)
    if config.architecture != "revnet":
        raise UserError(f"benchmark train compares RevNet modes; {model!r} is a ResNet (try revnet-38)")
    modes = [choose("mode", mode.strip(), MODES) for mode in modes]
    for count in replicas:
        if count < 1 or batch_size % count:
            raise UserError(f"--batch-size {batch_size} must be divisible by every replica count (got {count})")
    rows = []
    for mode in modes:
        for count in replicas:
            spec = {"model": config.name, "mode": mode, "replicas": count, "batch_size": batch_size, "steps": steps}
            log.info("measuring %s %s with %d replica(s), batch %d", config.name, mode, count, batch_size)
            rows.append(run_worker(spec))
    return rows


def format_rows(rows: List[Dict]) -> str:
    """Table with two ratios: throughput against autodiff (same replicas) and against 1 replica (same mode)."""
    by_key = {(row["mode"], row["replicas"]): row for row in rows}
    lines = [f"{'model':<12}{'mode':<12}{'replicas':>9}{'batch':>7}{'step s':>9}{'examples/s':>12}"
             f"{'vs autodiff':>13}{'vs 1 replica':>14}"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        autodiff = by_key.get(("autodiff", row["replicas"]))
        single = by_key.get((row["mode"], 1))
        vs_autodiff = f"{row['examples_per_second'] / autodiff['examples_per_second']:.2f}x" if autodiff else "-"
        vs_single = f"{row['examples_per_second'] / single['examples_per_second']:.2f}x" if single else "-"
        lines.append(f"{row['model']:<12}{row['mode']:<12}{row['replicas']:>9}{row['batch_size']:>7}"
                     f"{row['step_seconds']:>9.3f}{row['examples_per_second']:>12.1f}{vs_autodiff:>13}{vs_single:>14}")
    return "\n".join(lines)


if __name__ == "__main__":
    from revnet.benchmarks.worker import worker_main

    worker_main(measure, "train")

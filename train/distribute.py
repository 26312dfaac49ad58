"""Choosing the tf.distribute strategy: several workers, several GPUs, several logical CPUs, or one CPU."""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import tensorflow as tf

from revnet.common.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Placement:
    strategy: tf.distribute.Strategy
    description: str
    is_chief: bool = True
    worker_index: int = 0
    num_workers: int = 1
    memory_device: str = "CPU:0"   # whose allocator peak goes to TensorBoard


def cluster_workers():
    """(task type, task index, number of workers) from TF_CONFIG, or None when it names < 2 workers."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
    except ValueError as error:
        raise UserError(f"TF_CONFIG is not valid JSON ({error})") from None
    cluster = tf_config.get("cluster", {})
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if num_workers < 2:
        return None
    task = tf_config.get("task", {})
    return task.get("type", "worker"), int(task.get("index", 0)), num_workers, "chief" in cluster


def make_placement(gpus=None, cpu_replicas=None) -> Placement:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers, else MirroredStrategy over
    `gpus` GPUs (all visible by default), else `cpu_replicas` logical CPUs (OneDeviceStrategy for 1)."""
    cluster = cluster_workers()
    if cluster is not None:
        task_type, task_index, num_workers, has_chief = cluster
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        is_chief = task_type == "chief" or (not has_chief and task_type == "worker" and task_index == 0)
        worker_index = task_index + (1 if has_chief and task_type == "worker" else 0)
        return Placement(strategy, f"MultiWorkerMirroredStrategy over {num_workers} workers "
                         f"({strategy.num_replicas_in_sync} replicas)", is_chief, worker_index, num_workers)
    visible = tf.config.list_physical_devices("GPU")
    if gpus is not None and gpus > len(visible):
        raise UserError(f"--gpus {gpus} asks for more GPUs than the {len(visible)} visible; "
                        f"use --gpus {len(visible)} or fewer (or --cpu-replicas N on a CPU-only machine)")
    num_gpus = len(visible) if gpus is None else gpus
    if num_gpus >= 1:
        devices = [f"/gpu:{i}" for i in range(num_gpus)]
        return Placement(tf.distribute.MirroredStrategy(devices), f"MirroredStrategy over {num_gpus} GPU(s)",
                         memory_device="GPU:0")
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    num_cpu = cpu_replicas or 1
    if num_cpu > len(cpus):
        raise UserError(f"--cpu-replicas {num_cpu} asks for more logical CPU devices than the {len(cpus)} configured; "
                        "the CPU must be split before TensorFlow starts (cli.py train does this)")
    if num_cpu == 1:
        return Placement(tf.distribute.OneDeviceStrategy(cpus[0]), "one CPU device")
    # Logical CPUs share one host, so reducing on one device is the simplest correct all-reduce.
    strategy = tf.distribute.MirroredStrategy(cpus[:num_cpu], cross_device_ops=tf.distribute.ReductionToOneDevice())
    return Placement(strategy, f"MirroredStrategy over {num_cpu} logical CPU devices")

"""Peak memory and step time of a full training step, reversible against autodiff.

Each (model, mode) runs in a fresh subprocess (`python -m benchmarks.memory --worker SPEC`), so one
measurement's allocations never inflate another's peak. The worker traces a `tf.function` training
step (forward, backward, momentum-SGD update), runs one warm-up step, resets the allocator's peak
and then times `steps` steps. `peak_bytes` is TensorFlow's allocator peak for the device (which needs
TF_CPU_ALLOCATOR_USE_BFC=true on CPU, set here for the worker); `peak_rss_bytes` is the process's peak
resident set (it includes TensorFlow's ~600 MB baseline).
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Dict, List, Optional

from revnet.common.errors import UserError, choose
from revnet.models.registry import MODES

log = logging.getLogger(__name__)

FIELDS = ("model", "mode", "batch_size", "peak_bytes", "activation_bytes", "batch1_peak_bytes", "peak_rss_bytes", "step_seconds", "grad_rel_err",
          "grad_rel_err_float64")


def _device_name() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def max_relative_error(reference, other) -> float:
    """max over tensors of ||a - b|| / ||a|| (each gradient tensor against its own norm)."""
    import numpy as np

    worst = 0.0
    for a, b in zip(reference, other):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        worst = max(worst, float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(a)), 1e-300))
    return worst


def _make_step(model, learning_rate: float = 0.01, momentum: float = 0.9):
    import tensorflow as tf

    velocities = [tf.Variable(tf.zeros_like(v), trainable=False) for v in model.trainable_variables]

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        for variable, velocity, grad in zip(model.trainable_variables, velocities, grads):
            velocity.assign(momentum * velocity + grad)
            variable.assign_sub(learning_rate * velocity)
        return loss

    return step


def _gradients(model, images, labels):
    import tensorflow as tf

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tape.gradient(loss, [images] + list(model.trainable_variables))

    return [g.numpy() for g in grads()]


def measure(spec: Dict) -> Dict:
    """Run in the worker process: one row of measurements for spec {model, mode, batch_size, steps, overrides}."""
    import resource

    import tensorflow as tf

    from revnet.models import build_model

    if spec.get("inter_op_threads"):
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op_threads"])
    overrides = dict(spec.get("overrides") or {})
    for key in ("units_per_stage", "channels_per_stage", "strides"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    model = build_model(spec["model"], mode=spec["mode"], **overrides)
    size = spec.get("input_size") or model.config.input_size
    batch_size = spec["batch_size"]
    images = tf.random.stateless_uniform([batch_size, size, size, 3], [7, 1], 0, 255)
    labels = tf.random.stateless_uniform([batch_size], [7, 2], 0, model.config.num_classes, dtype=tf.int32)
    step = _make_step(model)
    device = _device_name()
    # The same step at batch 1 measures what does not scale with the batch: weights, optimizer
    # state and the convolution back-prop workspace (TF's CPU filter-gradient kernel alone takes
    # ~34 MB whatever the batch). peak - that baseline is the activation memory the paper compares.
    step(images[:1], labels[:1]).numpy()
    tf.config.experimental.reset_memory_stats(device)
    step(images[:1], labels[:1]).numpy()
    baseline_bytes = int(tf.config.experimental.get_memory_info(device)["peak"])
    step(images, labels).numpy()  # trace and warm up outside the measured window
    tf.config.experimental.reset_memory_stats(device)
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        step(images, labels).numpy()
        times.append(time.perf_counter() - start)
    peak_bytes = int(tf.config.experimental.get_memory_info(device)["peak"])
    peak_rss_bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    grad_rel_err = grad_rel_err_float64 = None
    if model.config.architecture == "revnet" and spec.get("check_gradients", True):
        # Same seed -> identical initial weights; one step's gradients in both modes, in the training
        # dtype and in float64 (where only the algorithm, not float32 rounding, can differ).
        errors = {}
        for dtype in ("float32", "float64"):
            fresh = {mode: build_model(spec["model"], mode=mode, param_dtype=dtype, **overrides) for mode in MODES}
            batch = tf.cast(images, dtype)
            errors[dtype] = max_relative_error(_gradients(fresh["autodiff"], batch, labels),
                                               _gradients(fresh["reversible"], batch, labels))
        grad_rel_err, grad_rel_err_float64 = errors["float32"], errors["float64"]
    return {"model": spec["model"], "mode": spec["mode"], "batch_size": batch_size, "peak_bytes": peak_bytes,
            "batch1_peak_bytes": baseline_bytes, "activation_bytes": max(peak_bytes - baseline_bytes, 0),
            "peak_rss_bytes": peak_rss_bytes, "step_seconds": statistics.median(times),
            "grad_rel_err": grad_rel_err, "grad_rel_err_float64": grad_rel_err_float64, "device": device,
            "overrides": spec.get("overrides") or {}}


def run_worker(spec: Dict, timeout_seconds: float = 1800) -> Dict:
    """Measure one spec in a fresh Python process (with TF's CPU allocator statistics on) and return its row."""
    from revnet.benchmarks.worker import run_worker as run_module_worker

    return run_module_worker("revnet.benchmarks.memory", spec, f"memory worker for {spec['model']}/{spec['mode']}",
                             {"TF_CPU_ALLOCATOR_USE_BFC": "true"}, timeout_seconds)


def plan(model_names: List[str], modes: List[str]) -> List[Dict]:
    from revnet.models.registry import get_config

    specs = []
    for name in model_names:
        config = get_config(name.strip())
        for mode in (modes if config.architecture == "revnet" else ["autodiff"]):
            specs.append({"model": config.name, "mode": choose("mode", mode.strip(), MODES)})
    return specs


def run_memory_benchmark(model_names: List[str], batch_size: int, steps: int, modes: List[str],
                         json_path: Optional[str] = None, plot_path: Optional[str] = None) -> List[Dict]:
    if batch_size < 1 or steps < 1:
        raise UserError("--batch-size and --steps must be at least 1")
    specs = plan(model_names, modes)
    rows = []
    for index, spec in enumerate(specs, 1):
        spec.update(batch_size=batch_size, steps=steps)
        log.info("[%d/%d] measuring %s (%s), batch %d", index, len(specs), spec["model"], spec["mode"], batch_size)
        rows.append(run_worker(spec))
    if json_path:
        from revnet.common.fileio import atomic_write_json

        atomic_write_json(json_path, [{k: row[k] for k in FIELDS} for row in rows])
    if plot_path:
        plot_rows(rows, plot_path)
    return rows


def _depth(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


SERIES = (("resnet", "autodiff", "ResNet", "s"), ("revnet", "autodiff", "RevNet, autodiff", "o"),
          ("revnet", "reversible", "RevNet, reversible", "^"))


def _series(rows: List[Dict], architecture: str, mode: str, block: Optional[str] = None):
    """[(depth, row)] of one line of the plot (optionally one block type), shallowest first."""
    from revnet.models.registry import get_config

    return sorted(((_depth(r["model"]), r) for r in rows if r["model"].startswith(architecture) and r["mode"] == mode
                   and (block is None or get_config(r["model"]).block == block)), key=lambda item: item[0])


def format_rows(rows: List[Dict]) -> str:
    """The table, then the ratios that matter: reversible/autodiff per RevNet, and growth with depth."""
    by_key = {(row["model"], row["mode"]): row for row in rows}
    header = (f"{'model':<12}{'mode':<12}{'batch':>6}{'peak MB':>9}{'act. MB':>9}{'RSS MB':>9}{'step s':>8}"
              f"{'grad err f32':>13}{'grad err f64':>13}{'peak/autodiff':>14}{'act./autodiff':>14}{'time/autodiff':>14}")
    lines = [header, "-" * len(header)]
    for row in rows:
        reference = by_key.get((row["model"], "autodiff"))
        ratios = ["", "", ""]
        if row["mode"] == "reversible" and reference:
            ratios = [f"{row['peak_bytes'] / reference['peak_bytes']:.2f}x",
                      f"{row['activation_bytes'] / max(reference['activation_bytes'], 1):.2f}x",
                      f"{row['step_seconds'] / reference['step_seconds']:.2f}x"]
        errors = ["-" if row.get(key) is None else f"{row[key]:.1e}" for key in ("grad_rel_err", "grad_rel_err_float64")]
        lines.append(f"{row['model']:<12}{row['mode']:<12}{row['batch_size']:>6}{row['peak_bytes'] / 1e6:>9.1f}"
                     f"{row['activation_bytes'] / 1e6:>9.1f}{row['peak_rss_bytes'] / 1e6:>9.1f}{row['step_seconds']:>8.3f}"
                     f"{errors[0]:>13}{errors[1]:>13}{ratios[0]:>14}{ratios[1]:>14}{ratios[2]:>14}")
    growth = []
    for architecture, mode, label, _ in SERIES:
        for block in ("basic", "bottleneck"):
            series = _series(rows, architecture, mode, block)
            if len(series) >= 2 and series[0][0] != series[-1][0]:
                (d0, shallow), (d1, deep) = series[0], series[-1]
                growth.append(f"{label} ({block}): depth {d0} -> {d1}: peak x{deep['peak_bytes'] / shallow['peak_bytes']:.2f},"
                              f" activations x{deep['activation_bytes'] / max(shallow['activation_bytes'], 1):.2f}")
    if growth:
        lines += ["", "Growth with depth, same block type (deepest / shallowest measured):"] + growth
    lines += ["", "act. = peak minus the same step's peak at batch 1 (weights, optimizer state and the "
                  "batch-independent conv back-prop workspace)."]
    return "\n".join(lines)


def plot_rows(rows: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((axes[0], "peak_bytes", "allocator peak"), (axes[1], "activation_bytes", "activation memory")):
        for architecture, mode, label, marker in SERIES:
            series = _series(rows, architecture, mode)
            if series:
                axis.plot([d for d, _ in series], [r[key] / 1e6 for _, r in series], marker=marker, label=label)
        axis.set_xlabel("depth (layers)")
        axis.set_ylabel("MB")
        axis.set_title(f"Training step, {title}")
        axis.grid(alpha=0.3)
        axis.legend()
    if rows:
        figure.suptitle(f"batch {rows[0]['batch_size']}, {rows[0]['device']}, `cli.py benchmark memory`")
    figure.tight_layout()
    tmp_path = path + ".tmp.png"
    figure.savefig(tmp_path, dpi=100)
    plt.close(figure)
    os.replace(tmp_path, path)


if __name__ == "__main__":
    from revnet.benchmarks.worker import worker_main

    worker_main(measure, "memory")

"""Peak memory, step time and numerics of a full training step, per model, mode, precision and batch.

Each row runs in a fresh subprocess (`python -m revnet.benchmarks.memory --worker SPEC`), so one
measurement's allocations never inflate another's peak. The worker traces a `tf.function` training
step (forward, backward, the project's momentum-SGD update, with a dynamic loss scale in fp16), runs
one warm-up step, resets the allocator's peak and times `steps` steps. `peak_bytes` is TensorFlow's
allocator peak for the device (which needs TF_CPU_ALLOCATOR_USE_BFC=true on CPU, set here for the
worker); `activation_bytes` subtracts the same step's peak at batch 1 (weights, optimizer state and the
batch-independent conv back-prop workspace); `peak_rss_bytes` is the process's peak resident set (it
includes TensorFlow's ~600 MB baseline). After timing, the worker measures numerics on a small batch
(`benchmarks/numerics.py`): gradient error against float64 autodiff with the same weights and, for
reversible RevNets, the worst per-stage reconstruction error. `benchmarks/memory_report.py` formats
the rows, the comparisons and the plot.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

from revnet.benchmarks.memory_report import FIELDS, plot_rows
from revnet.benchmarks.numerics import PRECISIONS, gradient_error, reconstruction_error
from revnet.common.errors import UserError, choose
from revnet.models.modes import MODES

log = logging.getLogger(__name__)

LEARNING_RATE = 0.01


def _device_name() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def _make_step(model, float16: bool):
    """The training step as `train` runs it: loss (scaled in fp16), gradients, MomentumSGD update."""
    import tensorflow as tf

    from revnet.train.optimizer import DynamicLossScale, MomentumSGD

    loss_scale = DynamicLossScale() if float16 else None
    optimizer = MomentumSGD(model.trainable_variables, 0.9, 1e-4, model.decay_variables, loss_scale)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            scaled_loss = loss * loss_scale.scale if loss_scale is not None else loss
        variables = model.trainable_variables
        optimizer.apply_gradients(tape.gradient(scaled_loss, variables), variables, LEARNING_RATE)
        return loss

    return step


def _overrides(spec: Dict) -> Dict:
    overrides = dict(spec.get("overrides") or {})
    for key in ("units_per_stage", "channels_per_stage", "strides"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return overrides


def _batch(batch_size: int, size: int, num_classes: int, seed: int):
    import tensorflow as tf

    images = tf.random.stateless_uniform([batch_size, size, size, 3], [7, seed], 0, 255)
    labels = tf.random.stateless_uniform([batch_size], [7, seed + 1], 0, num_classes, dtype=tf.int32)
    return images, labels


def measure(spec: Dict) -> Dict:
    """Run in the worker process: one row for spec {model, mode, precision, batch_size, steps, overrides, ...}."""
    import resource

    import tensorflow as tf

    from revnet.models import build_model

    if spec.get("inter_op_threads"):
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op_threads"])
    overrides = _overrides(spec)
    precision = spec.get("precision", "float32")
    model = build_model(spec["model"], mode=spec["mode"], compute_dtype=PRECISIONS[precision], **overrides)
    size = spec.get("input_size") or model.config.input_size
    batch_size = spec["batch_size"]
    images, labels = _batch(batch_size, size, model.config.num_classes, 1)
    step = _make_step(model, precision == "fp16")
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
    grad_rel_err = recon_rel_err = None
    if spec.get("numerics", True) and spec.get("check_gradients", True):
        numerics_images, numerics_labels = _batch(spec.get("numerics_batch", 8), size, model.config.num_classes, 3)
        grad_rel_err = gradient_error(spec["model"], spec["mode"], precision, numerics_images, numerics_labels,
                                      overrides)
        if spec["mode"] == "reversible":
            recon_rel_err = reconstruction_error(spec["model"], precision, numerics_images, overrides)
    activation_bytes = max(peak_bytes - baseline_bytes, 0)
    return {"model": spec["model"], "units_per_stage": list(model.config.units_per_stage),
            "depth": model.config.depth, "family": model.config.family, "block": model.config.block,
            "architecture": model.config.architecture, "mode": spec["mode"], "precision": precision,
            "batch_size": batch_size, "input_size": size, "peak_bytes": peak_bytes,
            "batch1_peak_bytes": baseline_bytes, "activation_bytes": activation_bytes,
            "activation_bytes_per_image": activation_bytes / max(batch_size - 1, 1),
            "peak_rss_bytes": peak_rss_bytes, "step_seconds": statistics.median(times),
            "grad_rel_err": grad_rel_err, "recon_rel_err": recon_rel_err, "device": device,
            "overrides": spec.get("overrides") or {}}


def run_worker(spec: Dict, timeout_seconds: float = 3600) -> Dict:
    """Measure one spec in a fresh Python process (with TF's CPU allocator statistics on) and return its row."""
    from revnet.benchmarks.worker import run_worker as run_module_worker

    label = f"memory worker for {spec['model']}/{spec['mode']}/{spec.get('precision', 'float32')}"
    return run_module_worker("revnet.benchmarks.memory", spec, label, {"TF_CPU_ALLOCATOR_USE_BFC": "true"},
                             timeout_seconds)


def parse_units(values: Sequence[str], model_names: Sequence[str]) -> List[Tuple[Optional[str], Tuple[int, ...]]]:
    """`--units A,B,C` (every listed model) or `--units MODEL=A,B,C` (that model only)."""
    parsed = []
    for value in values:
        target, _, counts = value.rpartition("=")
        if target and target not in model_names:
            raise UserError(f"--units {value!r} names {target!r}, which is not in --models ({', '.join(model_names)})")
        try:
            units = tuple(int(part) for part in counts.split(","))
        except ValueError:
            raise UserError(f"--units {value!r}: expected units per stage such as 9,9,9 or revnet-38=100,100,100") \
                from None
        parsed.append((target or None, units))
    return parsed


def plan(model_names: Sequence[str], modes: Sequence[str], precisions: Sequence[str] = ("float32",),
         batch_sizes: Sequence[int] = (32,), units: Sequence[Tuple[Optional[str], Tuple[int, ...]]] = ()) -> List[Dict]:
    """One spec per (model, units, precision, batch, mode). ResNets skip "reversible" (they have no
    reversible blocks, so it would repeat the autodiff row)."""
    from revnet.models.registry import get_config

    modes = [choose("mode", mode.strip(), MODES) for mode in modes]
    precisions = [choose("precision", precision.strip(), PRECISIONS) for precision in precisions]
    specs = []
    for name in model_names:
        config = get_config(name)
        variants = [u for target, u in units if target in (None, name)] if units else [None]
        for variant in variants:
            overrides = {} if variant is None else {"units_per_stage": list(variant)}
            get_config(name, **{k: tuple(v) for k, v in overrides.items()})  # a UserError now, not in a worker
            for precision in precisions:
                for batch_size in batch_sizes:
                    for mode in modes:
                        if config.architecture == "resnet" and mode == "reversible":
                            continue
                        specs.append({"model": config.name, "mode": mode, "precision": precision,
                                      "batch_size": batch_size, "overrides": overrides})
    return specs


def run_memory_benchmark(model_names: List[str], batch_sizes: Sequence, steps: int, modes: Sequence[str],
                         precisions: Sequence[str] = ("float32",), units: Sequence[str] = (), numerics: bool = True,
                         numerics_batch: int = 8, json_path: Optional[str] = None,
                         plot_path: Optional[str] = None) -> List[Dict]:
    """Measure every planned spec in its own process; optionally write the rows as JSON and the plot."""
    model_names = [name.strip() for name in model_names if name.strip()]
    if not model_names:
        raise UserError("--models needs at least one model name (see `cli.py models`)")
    try:
        batch_sizes = [int(size) for size in batch_sizes]
    except ValueError:
        raise UserError(f"--batch-size {','.join(map(str, batch_sizes))!r}: expected integers such as 32,128") \
            from None
    if min(batch_sizes, default=0) < 2 or steps < 1 or numerics_batch < 2:
        raise UserError("--batch-size and --numerics-batch must be at least 2 (batch 1 is the baseline) "
                        "and --steps at least 1")
    specs = plan(model_names, modes, precisions, batch_sizes, parse_units(units, model_names))
    rows = []
    numerics_done: Dict[tuple, Dict] = {}
    for index, spec in enumerate(specs, 1):
        # The numerics use their own fixed batch, so they are measured once per setting, not per batch size.
        setting = (spec["model"], str(spec["overrides"]), spec["mode"], spec["precision"])
        spec.update(steps=steps, numerics=numerics and setting not in numerics_done, numerics_batch=numerics_batch)
        log.info("[%d/%d] measuring %s %s (%s, %s), batch %d", index, len(specs), spec["model"],
                 spec["overrides"].get("units_per_stage", ""), spec["mode"], spec["precision"], spec["batch_size"])
        row = run_worker(spec)
        if spec["numerics"]:
            numerics_done[setting] = {key: row[key] for key in ("grad_rel_err", "recon_rel_err")}
        rows.append(dict(row, **numerics_done.get(setting, {})))
    if json_path:
        from revnet.common.fileio import atomic_write_json

        atomic_write_json(json_path, [{k: row[k] for k in FIELDS} for row in rows])
    if plot_path:
        plot_rows(rows, plot_path)
    return rows


if __name__ == "__main__":
    from revnet.benchmarks.worker import worker_main

    worker_main(measure, "memory")

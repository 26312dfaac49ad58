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

# Rows for the public Keras layer on its own, not registry models: `--models seq-list,seq-factory`.
# A ReversibleSequence of user-style blocks over 64 tokens of width 192 (revvit-tiny's), f and g each
# LayerNorm -> Dense(4 x 96, GELU) -> Dense(96), in its list form (a Python loop over block layers) or its factory
# form (ReversibleSequence.from_factory: one tf.while_loop over stacked weights). `--units N` sets the number of
# blocks (default 12). float32 only.
SEQUENCE_MODELS = {"seq-list": "list", "seq-factory": "factory"}
SEQUENCE_BLOCKS, SEQUENCE_TOKENS, SEQUENCE_WIDTH = 12, 64, 192


class _SequenceNet:
    """images [batch, 32, 32, 3] -> 4x4 patches -> Dense(192) -> ReversibleSequence -> mean over tokens -> Dense(10):
    the network contract `_make_step` and the numerics use (`config`, `trainable_variables`, `decay_variables`)."""

    def __init__(self, name: str, mode: str, num_blocks: int = SEQUENCE_BLOCKS, dtype: str = "float32"):
        import itertools
        from types import SimpleNamespace

        import keras
        import tensorflow as tf

        from revnet.reversible import ReversibleSequence

        form = SEQUENCE_MODELS[name]
        self.config = SimpleNamespace(name=name, architecture="sequence", family="mlp", block=form,
                                      units_per_stage=(num_blocks,), depth=2 * num_blocks, input_size=32,
                                      num_classes=10)
        seeds = itertools.count(1)   # the blocks' in the order they are made, so both forms get the same weights
        half = SEQUENCE_WIDTH // 2

        def dense(units, seed=None, **kwargs):
            seed = next(seeds) if seed is None else seed
            return keras.layers.Dense(units, kernel_initializer=keras.initializers.GlorotUniform(seed),
                                      dtype=dtype, **kwargs)

        def residual_fn():
            return keras.Sequential([keras.layers.LayerNormalization(epsilon=1e-6, dtype=dtype),
                                     dense(4 * half, activation="gelu"), dense(half)])

        def make_block():
            return residual_fn(), residual_fn()

        if form == "list":
            self.blocks = ReversibleSequence([make_block() for _ in range(num_blocks)], mode=mode, dtype=dtype)
        else:
            self.blocks = ReversibleSequence.from_factory(make_block, num_blocks, mode=mode, dtype=dtype)
        self.embed, self.head = dense(SEQUENCE_WIDTH, seed=10**6), dense(self.config.num_classes, seed=10**6 + 1)
        self.dtype = dtype
        self(tf.zeros([1, 32, 32, 3], dtype))   # builds every layer

    def tokens(self, images):
        import tensorflow as tf

        patches = tf.reshape(tf.cast(images, self.dtype) / 255.0, [-1, 8, 4, 8, 4, 3])
        patches = tf.reshape(tf.transpose(patches, [0, 1, 3, 2, 4, 5]), [-1, SEQUENCE_TOKENS, 48])
        return self.embed(patches)

    def __call__(self, images, training: bool = False):
        import tensorflow as tf

        features = self.blocks(self.tokens(images), training=training)
        return tf.cast(self.head(tf.reduce_mean(features, axis=1)), tf.float32)

    @property
    def variables(self):
        return [v.value for layer in (self.embed, self.blocks, self.head) for v in layer.variables]

    @property
    def trainable_variables(self):
        return [v.value for layer in (self.embed, self.blocks, self.head) for v in layer.trainable_variables]

    @property
    def decay_variables(self):
        return [v.value for layer in (self.embed, self.blocks, self.head) for v in layer.trainable_variables
                if "kernel" in v.path]


def _sequence_numerics(spec: Dict, images, labels) -> Tuple[float, Optional[float]]:
    """Gradient error of the row's mode (float32) against float64 autodiff of the same form with the same
    weights; for "reversible", ||inverse(blocks(h)) - h|| / ||h|| over the embedded tokens h (inference mode)."""
    import numpy as np
    import tensorflow as tf

    from revnet.benchmarks.numerics import max_relative_error, model_gradients

    num_blocks = _overrides(spec).get("units_per_stage", (SEQUENCE_BLOCKS,))[0]
    candidate = _SequenceNet(spec["model"], spec["mode"], num_blocks)
    reference = _SequenceNet(spec["model"], "autodiff", num_blocks, dtype="float64")
    for source, target in zip(candidate.variables, reference.variables, strict=True):
        target.assign(tf.cast(source, tf.float64))
    grad_err = max_relative_error(model_gradients(reference, tf.cast(images, tf.float64), labels),
                                  model_gradients(candidate, tf.cast(images, tf.float32), labels))
    recon_err = None
    if spec["mode"] == "reversible":
        tokens = candidate.tokens(images)
        rebuilt = candidate.blocks.inverse(candidate.blocks(tokens))
        recon_err = float(np.linalg.norm(rebuilt - tokens) / np.linalg.norm(tokens))
    return grad_err, recon_err


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
    if spec["model"] in SEQUENCE_MODELS:
        model = _SequenceNet(spec["model"], spec["mode"], overrides.get("units_per_stage", (SEQUENCE_BLOCKS,))[0])
    else:
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
    if spec.get("numerics", True) and spec.get("check_gradients", True) and spec["model"] in SEQUENCE_MODELS:
        numerics_images, numerics_labels = _batch(spec.get("numerics_batch", 8), size, model.config.num_classes, 3)
        grad_rel_err, recon_rel_err = _sequence_numerics(spec, numerics_images, numerics_labels)
    elif spec.get("numerics", True) and spec.get("check_gradients", True):
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
        if name in SEQUENCE_MODELS:
            specs += _plan_sequence(name, modes, precisions, batch_sizes, units)
            continue
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


def _plan_sequence(name: str, modes: Sequence[str], precisions: Sequence[str], batch_sizes: Sequence[int],
                   units: Sequence[Tuple[Optional[str], Tuple[int, ...]]]) -> List[Dict]:
    """The specs of a SEQUENCE_MODELS row set: one per (blocks, batch, mode), float32 only."""
    if list(precisions) != ["float32"]:
        raise UserError(f"{name} runs in float32 only; got --precision {','.join(precisions)}")
    variants = [u for target, u in units if target in (None, name)] if units else [(SEQUENCE_BLOCKS,)]
    if any(len(variant) != 1 or variant[0] < 1 for variant in variants):
        raise UserError(f"--units for {name} is one number of blocks, such as {name}=16")
    return [{"model": name, "mode": mode, "precision": "float32", "batch_size": batch_size,
             "overrides": {"units_per_stage": list(variant)}}
            for variant in variants for batch_size in batch_sizes for mode in modes]


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
    if plot_path:   # the plot has series for the registry's architectures, not for the sequence rows
        plot_rows([row for row in rows if row["architecture"] != "sequence"], plot_path)
    return rows


if __name__ == "__main__":
    from revnet.benchmarks.worker import worker_main

    worker_main(measure, "memory")

"""Numerics of a training step: gradient error against a float64 reference, and reconstruction error.

`gradient_error` builds the model in the mode and precision under test, copies its weights into a
float64 autodiff build of the same network (so both start from identical weights), takes one
step's gradients of the loss with respect to the input and every trainable variable in both, and
returns max over tensors of ||g - g_ref|| / ||g_ref||. float16 gradients are taken through a fixed
loss scale (as training would) and unscaled. `reconstruction_error` is the worst per-stage
||x_rec - x|| / ||x|| of a RevNet's reversible stacks, rebuilt by the backward pass's own inverse.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

PRECISIONS = {"float32": None, "bf16": "bfloat16", "fp16": "float16"}
# float16 gradients underflow without a loss scale; 2**10 keeps these tiny test steps finite.
FLOAT16_LOSS_SCALE = 2.0 ** 10


def max_relative_error(reference, other) -> float:
    """max over tensors of ||a - b|| / ||a|| (each gradient tensor against its own norm)."""
    worst = 0.0
    for a, b in zip(reference, other, strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        worst = max(worst, float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(a)), 1e-300))
    return worst


def model_gradients(model, images, labels, loss_scale: float = 1.0) -> List[np.ndarray]:
    """d(mean cross entropy)/d(images, every trainable variable) for one training-mode step, in float64."""
    import tensorflow as tf

    @tf.function
    def grads(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model(images, training=True)
            scaled_loss = loss_scale * tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tape.gradient(scaled_loss, [images] + list(model.trainable_variables))

    return [np.asarray(g.numpy(), np.float64) / loss_scale for g in grads(images, labels)]


def _build(name: str, overrides: Dict, **options):
    from revnet.models import build_model

    return build_model(name, **dict(overrides, **options))


def gradient_error(name: str, mode: str, precision: str, images, labels, overrides: Optional[Dict] = None,
                   seed: int = 0) -> float:
    """Gradient error of (mode, precision) against float64 autodiff with the same weights."""
    import tensorflow as tf

    overrides = dict(overrides or {})
    candidate = _build(name, overrides, mode=mode, compute_dtype=PRECISIONS[precision], seed=seed)
    reference = _build(name, overrides, mode="autodiff", param_dtype="float64", seed=seed)
    for source, target in zip(candidate.variables, reference.variables, strict=True):
        assert source.name == target.name, (source.name, target.name)
        target.assign(tf.cast(source, tf.float64))
    scale = FLOAT16_LOSS_SCALE if precision == "fp16" else 1.0
    return max_relative_error(model_gradients(reference, tf.cast(images, tf.float64), labels),
                              model_gradients(candidate, tf.cast(images, tf.float32), labels, scale))


def reconstruction_error(name: str, precision: str, images, overrides: Optional[Dict] = None,
                         seed: int = 0) -> Optional[float]:
    """Worst per-stage ||x_rec - x|| / ||x|| of a RevNet's stacks or a RevViT's blocks (None for a network without
    any)."""
    import tensorflow as tf

    model = _build(name, dict(overrides or {}), mode="reversible", compute_dtype=PRECISIONS[precision], seed=seed)
    if model.config.architecture not in ("revnet", "revvit"):
        return None
    errors = model.reconstruction_errors(tf.cast(images, tf.float32))
    return max(errors) if errors else None

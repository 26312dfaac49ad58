"""The learning-rate schedule, beside the optimizer that reads it (train/optimizer.py).

"step", the paper's: piecewise constant, the base rate multiplied by `decay_factor` at each boundary,
the boundaries kept as fractions of the run (`TrainConfig.decay_boundaries`), so a shorter `--steps`
still decays at the paper's fractions of it. "cosine": half a cosine from the base rate to zero at the
last step, the usual fine-tuning schedule. Either may start with `warmup_steps` of linear warm-up (step
k < W runs at base * (k + 1) / W), after which the schedule runs over the remaining steps.
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import tensorflow as tf

from revnet.train.train_config import TrainConfig


def decay_steps(train: TrainConfig) -> Tuple[int, ...]:
    """The steps at which the learning rate decays, for this run's length."""
    return tuple(int(round(fraction * train.steps)) for fraction in train.decay_boundaries)


def piecewise_constant(step, base_rate: float, boundaries: Tuple[int, ...], decay_factor: float):
    """`base_rate * decay_factor ** (number of boundaries passed)`, on Python ints and int64 tensors alike."""
    step = tf.convert_to_tensor(step, tf.int64)
    passed = tf.zeros([], tf.float32)
    for boundary in boundaries:
        passed += tf.cast(step >= boundary, tf.float32)
    return tf.constant(base_rate, tf.float32) * tf.pow(tf.constant(decay_factor, tf.float32), passed)


def cosine(step, base_rate: float, start: int, end: int):
    """base * (1 + cos(pi * (step - start) / (end - start))) / 2: base at `start`, zero at `end`."""
    progress = tf.clip_by_value((tf.cast(step, tf.float32) - start) / float(max(end - start, 1)), 0.0, 1.0)
    return tf.constant(base_rate, tf.float32) * 0.5 * (1.0 + tf.cos(math.pi * progress))


def learning_rate_fn(train: TrainConfig) -> Callable:
    """`rate(step)` for the run `train` describes (step counts from 0: the rate of the step about to run)."""
    boundaries, warmup = decay_steps(train), train.warmup_steps

    def after_warmup(step):
        if train.schedule == "cosine":
            return cosine(step, train.learning_rate, warmup, train.steps)
        return piecewise_constant(step, train.learning_rate, boundaries, train.decay_factor)

    if not warmup:
        return after_warmup

    def rate(step):
        step = tf.convert_to_tensor(step, tf.int64)
        ramp = train.learning_rate * tf.cast(step + 1, tf.float32) / float(warmup)
        return tf.where(step < warmup, ramp, after_warmup(step))

    return rate
